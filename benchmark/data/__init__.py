"""Data: procedural synthetic scenes (the embedded default) and the real NYUv2/Taskonomy readers."""

from benchmark.data.datasets import (
    SPLITS,
    SyntheticScenes,
    image_ids,
    list_datasets,
    load_dataset,
    make_loader,
    to_device,
)
from benchmark.data.preview import save_preview

__all__ = ["SPLITS", "SyntheticScenes", "image_ids", "list_datasets", "load_dataset", "make_loader", "save_preview",
           "to_device"]
