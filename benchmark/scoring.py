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

from benchmark.tasks import Task

__all__ = ["arp", "bootstrap_ci", "metric_drop", "task_arp", "transferability"]

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
        drops = [metric_drop(clean[name][m], adv[name][m], hib) for m, hib in metric_dirs.items()]
        out[name] = float(np.mean(drops))
    return out


def arp(clean: Metrics, adv: Metrics, tasks: Directions) -> float:
    """ARP over all tasks (paper Eq. 10), in percent."""
    return float(np.mean(list(task_arp(clean, adv, tasks).values())))


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
