"""Training a model on a loss over a data set: the optimiser, its schedule and a resumable loop
(the zoo's member training runs on it, FAT uses its optimiser); the paper's multi-task loss is the
sum of the task losses."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from benchmark.data.datasets import make_loader, to_device
from benchmark.errors import UserError
from benchmark.tasks import Task, total_loss
from benchmark.threads import deterministic_kernels

__all__ = ["TrainRecipe", "make_optimizer", "optimise", "restore_training_state", "train_model", "training_layout",
           "training_state", "write_resume"]


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
    """The training loop every recipe shares: seed, then ``recipe.steps`` steps of ``recipe``'s
    optimiser and schedule on ``loss_fn(batch)`` over seeded, reshuffled epochs of ``dataset`` (a
    set smaller than a batch is one batch); the model ends in eval mode.

    With ``resume`` (a file) and ``checkpoint_every``, the whole training state (weights, optimiser,
    schedule, the position in the data and torch's random state) is written there every
    ``checkpoint_every`` steps, and a run that finds the file continues from it: a killed run
    started again ends with the weights of a run that was never interrupted. ``meta`` identifies
    the training (a resume file of another is refused)."""
    torch.manual_seed(recipe.seed)
    deterministic_kernels(device)
    model.to(device).train()
    with training_layout(model, device):
        return _optimise(model, dataset, loss_fn, recipe, device=device, progress=progress, resume=resume,
                         checkpoint_every=checkpoint_every, meta=meta)


def _optimise(model, dataset, loss_fn, recipe, *, device, progress, resume, checkpoint_every, meta) -> dict[str, float]:
    opt = make_optimizer(model.parameters(), getattr(recipe, "optimizer", "adam"), lr=recipe.lr,
                         weight_decay=recipe.weight_decay)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)
             if getattr(recipe, "schedule", "cosine") == "cosine"
             else torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0))
    batch_size = min(recipe.batch_size, len(dataset))
    step, epoch, start, last = 0, 0, time.perf_counter(), float("nan")
    skip = resumed = 0
    identity = {**(meta or {}), "recipe": asdict(recipe) if hasattr(recipe, "__dataclass_fields__") else str(recipe)}
    if resume is not None and resume.exists():
        step, epoch, skip = _load_state(resume, model, opt, sched, identity, device)
        resumed = step
        _say(f"resumed at step {step} of {recipe.steps} from {resume}")
        if progress is not None:
            progress(step, last)
    while step < recipe.steps:
        loader = make_loader(dataset, batch_size, shuffle=True, seed=recipe.seed + epoch, drop_last=True)
        for i, batch in enumerate(loader):
            if i < skip:
                continue
            loss = loss_fn(to_device(batch, device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            last = loss.item() if (step % 10 == 0 or step == recipe.steps) else last
            if resume is not None and checkpoint_every and step % checkpoint_every == 0 and step < recipe.steps:
                _save_state(resume, model, opt, sched, step, epoch, i + 1, identity)
            if progress is not None:
                progress(step, last)
            if step >= recipe.steps:
                break
        epoch += 1
        skip = 0
    model.eval()
    if resume is not None:
        resume.unlink(missing_ok=True)
    return {"steps": step, "epochs": epoch, "final_loss": last, "seconds": time.perf_counter() - start,
            "resumed_at": resumed}


def _say(text: str) -> None:
    """A line on standard error (a worker process's goes to the log of the build that started it)."""
    import sys

    print(text, file=sys.stderr, flush=True)


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


def _save_state(path: Path, model, opt, sched, step: int, epoch: int, batch: int, identity: dict) -> None:
    """The training state after ``step`` steps (``batch`` batches into ``epoch``)."""
    tensors, rest = training_state(model, opt)
    tensors["rng"] = torch.get_rng_state()
    write_resume(path, tensors, "mtlbench-training",
                 {"identity": identity, "step": step, "epoch": epoch, "batch": batch, "sched": sched.state_dict(),
                  **rest})


def _jsonable(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in a resume file")


def _load_state(path: Path, model, opt, sched, identity: dict, device) -> tuple[int, int, int]:
    """Restore the state :func:`_save_state` wrote; returns (step, epoch, batches into the epoch)."""
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            info = json.loads((f.metadata() or {})["mtlbench-training"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise UserError(f"{path}: not a readable training resume file ({type(exc).__name__}: {exc}); delete it to "
                        "train from the start") from None
    if info.get("identity") != json.loads(json.dumps(identity, default=_jsonable)):
        raise UserError(f"{path}: this resume file is of another training (another recipe, member or start); delete "
                        "it to train from the start")
    restore_training_state(model, opt, tensors, info, device)
    sched.load_state_dict(info["sched"])
    torch.set_rng_state(tensors["rng"])
    return int(info["step"]), int(info["epoch"]), int(info["batch"])
