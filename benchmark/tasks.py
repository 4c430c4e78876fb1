"""Dense-prediction tasks: output channels, per-sample losses and streaming metrics.

The losses and metrics follow the paper authors' code (zhanglijun95/MTLAttack-DGBA):

* segmentation: cross-entropy with ignore index 255; per sample, the sum over valid pixels
  divided by the number of valid pixels (Taskonomy: class-weighted, divided by the summed weights).
* normal: 1 - cosine similarity of the L2-normalised prediction and target over valid pixels.
* depth: L1 over valid pixels (the mask when given, else target > 0).
* keypoint, edge: L1 over pixels whose target is not 255.

Targets are a dict: ``targets[task_name]`` is the task's ground truth and the optional
``targets["mask"]`` (B, 1, H, W) marks valid pixels for normal and depth.

Metrics are small stateful objects (``update``/``compute``/``reset``/``merge``) that stream
over batches, so a full test split never sits in memory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from benchmark.metric_base import _EPS, IGNORE_INDEX, TaskMetric, _mask, _seg_target
from benchmark.paper_metrics import paper_metric
from benchmark.registry import Registry

__all__ = [
    "DATASET_TASKS",
    "IGNORE_INDEX",
    "DepthTask",
    "NormalTask",
    "SegmentationTask",
    "Task",
    "TaskMetric",
    "check_metric_directions",
    "get_tasks",
    "list_datasets",
    "register_dataset_tasks",
    "total_loss",
]



# ====================================================================== metrics
class SegmentationMetric(TaskMetric):
    """mIoU (mean over classes that occur in prediction or target) and pixel accuracy, from a
    streaming confusion matrix."""

    directions: ClassVar[dict[str, bool]] = {"mIoU": True, "pixel_acc": True}

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        super().__init__()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred, targets):
        target = _seg_target(targets)
        label = pred.argmax(1)
        valid = target != IGNORE_INDEX
        idx = target[valid].long() * self.num_classes + label[valid].long()
        counts = torch.bincount(idx, minlength=self.num_classes**2).to(torch.float64).cpu()
        self.confusion += counts.view(self.num_classes, self.num_classes)

    def compute(self):
        conf = self.confusion
        tp = conf.diag()
        union = conf.sum(0) + conf.sum(1) - tp
        present = union > 0
        miou = (tp[present] / union[present]).mean().item() if present.any() else float("nan")
        total = conf.sum().item()
        return {"mIoU": miou, "pixel_acc": tp.sum().item() / total if total else float("nan")}


class SegmentationErrorMetric(TaskMetric):
    """Taskonomy's segmentation ``err``: the mean per-sample (class-weighted) cross-entropy."""

    directions: ClassVar[dict[str, bool]] = {"err": False}

    def __init__(self, task: Task) -> None:
        self.task = task
        super().__init__()

    def reset(self):
        self.total = torch.zeros((), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred, targets):
        losses = self.task.loss(pred, targets)
        self.total += losses.double().sum().cpu()
        self.count += losses.numel()

    def compute(self):
        return {"err": (self.total / self.count).item() if self.count else float("nan")}


class NormalMetric(TaskMetric):
    """Angle error (degrees) between prediction and target normals over valid pixels: mean,
    median and % within 11.25/22.5/30 degrees, from a histogram of 0.25-degree bins (the thresholds
    are bin edges, so those shares are exact; the median is interpolated linearly inside its bin),
    so the metric streams and an image's statistics are small enough to keep per image."""

    directions: ClassVar[dict[str, bool]] = {"mean": False, "median": False, "within_11.25": True,
                                             "within_22.5": True, "within_30": True}

    BINS = 720  # 0.25 degree

    def reset(self):
        self.hist = torch.zeros(self.BINS, dtype=torch.float64)
        self.sum = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred, targets):
        cos, valid = _normal_cosine(pred, targets)
        angles = torch.rad2deg(torch.acos(cos[valid].double().clamp(-1, 1)))
        self.sum += angles.sum().cpu()
        bins = (angles * (self.BINS / 180.0)).long().clamp_(0, self.BINS - 1)
        self.hist += torch.bincount(bins, minlength=self.BINS).double().cpu()

    def compute(self):
        n = self.hist.sum().item()
        if not n:
            return dict.fromkeys(("mean", "median", "within_11.25", "within_22.5", "within_30"), float("nan"))
        cdf = self.hist.cumsum(0)
        median_bin = int(torch.searchsorted(cdf, torch.tensor(n / 2, dtype=torch.float64)).item())
        width = 180.0 / self.BINS
        before = cdf[median_bin].item() - self.hist[median_bin].item()

        def within(deg: float) -> float:
            return 100.0 * self.hist[: round(deg / width)].sum().item() / n

        return {
            "mean": self.sum.item() / n,
            # grouped-data median: the bin's lower edge plus the share of its count below n / 2
            "median": (median_bin + (n / 2 - before) / self.hist[median_bin].item()) * width,
            "within_11.25": within(11.25),
            "within_22.5": within(22.5),
            "within_30": within(30.0),
        }


class CosineSimilarityMetric(TaskMetric):
    """Taskonomy's normal ``cosine_similarity``: mean cosine over valid pixels."""

    directions: ClassVar[dict[str, bool]] = {"cosine_similarity": True}

    def reset(self):
        self.sum = torch.zeros((), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred, targets):
        cos, valid = _normal_cosine(pred, targets)
        self.sum += cos[valid].double().sum().cpu()
        self.count += valid.sum().cpu()

    def compute(self):
        return {"cosine_similarity": (self.sum / self.count).item() if self.count else float("nan")}


class DepthMetric(TaskMetric):
    """NYUv2 depth: abs_err, rel_err and the share of pixels with max(p/g, g/p) < 1.25^k."""

    directions: ClassVar[dict[str, bool]] = {"abs_err": False, "rel_err": False, "delta_1.25": True,
                                             "delta_1.25^2": True, "delta_1.25^3": True}

    def reset(self):
        self.abs = torch.zeros((), dtype=torch.float64)
        self.rel = torch.zeros((), dtype=torch.float64)
        self.deltas = torch.zeros(3, dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred, targets):
        target = targets[self.task_name].to(pred.dtype)
        valid = _depth_valid(target, targets)
        p, g = pred[valid].double(), target[valid].double()
        err = (p - g).abs()
        self.abs += err.sum().cpu()
        self.rel += (err / g.clamp_min(_EPS)).sum().cpu()
        ratio = torch.maximum(p / g.clamp_min(_EPS), g / p.clamp_min(_EPS))
        ratio = torch.where(p > 0, ratio, torch.full_like(ratio, math.inf))
        for k in range(3):
            self.deltas[k] += (ratio < 1.25 ** (k + 1)).sum().cpu()
        self.count += valid.sum().cpu()

    def __init__(self, task_name: str) -> None:
        self.task_name = task_name
        super().__init__()

    def compute(self):
        n = self.count.item()
        if not n:
            return dict.fromkeys(("abs_err", "rel_err", "delta_1.25", "delta_1.25^2", "delta_1.25^3"), float("nan"))
        d = (self.deltas / n * 100.0).tolist()
        return {"abs_err": self.abs.item() / n, "rel_err": self.rel.item() / n,
                "delta_1.25": d[0], "delta_1.25^2": d[1], "delta_1.25^3": d[2]}


class L1ErrorMetric(TaskMetric):
    """Mean absolute error over the valid pixels of a task (Taskonomy depth, keypoint, edge)."""

    def __init__(self, task: Task, metric_name: str) -> None:
        self.task, self.metric_name = task, metric_name
        super().__init__()

    @property
    def directions(self) -> dict[str, bool]:
        return {self.metric_name: False}

    def reset(self):
        self.sum = torch.zeros((), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred, targets):
        err, valid = self.task.pixel_error(pred, targets)
        self.sum += (err * valid).double().sum().cpu()
        self.count += valid.double().sum().cpu()

    def compute(self):
        return {self.metric_name: (self.sum / self.count).item() if self.count else float("nan")}


# ====================================================================== helpers
def _normal_cosine(pred: torch.Tensor, targets: dict[str, torch.Tensor], name: str = "normal"):
    """Per-pixel cosine (B, H, W) and the valid-pixel mask (B, H, W)."""
    target = targets[name].to(pred.dtype)
    # as the paper's code: a pixel is valid when every channel is below 255 (NYUv2 stores normals
    # as 0-255 PNG values, 255 marking missing data); a zero vector has no direction either
    valid = (target.amax(1) < IGNORE_INDEX) & _mask(targets, target)[:, 0]
    valid &= target.abs().sum(1) > 0
    cos = (_unit(pred) * _unit(target)).sum(1)
    return cos, valid


def _unit(x: torch.Tensor) -> torch.Tensor:
    """``x`` scaled to unit length along the channel dimension (as ``F.normalize(x, dim=1)``; the
    sum of squares instead of ``linalg.vector_norm``, which is ~60x slower over dim 1 of an
    NCHW tensor on the CPU)."""
    return x / (x * x).sum(1, keepdim=True).sqrt().clamp_min(_EPS)


def _pixel_cross_entropy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel cross-entropy (B, H, W) of logits (B, C, H, W), 0 on ``IGNORE_INDEX`` pixels (as
    ``F.cross_entropy(..., ignore_index=IGNORE_INDEX, reduction="none")``; written out because the
    library's log-softmax over dim 1 of NCHW logits is ~1.7x slower forward+backward on the CPU)."""
    valid = target != IGNORE_INDEX
    safe = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
    z = pred - pred.detach().amax(1, keepdim=True)  # the shift cancels: no gradient needed through it
    values = z.exp().sum(1).log() - z.gather(1, safe).squeeze(1)
    return values * valid


def _depth_valid(target: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    if targets.get("mask") is not None:
        return _mask(targets, target) & (target != IGNORE_INDEX)
    return target > 0


# ====================================================================== tasks
@dataclass
class Task:
    """A dense-prediction task.

    ``kind`` is one of ``segmentation``, ``normal``, ``depth``, ``l1`` (keypoint/edge): each kind's
    loss, valid pixels and constant prediction are its class's (:class:`SegmentationTask`,
    :class:`NormalTask`, :class:`DepthTask`; ``Task(...)`` gives the class of the kind it names,
    and an ``l1`` task is a plain :class:`Task`). ``metrics`` maps each metric name to True when
    higher is better (the task's metric class declares the same: :func:`check_metric_directions`).
    """

    name: str
    kind: str
    channels: int
    metrics: dict[str, bool]
    dataset: str
    class_weights: torch.Tensor | None = None
    label: str = ""
    _metric_factory: Callable[[Task], TaskMetric] | None = field(default=None, repr=False)
    metric_mode: str = "ours"  # "paper": the authors' definitions (benchmark.paper_metrics)

    def __new__(cls, *args, **kwargs):
        if cls is Task:  # the class of the kind it names
            kind = kwargs.get("kind", args[1] if len(args) > 1 else None)
            cls = _KINDS.get(kind, Task)
        return super().__new__(cls)

    # ---------------------------------------------------------------- loss
    def loss(self, pred: torch.Tensor, targets: dict[str, torch.Tensor], reduction: str = "none") -> torch.Tensor:
        """Per-sample loss of shape (B,) (``reduction="none"``), or the batch loss of the paper's
        code (``"mean"``): pixel-weighted over the whole batch, which equals the mean of the
        per-sample losses when every sample has the same number of valid pixels."""
        if reduction not in ("none", "mean"):
            raise ValueError(f"reduction must be 'none' or 'mean', got {reduction!r}")
        values, weights = self._pixel_loss(pred, targets)
        dims = tuple(range(1, values.dim()))
        if reduction == "mean":
            return (values * weights).sum() / weights.sum().clamp_min(_EPS)
        return (values * weights).sum(dims) / weights.sum(dims).clamp_min(_EPS)

    def _pixel_loss(self, pred, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-pixel loss values and their weights (0 for invalid pixels): the absolute error."""
        err, valid = self.pixel_error(pred, targets)
        return err, valid.to(pred.dtype)

    def valid_pixels(self, target: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """Where ``target`` is labelled."""
        return target != IGNORE_INDEX

    def pixel_error(self, pred, targets) -> tuple[torch.Tensor, torch.Tensor]:
        """Absolute error per pixel and the valid mask, for the L1 tasks (depth, keypoint, edge)."""
        target = targets[self.name].to(pred.dtype)
        return (pred - target).abs(), self.valid_pixels(target, targets)

    # ---------------------------------------------------------------- metrics
    def new_metric(self) -> TaskMetric:
        if self._metric_factory is None:
            raise ValueError(f"task {self.name!r} of {self.dataset!r} has no metric")
        if self.metric_mode == "paper":
            return paper_metric(self)
        return self._metric_factory(self)

    def trivial_prediction(self, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """A constant prediction (majority class / mean value / mean direction over the batch's
        valid pixels): the baseline any trained model must clearly beat. Here the median of the
        valid pixels."""
        out = self._zeros(targets)
        _, valid = self.pixel_error(out, targets)
        vals = targets[self.name].float()[valid]
        out += vals.median() if vals.numel() else 0.0
        return out

    def _zeros(self, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        ref = targets[self.name]
        return torch.zeros(ref.shape[0], self.channels, ref.shape[-2], ref.shape[-1], device=ref.device)


@dataclass
class SegmentationTask(Task):
    """Per-pixel classes (``channels`` logits); cross-entropy, optionally class-weighted."""

    def loss(self, pred: torch.Tensor, targets: dict[str, torch.Tensor], reduction: str = "none") -> torch.Tensor:
        if self.class_weights is not None or reduction not in ("none", "mean"):
            return super().loss(pred, targets, reduction)
        # fast path: cross-entropy already gives 0 on ignored pixels
        target = _seg_target(targets, self.name).long()
        values = _pixel_cross_entropy(pred, target)
        count = (target != IGNORE_INDEX).sum((1, 2)).to(pred.dtype)
        if reduction == "mean":
            return values.sum() / count.sum().clamp_min(_EPS)
        return values.sum((1, 2)) / count.clamp_min(_EPS)

    def _pixel_loss(self, pred, targets) -> tuple[torch.Tensor, torch.Tensor]:
        target = _seg_target(targets, self.name).long()
        valid = target != IGNORE_INDEX
        safe = torch.where(valid, target, torch.zeros_like(target))
        values = _pixel_cross_entropy(pred, safe)
        if self.class_weights is not None:
            w = self.class_weights.to(pred.device, pred.dtype)[safe]
            return values, w * valid
        return values, valid.to(pred.dtype)

    def trivial_prediction(self, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's majority class everywhere."""
        out = self._zeros(targets)
        target = _seg_target(targets, self.name)
        counts = torch.bincount(target[target != IGNORE_INDEX].long().flatten(), minlength=self.channels)
        out[:, counts.argmax()] = 1.0
        return out


@dataclass
class NormalTask(Task):
    """Surface normals (3 channels); the loss is 1 - cosine similarity."""

    def _pixel_loss(self, pred, targets) -> tuple[torch.Tensor, torch.Tensor]:
        cos, valid = _normal_cosine(pred, targets, self.name)
        return 1.0 - cos, valid.to(pred.dtype)

    def trivial_prediction(self, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The batch's mean direction everywhere."""
        out = self._zeros(targets)
        _, valid = _normal_cosine(out + 1, targets, self.name)
        mean = (targets[self.name].float() * valid.unsqueeze(1)).sum((0, 2, 3))
        return out + F.normalize(mean, dim=0).view(1, 3, 1, 1)


@dataclass
class DepthTask(Task):
    """Depth (1 channel); L1 on the valid pixels (the data's mask, else depth > 0)."""

    def valid_pixels(self, target: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        return _depth_valid(target, targets)


_KINDS: dict[str, type[Task]] = {"segmentation": SegmentationTask, "normal": NormalTask, "depth": DepthTask}


TaskFactory = Callable[..., list[Task]]
#: each data set's task list, by data set name
DATASET_TASKS: Registry[TaskFactory] = Registry("dataset", group="mtlbench.tasks", error=ValueError)


def register_dataset_tasks(name: str) -> Callable[[TaskFactory], TaskFactory]:
    """Decorator registering a function that returns a data set's tasks in task-id order."""
    return DATASET_TASKS.register(name)


def list_datasets() -> list[str]:
    return sorted(DATASET_TASKS.names())


def get_tasks(dataset: str, *, metrics: str = "ours", **table_args) -> list[Task]:
    """The tasks of ``dataset`` in task-id order (the layout's task ids index this list), scored
    with our metrics or (``metrics="paper"``) the authors' definitions; ``table_args`` go to the
    dataset's task table (e.g. Taskonomy's ``class_weights``)."""
    factory = DATASET_TASKS.get(dataset)
    if metrics not in ("ours", "paper"):
        raise ValueError(f"unknown metric mode {metrics!r}; use 'ours' or 'paper'")
    tasks = factory(**table_args)
    check_metric_directions(tasks)
    for t in tasks:
        t.metric_mode = metrics
    return tasks


def check_metric_directions(tasks: list[Task]) -> None:
    """Each task's table of metrics (name -> higher is better) is what its metric class declares
    (``TaskMetric.directions``; a metric that declares none is taken at the task's word): a
    mismatch would score a drop as a gain."""
    for t in tasks:
        if t._metric_factory is None:
            continue
        declared = t._metric_factory(t).directions
        if declared is not None and declared != t.metrics:
            raise ValueError(f"task {t.name!r} of {t.dataset!r} says its metrics are {t.metrics} (True: higher is "
                             f"better), its metric class {type(t._metric_factory(t)).__name__} declares {declared}")


def all_tasks() -> list[Task]:
    """Every task of every registered data set (NYUv2's and Taskonomy's), each name once."""
    seen: dict[str, Task] = {}
    for dataset in DATASET_TASKS.names():
        for t in get_tasks(dataset):
            seen.setdefault(t.name, t)
    return list(seen.values())


@register_dataset_tasks("nyuv2")
def nyuv2_tasks() -> list[Task]:
    return [
        Task("segment_semantic", "segmentation", 40, {"mIoU": True, "pixel_acc": True}, "nyuv2",
             label="Segm", _metric_factory=lambda t: SegmentationMetric(t.channels)),
        Task("normal", "normal", 3,
             {"mean": False, "median": False, "within_11.25": True, "within_22.5": True, "within_30": True},
             "nyuv2", label="Norm", _metric_factory=lambda t: NormalMetric()),
        Task("depth_zbuffer", "depth", 1,
             {"abs_err": False, "rel_err": False, "delta_1.25": True, "delta_1.25^2": True, "delta_1.25^3": True},
             "nyuv2", label="Dept", _metric_factory=lambda t: DepthMetric(t.name)),
    ]


@register_dataset_tasks("taskonomy")
def taskonomy_tasks(class_weights: torch.Tensor | None = None) -> list[Task]:
    """Tiny-Taskonomy. ``class_weights`` is the 17-entry ``semseg_prior_factor.npy`` of the data
    root (uniform when not given)."""
    if class_weights is not None:
        class_weights = torch.as_tensor(class_weights, dtype=torch.float32).flatten()
        if class_weights.numel() != 17:
            raise ValueError(f"Taskonomy segmentation needs 17 class weights, got {class_weights.numel()}")
    return [
        Task("segment_semantic", "segmentation", 17, {"err": False}, "taskonomy", class_weights, label="Segm",
             _metric_factory=lambda t: SegmentationErrorMetric(t)),
        Task("normal", "normal", 3, {"cosine_similarity": True}, "taskonomy", label="Norm",
             _metric_factory=lambda t: CosineSimilarityMetric()),
        Task("depth_zbuffer", "depth", 1, {"abs_err": False}, "taskonomy", label="Dept",
             _metric_factory=lambda t: L1ErrorMetric(t, "abs_err")),
        Task("keypoints2d", "l1", 1, {"key_err": False}, "taskonomy", label="Keyp",
             _metric_factory=lambda t: L1ErrorMetric(t, "key_err")),
        Task("edge_texture", "l1", 1, {"edge_err": False}, "taskonomy", label="Edge",
             _metric_factory=lambda t: L1ErrorMetric(t, "edge_err")),
    ]


def total_loss(tasks: list[Task], outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor],
               reduction: str = "mean") -> torch.Tensor:
    """Sum of the task losses (per sample with ``reduction="none"``)."""
    return sum(t.loss(outputs[t.name], targets, reduction) for t in tasks)
