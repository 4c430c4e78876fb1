"""FAT: friendly adversarial training (Zhang et al. 2020) with any registered attack.

The paper's Algorithm 4 ("FAT GB-MTA"): for every mini-batch, adversarial examples are made by a
multi-task attack and the model is updated on them. ``fat:pgd:gb-mta`` trains with GB-MTA-PGD,
``fat:pgd:total`` with TOTAL, ``fat:pgd:single-depth`` with SINGLE-depth; any registered attack
spec works (``fat:mim:gb-mta``, ``fat:fgsm:total``, a plugin's attack).

FAT's early stop ("PGD-K-tau"): the attack gets ``attack_steps`` (K) steps through its budget
option; a sample counts as fooled once its multi-task loss (the mean over tasks of the adversarial
per-image loss relative to the clean one) reaches ``fooled_ratio``, and it stops ``tau`` model
calls after that: its adversarial example is the point at which it stopped. With ``tau >= K``
(the paper's K = tau = 20) no sample stops early and FAT is the attack with K steps. The stop
watches the model calls of the attack, so it works for every attack; for PGD one call is one step.

Training starts from the member's weights (the parent, whose sha256 the new checkpoint records),
is deterministic for a given seed and device (each step reseeds from the recipe's seed and the
step number; the data order is a function of the epoch), and writes a resume file every
``checkpoint_every`` steps: a killed ``mtlbench defend`` started again continues from it and ends
with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from benchmark.attacks.objectives import output_losses
from benchmark.attacks.validate import output_problem
from benchmark.data.datasets import make_loader, to_device
from benchmark.defenses.registry import Defense, register_defense
from benchmark.errors import UserError
from benchmark.tasks import Task, total_loss
from benchmark.training import make_optimizer

__all__ = ["FAT", "FATRecipe", "fat_examples", "fat_recipe", "train_fat"]

RESUME_FILE = "resume.safetensors"


@register_defense("fat")
class FAT(Defense):
    """Friendly adversarial training with the attack named by the argument (``fat:pgd:gb-mta``)."""

    kind = "training"
    randomised = False
    differentiable = True
    argument_help = "the attack it trains with"
    default_argument = "pgd:gb-mta"

    def __init__(self, argument: str = "") -> None:
        from benchmark.attacks.spec import AttackSpec

        super().__init__(argument)
        try:
            self.attack = AttackSpec.parse(self.argument)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        self.argument = self.attack.name


@dataclass
class FATRecipe:
    """How a FAT checkpoint is trained (the manifest's ``[fat]`` table; stored in its config)."""

    steps: int = 200  # optimiser steps
    batch_size: int = 16
    lr: float = 5e-4  # cosine-annealed to 0 over the steps
    weight_decay: float = 1e-4
    eps: float = 8.0  # 0-255 units
    attack_steps: int = 20  # K
    tau: int = 20  # model calls after a sample is first fooled before it stops
    fooled_ratio: float = 1.5  # a sample is fooled when its adversarial/clean loss ratio reaches this
    clean_weight: float = 0.0  # weight of a clean-loss term beside the adversarial one (FAT: 0)
    seed: int = 0
    checkpoint_every: int = 20  # steps between resume files
    train_size: int | None = None  # synthetic suites: training scenes (None: the suite's train_size)

    _RANGES: ClassVar[dict[str, tuple[float, float]]] = {
        "steps": (1, 10_000_000), "batch_size": (1, 65_536), "lr": (0.0, 10.0), "weight_decay": (0.0, 10.0),
        "eps": (0.0, 255.0), "attack_steps": (1, 100_000), "tau": (0, 100_000), "fooled_ratio": (1.0, 1e6),
        "clean_weight": (0.0, 1e3), "seed": (0, 2**62), "checkpoint_every": (1, 10_000_000),
        "train_size": (1, 10_000_000)}

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name == "train_size":
                continue
            want = int if f.type in ("int", "int | None") else float
            if isinstance(value, bool) or not isinstance(value, int | float) or (want is int and value != int(value)):
                raise UserError(f"FAT recipe: {f.name} must be {'an integer' if want is int else 'a number'}, "
                                f"got {value!r}")
            low, high = self._RANGES[f.name]
            if not low <= value <= high or (f.name in ("eps", "lr") and value <= 0):
                raise UserError(f"FAT recipe: {f.name} must be in {'(' if f.name in ('eps', 'lr') else '['}"
                                f"{low:g}, {high:g}], got {value!r}")
            setattr(self, f.name, want(value))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fat_recipe(suite, **overrides: Any) -> FATRecipe:
    """The suite's FAT recipe (its manifest's ``[fat]`` table) with ``overrides`` (those not None)."""
    values = {**getattr(suite, "fat", {}), **{k: v for k, v in overrides.items() if v is not None}}
    unknown = set(values) - {f.name for f in fields(FATRecipe)}
    if unknown:
        raise UserError(f"FAT recipe of {suite.name}: unknown key(s) {', '.join(sorted(unknown))}")
    return FATRecipe(**values)


class _EarlyStop(nn.Module):
    """The model as the attack sees it, watching each call: a sample stops ``tau`` calls after it
    is first fooled, and the input of that call is its adversarial example."""

    def __init__(self, model: nn.Module, tasks: list[Task], batch: dict, clean_loss: torch.Tensor,
                 recipe: FATRecipe) -> None:
        super().__init__()
        self.model, self.tasks, self.batch, self.clean_loss = model, tasks, batch, clean_loss
        n, device = clean_loss.shape[0], clean_loss.device
        self.ratio = recipe.fooled_ratio
        self.budget = torch.full((n,), recipe.tau, dtype=torch.long, device=device)  # fooled calls left before the stop
        self.stopped = torch.zeros(n, dtype=torch.bool, device=device)
        self.points: torch.Tensor | None = None
        self.train(model.training)  # the attack's frozen() restores this mode, and with it the model's

    def forward(self, x: torch.Tensor):
        out = self.model(x)
        if x.shape[0] == self.clean_loss.shape[0]:
            with torch.no_grad():
                fooled = _loss_ratio(self.tasks, out, self.batch, self.clean_loss) >= self.ratio
                stop = fooled & (self.budget == 0) & ~self.stopped
                if stop.any():
                    if self.points is None:
                        self.points = torch.zeros_like(x)
                    self.points[stop] = x.detach()[stop]
                    self.stopped |= stop
                self.budget -= (fooled & ~self.stopped).long()
        return out


def _loss_ratio(tasks, outputs, batch, clean_loss) -> torch.Tensor:
    return (output_losses(outputs, batch, tasks) / clean_loss.clamp_min(1e-8)).mean(dim=1)


def fat_examples(attack, model: nn.Module, batch: dict, tasks: list[Task], recipe: FATRecipe,
                 generator: torch.Generator) -> torch.Tensor:
    """FAT's adversarial examples of ``batch`` for ``model`` (in eval mode while attacked)."""
    images = batch["image"]
    eps = recipe.eps / 255.0
    if recipe.tau >= recipe.attack_steps:  # no sample can stop early: the attack itself
        x_adv = attack(model, images, batch, tasks=tasks, eps=eps, generator=generator)
    else:
        with torch.no_grad():
            clean = output_losses(model(images), batch, tasks)
        watch = _EarlyStop(model, tasks, batch, clean, recipe)
        x_adv = attack(watch, images, batch, tasks=tasks, eps=eps, generator=generator)
        if watch.points is not None:
            x_adv = torch.where(watch.stopped.view(-1, 1, 1, 1), watch.points, x_adv)
    x_adv = x_adv.detach()
    problem = output_problem(x_adv, images, eps)
    if problem is not None and problem.kind == "non-finite":
        raise UserError(f"FAT: the attack {attack.name!r} returned NaN or inf images")
    if problem is not None:
        raise UserError(f"FAT: the attack {attack.name!r} left the eps-ball or [0, 1] (image {problem.image}: max "
                        f"|delta| {problem.delta:.3f}/255 for eps {recipe.eps:g}/255, values in "
                        f"[{problem.low:.6f}, {problem.high:.6f}])")
    return x_adv


def _batches(dataset, batch_size: int, seed: int, start: int) -> Iterator[dict]:
    """The training batches from step ``start`` on: epoch e is the data in the order seeded by
    ``seed + e`` (the same order whether or not the run was resumed)."""
    per_epoch = len(dataset) // batch_size
    epoch, skip = divmod(start, per_epoch)
    while True:
        for i, batch in enumerate(make_loader(dataset, batch_size, shuffle=True, seed=seed + epoch, drop_last=True)):
            if i >= skip:
                yield batch
        epoch, skip = epoch + 1, 0


def _cosine(recipe: FATRecipe, step: int) -> float:
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * step / recipe.steps))


def _save_resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, step: int, meta: dict) -> None:
    """Model and optimiser state after ``step`` steps, in one safetensors file (written under a
    temporary name and renamed, so a kill never leaves half a file)."""
    state = opt.state_dict()
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    info = {**meta, "step": step, "param_groups": state["param_groups"], "scalars": scalars}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"mtlbench-fat": json.dumps(info)})
    tmp.replace(path)


def _load_resume(path: Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict, device) -> int:
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            info = json.loads((f.metadata() or {})["mtlbench-fat"])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not a readable FAT resume file ({type(exc).__name__}: {exc}); delete it, or "
                        "pass --restart to train from the start") from None
    for key in ("defense", "recipe", "parent_sha256"):
        if info.get(key) != meta[key]:
            raise UserError(f"{path}: this resume file is of another training ({key} was {info.get(key)!r}, now "
                            f"{meta[key]!r}); pass --restart to train from the start")
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value.to(device)
    for idx, entry in info["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return int(info["step"])


def train_fat(model: nn.Module, tasks: list[Task], dataset, attack, recipe: FATRecipe, *, device: torch.device,
              resume: Path | None = None, meta: dict | None = None,
              progress: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Adversarially train ``model`` in place for ``recipe.steps`` steps with ``attack``'s examples.
    With ``resume`` (a file path), continue from the state there when it exists and write it every
    ``checkpoint_every`` steps. Returns training statistics."""
    if len(dataset) == 0:
        raise UserError("FAT: the training set is empty")
    batch_size = min(recipe.batch_size, len(dataset))
    model.to(device)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = make_optimizer(model.parameters(), "adam", lr=recipe.lr, weight_decay=recipe.weight_decay)
    meta = meta or {}
    start = 0
    if resume is not None and resume.exists():
        start = _load_resume(resume, model, opt, meta, device)
    began, last = time.perf_counter(), float("nan")
    data = _batches(dataset, batch_size, recipe.seed, start)
    for step in range(start, recipe.steps):
        batch = to_device(next(data), device)
        torch.manual_seed(recipe.seed * 1_000_003 + step)
        generator = torch.Generator(device=device).manual_seed(recipe.seed * 1_000_003 + step)
        model.eval()
        x_adv = fat_examples(attack, model, batch, tasks, recipe, generator)
        model.train()
        for group in opt.param_groups:
            group["lr"] = _cosine(recipe, step)
        loss = total_loss(tasks, model(x_adv), batch)
        if recipe.clean_weight > 0:
            loss = loss + recipe.clean_weight * total_loss(tasks, model(batch["image"]), batch)
        if not torch.isfinite(loss):
            raise UserError(f"FAT: the training loss is {loss.item()} at step {step + 1}; lower the recipe's lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        last = loss.item()
        done = step + 1
        if resume is not None and done % recipe.checkpoint_every == 0 and done < recipe.steps:
            _save_resume(resume, model, opt, done, meta)
        if progress is not None:
            progress(done, last)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return {"steps": recipe.steps, "resumed_at": start, "final_loss": last, "seconds": time.perf_counter() - began}
