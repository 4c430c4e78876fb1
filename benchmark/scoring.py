"""Scores of an attack: ARP (paper Eq. 10), transferability (Eq. 11) and bootstrap intervals.

ARP, the average relative performance drop, in percent::

    ARP = 1/N sum_i 1/M_i sum_j (-1)^{s_ij} (m'_ij - m_ij) / m_ij * 100

with m the clean and m' the attacked value of task i's metric j, s_ij = 1 for a
higher-is-better metric and 0 for a lower-is-better one. A positive ARP is a performance drop:
the larger, the stronger the attack. The loss is not a metric and never enters ARP.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from benchmark.metric_base import TaskMetrics
from benchmark.tasks import Task, TaskMetric

__all__ = ["arp", "bootstrap_ci", "image_scores", "kendall_tau", "metric_drop", "paired_bootstrap", "spearman",
           "stratified_bootstrap_ci", "task_arp", "transferability"]

Metrics = Mapping[str, Mapping[str, float]]  # task -> metric -> value


def metric_drop(clean: float, adv: float, higher_is_better: bool) -> float:
    """Signed relative drop of one metric in percent (positive = worse after the attack)."""
    if clean == 0 or not math.isfinite(clean):
        raise ValueError(f"the relative drop needs a finite, non-zero clean value, got {clean}")
    change = (adv - clean) / clean * 100.0
    return -change if higher_is_better else change


def _directions(tasks: Directions) -> dict[str, Mapping[str, bool]]:
    if isinstance(tasks, Mapping):
        return dict(tasks)
    return {t.name: t.metrics for t in tasks}


Directions = Sequence[Task] | Mapping[str, Mapping[str, bool]]


def task_arp(clean: Metrics, adv: Metrics, tasks: Directions) -> dict[str, float]:
    """ARP-X of each task X: the mean relative drop over that task's metrics (percent)."""
    directions = _directions(tasks)
    out = {}
    for name, metric_dirs in directions.items():
        drops = []
        for m, hib in metric_dirs.items():
            try:
                drops.append(metric_drop(clean[name][m], adv[name][m], hib))
            except ValueError as exc:
                raise ValueError(f"{exc} for {name} {m} (the model's clean {name} {m}); a clean metric at 0 is a "
                                 "model that has not learned the task") from None
        out[name] = float(np.mean(drops))
    return out


def arp(clean: Metrics, adv: Metrics, tasks: Directions) -> float:
    """ARP over all tasks (paper Eq. 10), in percent."""
    return float(np.mean(list(task_arp(clean, adv, tasks).values())))


def image_scores(clean: Metrics, image_metrics: Sequence[Mapping[str, TaskMetric]],
                 tasks: Sequence[Task]) -> list[float]:
    """The per-image multi-task score of a cell: each image's jackknife pseudo-value of the
    cell's ARP, ``N * ARP - (N - 1) * ARP(all images but this one)``, from the images' streaming
    metrics ``image_metrics`` (one ``{task: metric}`` per image) against the split's clean metrics.

    A pseudo-value is in ARP points and the scores average to the cell's ARP (exactly for a
    metric that is a mean over images, up to the jackknife's bias correction for pooled ones
    such as mIoU or a median), so two runs on the same images compare image by image in the
    units of the leaderboard. NaN where leaving an image out leaves a metric undefined."""
    n = len(image_metrics)
    total = TaskMetrics.of(tasks)
    for one in image_metrics:
        total.merge(one)
    full = arp(clean, total.compute(), tasks)
    if n == 1:
        return [full]
    scores = []
    for one in image_metrics:
        rest = total.copy().merge(one, sign=-1).compute()
        try:
            loo = arp(clean, rest, tasks)
        except ValueError:
            loo = float("nan")
        scores.append(n * full - (n - 1) * loo)
    return scores


def paired_bootstrap(before: Sequence[Sequence[float]], after: Sequence[Sequence[float]], *,
                     confidence: float = 0.95, n_resamples: int = 10000,
                     seed: int = 0) -> tuple[float, float, float, float]:
    """Paired bootstrap of the mean difference ``after - before`` over matched units (images),
    stratified by group (a model, eps and seed: each group's images are resampled within it, and
    every group weighs by its number of images). Returns ``(delta, low, high, p)`` with the
    percentile interval and ``p`` the one-sided bootstrap p-value of "after is lower than before":
    the share of resampled means, shifted to the null of no change (centred at 0), that are at or
    below the observed difference. Units with a non-finite value in either run are left out. With no
    group of two or more units there is nothing to resample: the interval and ``p`` are NaN (too few
    pairs), never a zero-width interval."""
    rng = np.random.default_rng(seed)
    diffs = []
    for b, a in zip(before, after, strict=True):
        d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
        d = d[np.isfinite(d)]
        if d.size:
            diffs.append(d)
    if not diffs:
        return (float("nan"),) * 4
    total = sum(d.size for d in diffs)
    delta = float(sum(d.sum() for d in diffs) / total)
    if max(d.size for d in diffs) < 2:
        return delta, float("nan"), float("nan"), float("nan")
    sums = np.zeros(n_resamples)
    for d in diffs:
        idx = rng.integers(0, d.size, size=(n_resamples, d.size))
        sums += d[idx].sum(axis=1)
    means = sums / total
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    p = float((np.count_nonzero(means - delta <= delta) + 1) / (n_resamples + 1))
    return delta, float(low), float(high), p


def transferability(per_task_arp: Mapping[str, float], target: str) -> float:
    """Transferability of a SINGLE-``target`` attack (paper Eq. 11): the mean over the other tasks
    Y of ARP-Y / ARP-target."""
    if target not in per_task_arp:
        raise KeyError(f"no ARP for the attacked task {target!r}")
    base = per_task_arp[target]
    others = [v for k, v in per_task_arp.items() if k != target]
    if not others:
        raise ValueError("transferability needs at least two tasks")
    if base == 0:
        return float("nan")
    return float(np.mean([v / base for v in others]))


def bootstrap_ci(values: Sequence[float], *, confidence: float = 0.95, n_resamples: int = 2000,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and a percentile-bootstrap confidence interval ``(mean, low, high)``."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return (float("nan"),) * 3
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_resamples, x.size))].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


def stratified_bootstrap_ci(groups: Sequence[Sequence[float]], *, confidence: float = 0.95, n_resamples: int = 2000,
                            seed: int = 0) -> tuple[float, float, float]:
    """The mean over groups of each group's mean (e.g. the mean over models of each model's ARP
    from its images' scores) and a percentile-bootstrap interval that resamples the units within
    each group (the images of each model): the interval of a mean over a few fixed groups, where a
    bootstrap over the groups themselves would have too few to resample. NaN-free groups only."""
    arrays = [np.asarray([v for v in g if v is not None and math.isfinite(v)], dtype=np.float64) for g in groups]
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return (float("nan"),) * 3
    point = float(np.mean([a.mean() for a in arrays]))
    if max(a.size for a in arrays) < 2:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.zeros(n_resamples)
    for a in arrays:
        means += a[rng.integers(0, a.size, size=(n_resamples, a.size))].mean(axis=1)
    means /= len(arrays)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return point, float(low), float(high)


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation of two equally long sequences: Pearson's correlation of their
    ranks, tied values sharing the mean of their ranks (as ``scipy.stats.spearmanr``). NaN with
    fewer than 2 values or when either sequence is constant (a flat curve has no trend)."""
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        start = 0
        while start < len(order):
            end = start
            while end + 1 < len(order) and v[order[end + 1]] == v[order[start]]:
                end += 1
            for k in range(start, end + 1):
                r[order[k]] = (start + end) / 2.0
            start = end + 1
        return r

    if len(xs) < 2:
        return float("nan")
    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    den = math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))
    return num / den if den else float("nan")


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long sequences (ties counted as in tau-b; NaN when either
    has no two different values): how often two items are in the same order in both."""
    concordant = discordant = ties_x = ties_y = 0
    n = len(xs)
    for i in range(n):
        for j in range(i + 1, n):
            dx = (xs[i] > xs[j]) - (xs[i] < xs[j])
            dy = (ys[i] > ys[j]) - (ys[i] < ys[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    den = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / den if den else float("nan")
