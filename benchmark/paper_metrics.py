"""The ``paper`` metric mode: the metrics exactly as the GB-MTA authors' code computes them.

Our default metrics (:mod:`benchmark.tasks`) pool every statistic over pixels, so a metric does not
depend on how images were batched. The authors' ``DataMetrics`` classes differ in five ways, each
reproduced here (the full suites, whose checkpoints come from the authors, score in this mode):

=================  =====================================================  ==========================================
metric             authors' code (``paper``)                              ours (default)
=================  =====================================================  ==========================================
mIoU               mean IoU over classes whose intersection is non-zero   over classes present in prediction or target
pixel accuracy     per-batch accuracy, averaged weighted by batch size    pooled over pixels
depth abs/rel err  per-batch mean over valid pixels, batch-size weighted  pooled over pixels
depth valid        mask and target != 255, or target > 3e-5 without mask  mask and != 255, or target > 0
depth delta        max(p/g, g/p) <= 1.25^k; a negative prediction counts  < 1.25^k; a prediction <= 0 fails
                   as within (both ratios are negative)
normal angles      a target with a zero vector counts, at cosine 0        excluded
normal median      exact median of all angles                             0.25-degree histogram, interpolated
normal within      angle <= threshold                                     angle < threshold (histogram bins)
Taskonomy err      per-batch mean (segmentation: class-weighted CE over   per-pixel (per-sample for segmentation)
                   the batch's pixels), batch-size weighted               means pooled
=================  =====================================================  ==========================================

The states stay mergeable (:meth:`~benchmark.tasks.TaskMetric.merge`): batch-weighted means are
sums of ``batch size x batch mean``; the normal angles are kept (their median is exact), merged
by concatenation and taken out by multiset difference.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from benchmark.metric_base import IGNORE_INDEX, TaskMetric, _mask, _seg_target

__all__ = ["paper_metric"]


_DEPTH_MIN = 3e-5  # the authors' validity threshold of a depth target without a mask


class _BatchWeighted(TaskMetric):
    """Metrics that are per-batch means averaged with the batch size as weight."""

    names: tuple[str, ...] = ()

    def reset(self):
        self.sums = torch.zeros(len(self.names), dtype=torch.float64)
        self.batches = torch.zeros((), dtype=torch.float64)

    def add(self, batch_size: int, values: list[float]) -> None:
        self.sums += batch_size * torch.tensor(values, dtype=torch.float64)
        self.batches += batch_size

    def weighted(self) -> dict[str, float]:
        n = self.batches.item()
        return {name: (self.sums[i] / n).item() if n else float("nan") for i, name in enumerate(self.names)}


class PaperSegmentationMetric(_BatchWeighted):
    names = ("pixel_acc",)

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        super().__init__()

    def reset(self):
        super().reset()
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred, targets):
        target = _seg_target(targets)
        valid = target < self.num_classes
        gt, label = target[valid].long(), pred.argmax(1)[valid].long()
        counts = torch.bincount(gt * self.num_classes + label, minlength=self.num_classes**2).double().cpu()
        self.confusion += counts.view(self.num_classes, self.num_classes)
        acc = (gt == label).double().mean().item() if gt.numel() else float("nan")
        self.add(pred.shape[0], [acc])

    def compute(self):
        tp = self.confusion.diag()
        union = self.confusion.sum(0) + self.confusion.sum(1) - tp
        hit = tp != 0
        miou = (tp[hit] / union[hit]).mean().item() if hit.any() else float("nan")
        return {"mIoU": miou, **self.weighted()}


class PaperNormalMetric(TaskMetric):
    """NYUv2 normal angles of every valid pixel, kept (exact median; too large to keep per image)."""

    storable = False

    def reset(self):
        self.angles = torch.zeros(0, dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred, targets):
        cos = _paper_cosine(pred, targets)
        self.angles = torch.cat([self.angles, torch.rad2deg(torch.acos(cos.clamp(-1, 1)))])

    def merge(self, other, *, sign=1):
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")
        if sign > 0:
            self.angles = torch.cat([self.angles, other.angles])
            return self
        values, counts = torch.unique(self.angles, return_counts=True)
        drop_values, drop_counts = torch.unique(other.angles, return_counts=True)
        index = torch.searchsorted(values, drop_values)
        counts = counts.clone()
        counts[index] -= drop_counts
        self.angles = torch.repeat_interleave(values, counts.clamp_min(0))
        return self

    def compute(self):
        a = self.angles
        if not a.numel():
            return dict.fromkeys(("mean", "median", "within_11.25", "within_22.5", "within_30"), float("nan"))
        ordered, half = a.sort().values, a.numel() // 2
        median = ordered[half] if a.numel() % 2 else (ordered[half - 1] + ordered[half]) / 2  # as numpy's
        return {"mean": a.mean().item(), "median": median.item(),
                "within_11.25": 100.0 * (a <= 11.25).double().mean().item(),
                "within_22.5": 100.0 * (a <= 22.5).double().mean().item(),
                "within_30": 100.0 * (a <= 30.0).double().mean().item()}


class PaperCosineMetric(TaskMetric):
    """Taskonomy ``cosine_similarity``: the mean cosine of every valid pixel (pooled)."""

    def reset(self):
        self.sum = torch.zeros((), dtype=torch.float64)
        self.count = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred, targets):
        cos = _paper_cosine(pred, targets).clamp(-1, 1)
        self.sum += cos.sum().cpu()
        self.count += cos.numel()

    def compute(self):
        return {"cosine_similarity": (self.sum / self.count).item() if self.count else float("nan")}


class PaperDepthMetric(_BatchWeighted):
    names = ("abs_err", "rel_err")

    def reset(self):
        super().reset()
        self.within = torch.zeros(3, dtype=torch.float64)
        self.pixels = torch.zeros((), dtype=torch.float64)

    @torch.no_grad()
    def update(self, pred, targets):
        target = targets["depth_zbuffer"].to(pred.dtype)
        valid = _paper_depth_valid(target, targets)
        p, g = pred[valid].double(), target[valid].double()
        n = max(int(valid.sum()), 1)
        self.add(pred.shape[0], [((p - g).abs().sum() / n).item(), ((p - g).abs() / g).sum().item() / n])
        ratio = torch.maximum(p / g, g / p)  # both negative for a negative prediction: "within"
        for k in range(3):
            self.within[k] += (ratio <= 1.25 ** (k + 1)).sum().cpu()
        self.pixels += p.numel()

    def compute(self):
        n = self.pixels.item()
        within = (self.within / n * 100.0).tolist() if n else [float("nan")] * 3
        return {**self.weighted(), "delta_1.25": within[0], "delta_1.25^2": within[1], "delta_1.25^3": within[2]}


class PaperErrorMetric(_BatchWeighted):
    """A Taskonomy error: the per-batch mean, batch-size weighted (segmentation: the class-weighted
    cross-entropy of the batch's valid pixels; depth, keypoint, edge: the L1 error of its valid ones)."""

    def __init__(self, task: Any, metric_name: str) -> None:
        self.task, self.names = task, (metric_name,)
        super().__init__()

    @torch.no_grad()
    def update(self, pred, targets):
        if self.task.kind == "segmentation":
            target = _seg_target(targets, self.task.name)
            weight = None if self.task.class_weights is None else self.task.class_weights.to(pred.device)
            value = F.cross_entropy(pred, target.long(), weight=weight, ignore_index=IGNORE_INDEX).item()
        else:
            target = targets[self.task.name].to(pred.dtype)
            depth = self.task.kind == "depth"
            valid = _paper_depth_valid(target, targets) if depth else target != IGNORE_INDEX
            value = (pred - target).abs()[valid].double().mean().item()
        self.add(pred.shape[0], [value])

    def compute(self):
        return self.weighted()


def _paper_cosine(pred: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """The cosine of each valid pixel as the authors compute it: valid where no target channel is
    255 (and the mask says so); both vectors L2-normalised, so a zero target vector gives 0."""
    target = targets["normal"].to(pred.dtype)
    valid = target.amax(1) != IGNORE_INDEX
    if targets.get("mask") is not None:
        valid &= _mask(targets, target)[:, 0]
    g = F.normalize(target.permute(0, 2, 3, 1)[valid].double(), dim=1)
    p = F.normalize(pred.permute(0, 2, 3, 1)[valid].double(), dim=1)
    return F.cosine_similarity(g, p, dim=1)


def _paper_depth_valid(target: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
    if targets.get("mask") is not None:
        return (target != IGNORE_INDEX) & _mask(targets, target)
    return target > _DEPTH_MIN


def paper_metric(task: Any) -> TaskMetric:
    """The authors' metric of ``task`` (same metric names and directions as ours)."""
    if task.dataset == "nyuv2":
        if task.kind == "segmentation":
            return PaperSegmentationMetric(task.channels)
        if task.kind == "normal":
            return PaperNormalMetric()
        return PaperDepthMetric()
    if task.kind == "normal":
        return PaperCosineMetric()
    return PaperErrorMetric(task, next(iter(task.metrics)))

