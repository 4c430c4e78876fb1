"""Branched multi-task models: layouts, backbones split into branch blocks, heads."""

from benchmark.models.backbones import build_backbone, list_backbones, register_backbone
from benchmark.models.branched import PAPER_MEAN, BranchedModel, ModelConfig
from benchmark.models.layouts import Layout, LayoutError, enumerate_layouts, layout_from_index, layout_index

__all__ = [
    "PAPER_MEAN",
    "BranchedModel",
    "Layout",
    "LayoutError",
    "ModelConfig",
    "build_backbone",
    "enumerate_layouts",
    "layout_from_index",
    "layout_index",
    "list_backbones",
    "register_backbone",
]
