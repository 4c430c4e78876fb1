"""The streaming-metric base class and the target helpers that our metrics
(:mod:`benchmark.tasks`) and the authors' (:mod:`benchmark.paper_metrics`) share."""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod

import torch

__all__ = ["IGNORE_INDEX", "TaskMetric", "TaskMetrics", "decode_states", "encode_states"]

IGNORE_INDEX = 255
_EPS = 1e-8


class TaskMetric(ABC):
    """Streaming metric: sufficient statistics in float64 tensors, mergeable across workers.
    ``storable``: whether its statistics are small enough to keep per image (they are merged
    again when the leaderboard takes each image from another attack: the worst case per image)."""

    storable: bool = True
    #: which way each of its metrics is better ({name: higher is better}; None: not declared)
    directions: dict[str, bool] | None = None

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

    def state(self) -> dict[str, torch.Tensor]:
        """The sufficient statistics (what :meth:`merge` adds)."""
        return self._state()

    def load_state(self, state: dict[str, torch.Tensor]) -> TaskMetric:
        mine = self._state()
        for name, value in state.items():
            if name not in mine or value.shape != mine[name].shape:
                raise ValueError(f"{type(self).__name__} has no statistic {name!r} of shape {tuple(value.shape)}")
            setattr(self, name, value.to(torch.float64).clone())
        return self

    def copy(self) -> TaskMetric:
        out = copy.copy(self)
        for name, value in self._state().items():
            setattr(out, name, value.clone())
        return out



class TaskMetrics(dict):
    """A streaming metric per task (``{task name: TaskMetric}``, in the tasks' order): the one
    "a metric per task, update, compute" every scorer uses."""

    @classmethod
    def of(cls, tasks) -> TaskMetrics:
        """A new metric for each of ``tasks`` (anything with ``name`` and ``new_metric()``)."""
        return cls((t.name, t.new_metric()) for t in tasks)

    def update(self, outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> TaskMetrics:  # type: ignore[override]
        """Each task's metric updated with its output in ``outputs`` against ``targets``."""
        for name, metric in self.items():
            metric.update(outputs[name], targets)
        return self

    def merge(self, other, *, sign: int = 1) -> TaskMetrics:
        """Each task's statistics of ``other`` (a ``{task: TaskMetric}``) added (``sign=-1``: taken out)."""
        for name, metric in other.items():
            self[name].merge(metric, sign=sign)
        return self

    def compute(self) -> dict[str, dict[str, float]]:
        return {name: metric.compute() for name, metric in self.items()}

    def copy(self) -> TaskMetrics:
        return TaskMetrics((name, metric.copy()) for name, metric in self.items())


def _seg_target(targets: dict[str, torch.Tensor], name: str = "segment_semantic") -> torch.Tensor:
    t = targets[name]
    return t[:, 0] if t.dim() == 4 else t


def _mask(targets: dict[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The optional shared valid mask as a bool (B, 1, H, W) tensor, or all-true."""
    m = targets.get("mask")
    if m is None:
        return torch.ones(like.shape[0], 1, *like.shape[-2:], dtype=torch.bool, device=like.device)
    return (m > 0) if m.dim() == 4 else (m > 0).unsqueeze(1)


def encode_states(image_metrics: list[dict[str, TaskMetric]]) -> str | None:
    """Each image's metric statistics (``{task: metric}`` per image), compactly: one safetensors
    blob of the per-image stacks (float32 where that is exact, else float64), zlib-compressed and
    base64-encoded. None when a metric's statistics are not storable per image."""
    import base64
    import zlib

    from safetensors.torch import save

    if not image_metrics or not all(m.storable for m in image_metrics[0].values()):
        return None
    arrays = {}
    for task in image_metrics[0]:
        for name in image_metrics[0][task].state():
            stack = torch.stack([one[task].state()[name] for one in image_metrics]).to(torch.float64)
            small = stack.to(torch.float32)
            arrays[f"{task}/{name}"] = small if torch.equal(small.to(torch.float64), stack) else stack
    return base64.b64encode(zlib.compress(save({k: v.contiguous() for k, v in arrays.items()}), 6)).decode()


#: the most a cell's per-image statistics inflate to (about 9.3 KB per image for NYUv2's three
#: tasks: 64 MiB holds 7,000 images, ten times the largest split a suite scores)
MAX_STATES_BYTES = 64 * 2**20


def decode_states(text: str, factories: dict) -> list[dict[str, TaskMetric]]:
    """The per-image metrics of :func:`encode_states` (``factories``: task -> a new metric); a
    ``ValueError`` when the text is not such a blob."""
    import base64
    import binascii
    import zlib

    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        packed = base64.b64decode(text.encode(), validate=True)
        inflate = zlib.decompressobj()
        raw = inflate.decompress(packed, MAX_STATES_BYTES)
        if inflate.unconsumed_tail:  # it inflates to more than any cell's statistics take: a bomb
            raise ValueError(f"it inflates to more than {MAX_STATES_BYTES // 2**20} MiB")
        arrays = load(raw)
    except (binascii.Error, zlib.error, SafetensorError, ValueError, TypeError) as exc:
        raise ValueError(f"not per-image metric statistics ({type(exc).__name__}: {exc})") from None
    by_task: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in arrays.items():
        task, _, name = key.partition("/")
        by_task.setdefault(task, {})[name] = value
    if set(by_task) != set(factories):
        raise ValueError(f"statistics of tasks {sorted(by_task)}, expected {sorted(factories)}")
    counts = {v.shape[0] for stats in by_task.values() for v in stats.values()}
    if len(counts) != 1:
        raise ValueError("per-image statistics of different lengths")
    n = counts.pop()
    return [{task: factories[task]().load_state({k: v[i] for k, v in stats.items()})
             for task, stats in by_task.items()} for i in range(n)]
