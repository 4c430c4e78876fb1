"""Training a branched multi-task model with the paper's losses (sum of the task losses)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch.utils.data import Dataset

from benchmark.data.datasets import make_loader
from benchmark.errors import UserError
from benchmark.evaluation import to_device
from benchmark.tasks import Task, total_loss

__all__ = ["TrainRecipe", "make_optimizer", "optimise", "train_model"]


@dataclass
class TrainRecipe:
    """How a checkpoint was trained (stored in its ``config.json``)."""

    steps: int = 300
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = "adam"
    schedule: str = "cosine"
    seed: int = 0
    #: the precision the weights are stored (and shipped) in; a member is rounded to it before its
    #: clean metrics are measured, so the stored values are the model
    weights_dtype: str = "float32"

    def to_dict(self) -> dict:
        return asdict(self)


def make_optimizer(params, name: str = "adam", *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (``adam``) or SGD with momentum 0.9 (``sgd``). AdamW runs its fused kernel: one
    update over all parameters instead of a Python loop over them (7x faster on the tiny models'
    ~180 parameter tensors on the CPU; the same update to float rounding)."""
    if name == "adam":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r} (adam or sgd)")


def train_model(model: torch.nn.Module, tasks: list[Task], dataset: Dataset, recipe: TrainRecipe, *,
                device: torch.device | str = "cpu",
                progress: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """Train ``model`` in place for ``recipe.steps`` optimiser steps over (reshuffled) epochs of
    ``dataset``; deterministic for a given seed on a given device. Returns training statistics."""
    if len(dataset) == 0:
        raise UserError("the training set is empty")
    return optimise(model, dataset, lambda batch: total_loss(tasks, model(batch["image"]), batch), recipe,
                    device=device, progress=progress)


def optimise(model: torch.nn.Module, dataset: Dataset, loss_fn: Callable[[dict], torch.Tensor], recipe, *,
             device: torch.device | str = "cpu",
             progress: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """The training loop every recipe shares: seed, then ``recipe.steps`` steps of ``recipe``'s
    optimiser and schedule on ``loss_fn(batch)`` over seeded, reshuffled epochs of ``dataset`` (a
    set smaller than a batch is one batch); the model ends in eval mode."""
    torch.manual_seed(recipe.seed)
    model.to(device).train()
    opt = make_optimizer(model.parameters(), getattr(recipe, "optimizer", "adam"), lr=recipe.lr,
                         weight_decay=recipe.weight_decay)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)
             if getattr(recipe, "schedule", "cosine") == "cosine"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    batch_size = min(recipe.batch_size, len(dataset))
    step, epoch, start, last = 0, 0, time.perf_counter(), float("nan")
    while step < recipe.steps:
        loader = make_loader(dataset, batch_size, shuffle=True, seed=recipe.seed + epoch, drop_last=True)
        for batch in loader:
            loss = loss_fn(to_device(batch, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            last = loss.item() if (step % 10 == 0 or step == recipe.steps) else last
            if progress is not None:
                progress(step, last)
            if step >= recipe.steps:
                break
        epoch += 1
    model.eval()
    return {"steps": step, "epochs": epoch, "final_loss": last, "seconds": time.perf_counter() - start}
