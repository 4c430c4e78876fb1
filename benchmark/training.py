"""Training a model on a loss over a data set: the optimiser, its schedule and a resumable loop
(the zoo's member training runs on it, FAT uses its optimiser); the paper's multi-task loss is the
sum of the task losses."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, is_dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from benchmark.data.datasets import make_loader, to_device
from benchmark.errors import UserError
from benchmark.recipe import TrainRecipe
from benchmark.tasks import Task, total_loss
from benchmark.threads import deterministic_kernels

__all__ = ["RESUME_FILE", "TrainRecipe", "batches_from", "make_optimizer", "optimise", "restore_training_state",
           "run_training", "train_model", "training_layout", "training_state", "write_resume"]

#: the training state a training saves as it goes, in the folder of the checkpoint it makes
RESUME_FILE = "resume.safetensors"
#: the metadata key of a resume file's JSON part
RESUME_KEY = "mtlbench-training"


def make_optimizer(params, name: str = "adam", *, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (``adam``) or SGD with momentum 0.9 (``sgd``). AdamW runs its fused kernel: one
    update over all parameters instead of a Python loop over them (7x faster on the tiny models'
    ~180 parameter tensors on the CPU; the same update to float rounding)."""
    if name == "adam":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {name!r} (adam or sgd)")


@contextmanager
def training_layout(model: torch.nn.Module, device: torch.device | str) -> Iterator[None]:
    """Train in the memory order the model's backbone trains fastest in on this device
    (channels-last for MobileNetV2 on the CPU, ``BranchedModel.channels_last_training``); the
    model leaves in the order it came in. Other models and devices are left as they are."""
    switch = (getattr(model, "channels_last_training", False) and getattr(model, "channels_last", True) is False
              and torch.device(device).type == "cpu")
    if switch:
        model.use_channels_last(True)
    try:
        yield
    finally:
        if switch:
            model.use_channels_last(False)


def train_model(model: torch.nn.Module, tasks: list[Task], dataset: Dataset, recipe: TrainRecipe, *,
                device: torch.device | str = "cpu", progress: Callable[[int, float], None] | None = None,
                resume: Path | None = None, checkpoint_every: int | None = None,
                meta: dict | None = None) -> dict[str, float]:
    """Train ``model`` in place for ``recipe.steps`` optimiser steps over (reshuffled) epochs of
    ``dataset``; deterministic for a given seed on a given device (also across a resume, see
    :func:`optimise`). Returns training statistics."""
    if len(dataset) == 0:
        raise UserError("the training set is empty")
    return optimise(model, dataset, lambda batch: total_loss(tasks, model(batch["image"]), batch), recipe,
                    device=device, progress=progress, resume=resume, checkpoint_every=checkpoint_every, meta=meta)


def optimise(model: torch.nn.Module, dataset: Dataset, loss_fn: Callable[[dict], torch.Tensor], recipe, *,
             device: torch.device | str = "cpu", progress: Callable[[int, float], None] | None = None,
             resume: Path | None = None, checkpoint_every: int | None = None,
             meta: dict | None = None) -> dict[str, float]:
    """:func:`run_training` on a recipe (a member's :class:`TrainRecipe`, a pretext recipe): its
    optimiser and schedule (``cosine``: torch's cosine annealing to 0; ``constant``), the loss
    ``loss_fn(batch)``; ``meta`` and the recipe identify the training in its resume file."""
    identity = {**(meta or {}), "recipe": asdict(recipe) if hasattr(recipe, "__dataclass_fields__") else str(recipe)}
    cosine = getattr(recipe, "schedule", "cosine") == "cosine"
    return run_training(
        model, dataset, lambda step, batch: loss_fn(batch), steps=recipe.steps, batch_size=recipe.batch_size,
        seed=recipe.seed, optimizer=getattr(recipe, "optimizer", "adam"), lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        schedule=(lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)) if cosine else
        (lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)),
        device=device, progress=progress, resume=resume, checkpoint_every=checkpoint_every, identity=identity)


def batches_from(dataset: Dataset, batch_size: int, seed: int, start: int) -> Iterator[dict]:
    """The training batches from step ``start`` on: epoch e is the data in the order seeded by
    ``seed + e`` without its last partial batch (the same order whether or not the run resumed)."""
    per_epoch = max(len(dataset) // batch_size, 1)
    epoch, skip = divmod(start, per_epoch)
    while True:
        for i, batch in enumerate(make_loader(dataset, batch_size, shuffle=True, seed=seed + epoch, drop_last=True)):
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def run_training(model: torch.nn.Module, dataset: Dataset, step_loss: Callable[[int, dict], torch.Tensor], *,
                 steps: int, batch_size: int, seed: int, lr: float, weight_decay: float, optimizer: str = "adam",
                 schedule: Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler],
                 device: torch.device | str = "cpu", progress: Callable[[int, float], None] | None = None,
                 resume: Path | None = None, checkpoint_every: int | None = None, identity: dict | None = None,
                 loss_every: int = 10, label: str = "training",
                 restart: str = "delete it to train from the start") -> dict[str, float]:
    """The one training loop (members, pretext backbones, training defenses): seed, then ``steps``
    steps of the optimiser and ``schedule(optimizer)`` on ``step_loss(step, batch)`` over
    :func:`batches_from` ``dataset`` (a set smaller than a batch is one batch); the model ends in
    eval mode. The loss is read every ``loss_every`` steps (a GPU sync) and a non-finite one stops
    the training with a message.

    With ``resume`` (a file) and ``checkpoint_every``, the whole training state (weights,
    optimiser, schedule, the step, torch's random state) is written there every
    ``checkpoint_every`` steps (:data:`RESUME_FILE` in the checkpoint's folder, one file, replaced
    each time), and a run that finds the file continues from it: a killed run started again ends
    with the weights of a run that was never interrupted. ``identity`` says which training it is
    (a resume file of another is refused: ``label`` and ``restart`` word the message). The caller
    removes the file once the checkpoint is saved."""
    if len(dataset) == 0:
        raise UserError(f"{label}: the training set is empty")
    torch.manual_seed(seed)
    deterministic_kernels(device)
    model.to(device).train()
    with training_layout(model, device):
        opt = make_optimizer(model.parameters(), optimizer, lr=lr, weight_decay=weight_decay)
        sched = schedule(opt)
        batch_size = min(batch_size, len(dataset))
        identity = json.loads(json.dumps(identity or {}, default=_jsonable))
        start, last, began = 0, float("nan"), time.perf_counter()
        if resume is not None and resume.exists():
            start = _load_state(resume, model, opt, sched, identity, device, label, restart)
            _say(f"resumed at step {start} of {steps} from {resume}")
            if progress is not None:
                progress(start, last)
        data = batches_from(dataset, batch_size, seed, start)
        for step in range(start, steps):
            loss = step_loss(step, to_device(next(data), device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            done = step + 1
            if done % loss_every == 0 or done == steps:
                last = loss.item()
                if not math.isfinite(last):
                    raise UserError(f"{label}: the training loss is {last} at step {done}; lower the recipe's lr")
            if resume is not None and checkpoint_every and done % checkpoint_every == 0 and done < steps:
                _save_state(resume, model, opt, sched, done, identity)
            if progress is not None:
                progress(done, last)
    model.eval()
    per_epoch = max(len(dataset) // batch_size, 1)
    return {"steps": steps, "epochs": -(-steps // per_epoch), "final_loss": last,
            "seconds": time.perf_counter() - began, "resumed_at": start}


def _say(text: str) -> None:
    """A line on standard error (a worker process's goes to the log of the build that started it)."""
    import sys

    print(text, file=sys.stderr, flush=True)


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def training_state(model, opt) -> tuple[dict[str, torch.Tensor], dict]:
    """A model's and its optimiser's state as safetensors tensors (``model.*``, ``opt.<i>.*``) and
    the JSON-able rest (``param_groups``, ``scalars``): what every resume file holds."""
    state = opt.state_dict()
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    scalars: dict[str, dict] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def restore_training_state(model, opt, tensors: dict[str, torch.Tensor], info: dict, device) -> None:
    """Put back what :func:`training_state` took."""
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value.to(device)
    for idx, entry in info["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    # a parameter's state in its parameter's memory order (a channels-last model's moments were
    # stored contiguous): the optimiser's update is then the uninterrupted run's, bit for bit
    for group in opt.param_groups:
        for param in group["params"]:
            for key, value in opt.state.get(param, {}).items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape:
                    opt.state[param][key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def write_resume(path: Path, tensors: dict[str, torch.Tensor], key: str, info: dict) -> None:
    """One safetensors resume file with ``info`` as JSON under the metadata ``key``, written under a
    temporary name and renamed (a kill never leaves half of it)."""
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(tmp), metadata={key: json.dumps(info, default=_jsonable)})
    tmp.replace(path)


def _save_state(path: Path, model, opt, sched, step: int, identity: dict) -> None:
    """The training state after ``step`` steps."""
    tensors, rest = training_state(model, opt)
    tensors["rng"] = torch.get_rng_state()
    write_resume(path, tensors, RESUME_KEY, {"identity": identity, "step": step, "sched": sched.state_dict(), **rest})


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if is_dataclass(value) and not isinstance(value, type):
        return asdict(value)
    raise TypeError(f"cannot store {type(value).__name__} in a resume file")


def _load_state(path: Path, model, opt, sched, identity: dict, device, label: str, restart: str) -> int:
    """Restore the state :func:`_save_state` wrote; returns its step."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            info = json.loads((f.metadata() or {})[RESUME_KEY])
        step = int(info["step"])
    except (SafetensorError, OSError, KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{path}: not a readable {label} resume file ({type(exc).__name__}: {exc}); "
                        f"{restart}") from None
    theirs = info.get("identity") or {}
    changed = [k for k in dict.fromkeys([*identity, *theirs]) if theirs.get(k) != identity.get(k)]
    if changed:
        key = changed[0]
        raise UserError(f"{path}: this resume file is of another training ({key} was {_show(theirs.get(key))}, now "
                        f"{_show(identity.get(key))}); {restart}")
    restore_training_state(model, opt, tensors, info, device)
    sched.load_state_dict(info["sched"])
    torch.set_rng_state(tensors["rng"])
    return step
