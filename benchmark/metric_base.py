"""The streaming-metric base class and the target helpers that our metrics
(:mod:`benchmark.tasks`) and the authors' (:mod:`benchmark.paper_metrics`) share."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch

__all__ = ["IGNORE_INDEX", "TaskMetric"]

IGNORE_INDEX = 255
_EPS = 1e-8


class TaskMetric(ABC):
    """Streaming metric: sufficient statistics in float64 tensors, mergeable across workers."""

    def __init__(self) -> None:
        self.reset()

    @abstractmethod
    def reset(self) -> None: ...

    @abstractmethod
    def update(self, pred: torch.Tensor, targets: dict[str, torch.Tensor]) -> None: ...

    @abstractmethod
    def compute(self) -> dict[str, float]: ...

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Tensor)}

    def merge(self, other: TaskMetric, *, sign: int = 1) -> TaskMetric:
        """Add another metric's statistics into this one (same task, e.g. another worker); with
        ``sign=-1`` take them out (the statistics of all images but ``other``'s)."""
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        for name, value in other._state().items():
            setattr(self, name, getattr(self, name) + sign * value.to(getattr(self, name).device))
        return self

    def copy(self) -> TaskMetric:
        out = copy.copy(self)
        for name, value in self._state().items():
            setattr(out, name, value.clone())
        return out



def _seg_target(targets: dict[str, torch.Tensor], name: str = "segment_semantic") -> torch.Tensor:
    t = targets[name]
    return t[:, 0] if t.dim() == 4 else t


def _mask(targets: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The optional shared valid mask as a bool (B, 1, H, W) tensor, or all-true."""
    m = targets.get("mask")
    if m is None:
        return torch.ones(like.shape[0], 1, *like.shape[-2:], dtype=torch.bool, device=like.device)
    return (m > 0) if m.dim() == 4 else (m > 0).unsqueeze(1)
