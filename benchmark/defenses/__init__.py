"""Defenses: inference-time transformations attacked adaptively (BPDA, EOT) and training
recipes that produce new checkpoints; every registered attack evaluates the defended targets."""

from benchmark.defenses import fat, inference  # noqa: F401  (registers the built-in defenses)
from benchmark.defenses.fat import FAT, FATRecipe, fat_recipe
from benchmark.defenses.inference import DefendedModel, InferenceDefense, straight_through
from benchmark.defenses.registry import (
    DEFENSES,
    Defense,
    canonical_defense,
    create_defense,
    list_defenses,
    parse_defense,
    register_defense,
)

__all__ = [
    "DEFENSES",
    "FAT",
    "DefendedModel",
    "Defense",
    "FATRecipe",
    "InferenceDefense",
    "canonical_defense",
    "create_defense",
    "fat_recipe",
    "list_defenses",
    "parse_defense",
    "register_defense",
    "straight_through",
]
