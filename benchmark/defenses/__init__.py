"""Defenses: inference-time transformations attacked adaptively (BPDA, EOT) and training
recipes that produce new checkpoints; every registered attack evaluates the defended targets."""

from benchmark.defenses import detectors, fat, inference, pgdat  # noqa: F401  (registers the built-in defenses)
from benchmark.defenses.detectors import Detector, DetectorModel
from benchmark.defenses.fat import FAT
from benchmark.defenses.inference import DefendedModel, InferenceDefense, straight_through
from benchmark.defenses.pgdat import PGDAT
from benchmark.defenses.registry import (
    DEFENSES,
    Defense,
    canonical_defense,
    create_defense,
    list_defenses,
    parse_defense,
    register_defense,
)
from benchmark.defenses.training import AdversarialRecipe, TrainingDefense, adversarial_recipe

__all__ = [
    "DEFENSES",
    "FAT",
    "PGDAT",
    "AdversarialRecipe",
    "DefendedModel",
    "Defense",
    "Detector",
    "DetectorModel",
    "InferenceDefense",
    "TrainingDefense",
    "adversarial_recipe",
    "canonical_defense",
    "create_defense",
    "list_defenses",
    "parse_defense",
    "register_defense",
    "straight_through",
]
