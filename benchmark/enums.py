"""The closed sets of names mtlbench stores and compares, as string enums (each member equals its
string, so stored results, JSON and SQLite rows keep their plain values)."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["DefenseKind", "ExternalKind", "Origin", "Status"]


class Status(StrEnum):
    """A cell's (and a validator verdict's) status."""

    VALID = "valid"  # scored and ranked
    INVALID = "invalid"  # the attack's output broke a rule (NaN, outside [0, 1] or the eps-ball, ...)
    FAILED = "failed"  # the cell did not finish (an exception, a time limit, a dead worker)


class DefenseKind(StrEnum):
    """What a defense does: wrap a model at evaluation time, train new weights, or detect."""

    INFERENCE = "inference"
    TRAINING = "training"
    DETECTOR = "detector"  # the model's predictions plus a per-image rejection score


class Origin(StrEnum):
    """Where a loaded model's weights came from."""

    HUB = "hub"  # the Hugging Face Hub at the pinned revision
    SHIPPED = "shipped"  # the weights that ship with mtlbench
    LOCAL = "local"  # the local zoo under $MTLBENCH_HOME
    WEIGHTS_DIR = "weights-dir"  # --weights-dir
    DEFENDED = "defended"  # a member's checkpoint under a training defense
    EXTERNAL = "external"  # a checkpoint directory brought by the user (--model DIR)
    MODULE = "module"  # an nn.Module brought by the user (benchmark.evaluate)


class ExternalKind(StrEnum):
    """What an external model (not a suite member) is."""

    DIR = "dir"  # a Hub-format checkpoint directory (--model DIR)
    MODULE = "module"  # an nn.Module of this process (benchmark.evaluate)
