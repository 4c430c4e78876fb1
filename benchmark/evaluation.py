"""Streaming evaluation of a multi-task model: per-task metrics over a data loader."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from benchmark.tasks import Task

__all__ = ["evaluate", "to_device"]

Batch = dict[str, torch.Tensor]


def to_device(batch: Batch, device: torch.device | str) -> Batch:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model: torch.nn.Module, tasks: list[Task], batches: Iterable[Batch], *,
             device: torch.device | str = "cpu",
             transform: Callable[[torch.Tensor, Batch], torch.Tensor] | None = None) -> dict[str, dict[str, float]]:
    """Metrics of every task over ``batches``. ``transform(images, batch)`` may replace the
    images first (an attack: it gets gradients enabled)."""
    model.eval()
    metrics = {t.name: t.new_metric() for t in tasks}
    for batch in batches:
        batch = to_device(batch, device)
        images = batch["image"]
        if transform is not None:
            with torch.enable_grad():
                images = transform(images, batch)
        outputs = model(images)
        for t in tasks:
            metrics[t.name].update(outputs[t.name], batch)
    return {name: m.compute() for name, m in metrics.items()}
