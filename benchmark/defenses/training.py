"""Training defenses: a defense that produces new weights (``mtlbench defend``), and the
adversarial training loop they share.

A :class:`TrainingDefense` is named ``name:ATTACK`` (any registered attack spec); it says how the
adversarial examples of a batch are made (:meth:`TrainingDefense.examples`) and trains with
:func:`adversarial_training` on the suite's recipe (the manifest's ``[defenses]`` table,
:class:`AdversarialRecipe`). FAT (``fat.py``) stops each sample early; PGD-AT (``pgdat.py``) runs
the attack's every step. A new training defense is one such class with ``@register_defense``.

Training starts from the member's weights (the parent, whose sha256 the new checkpoint records),
is deterministic for a given seed and device (each step reseeds from the recipe's seed and the
step number; the data order is a function of the epoch), and writes a resume file every
``checkpoint_every`` steps: a killed ``mtlbench defend`` started again continues from it and ends
with the same weights as a run that was never interrupted.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmark.attacks.validate import output_problem, unit_eps
from benchmark.defenses.registry import Defense
from benchmark.enums import DefenseKind
from benchmark.errors import UserError
from benchmark.schema import check_fields, read_table, setting
from benchmark.tasks import Task, total_loss
from benchmark.training import RESUME_FILE, run_training

__all__ = ["RESUME_FILE", "AdversarialRecipe", "TrainingDefense", "adversarial_recipe", "adversarial_training",
           "checked_examples"]

#: ``examples(model, batch, generator) -> adversarial images`` of one training batch
Examples = Callable[[nn.Module, dict, torch.Generator], torch.Tensor]


class TrainingDefense(Defense, ABC):
    """A defense that trains new weights with adversarial examples of the attack its argument
    names (``fat:pgd:gb-mta``). Subclasses say how a batch's examples are made."""

    kind = DefenseKind.TRAINING
    randomised = False
    differentiable = True
    argument_help = "the attack it trains with"
    default_argument = "pgd:gb-mta"
    #: the defense's name in messages and cards
    label = "adversarial training"

    def __init__(self, argument: str = "") -> None:
        from benchmark.attacks.spec import AttackSpec

        super().__init__(argument)
        try:
            self.attack = self.training_attack(AttackSpec.parse(self.argument))
        except UserError as exc:
            raise ValueError(str(exc)) from None
        self.argument = self.attack.name

    def training_attack(self, spec):
        """The attack spec it trains with, from the one its argument names (a subclass may set options)."""
        return spec

    def recipe(self, suite, **overrides: Any) -> AdversarialRecipe:
        """The suite's recipe for this defense (its ``[defenses.<name>]`` table over the
        ``[defenses]`` table's own entries),
        with ``overrides``."""
        return adversarial_recipe(suite, self.name, **overrides)

    @abstractmethod
    def examples(self, attack, model: nn.Module, batch: dict, tasks: list[Task], recipe: AdversarialRecipe,
                 generator: torch.Generator) -> torch.Tensor:
        """The adversarial examples of ``batch`` (``attack``: the attack created with the recipe's
        K steps; the model is in eval mode)."""

    def train(self, model: nn.Module, tasks: list[Task], dataset, recipe: AdversarialRecipe, *,
              device: torch.device, resume: Path | None = None, meta: dict | None = None,
              progress: Callable[[int, float], None] | None = None) -> tuple[dict[str, Any], Any]:
        """Train ``model`` in place; returns the training statistics and the attack spec used."""
        spec = self.attack.with_budget({self.attack.optimizer: recipe.attack_steps})
        attack = spec.create()

        def examples(m: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
            x_adv = self.examples(attack, m, batch, tasks, recipe, generator).detach()
            return checked_examples(x_adv, batch["image"], recipe, attack.name, self.label)

        stats = adversarial_training(model, tasks, dataset, examples, recipe, device=device, resume=resume,
                                     meta=meta, progress=progress, label=self.label)
        return stats, spec


def checked_examples(x_adv: torch.Tensor, images: torch.Tensor, recipe: AdversarialRecipe, attack: str,
                     label: str) -> torch.Tensor:
    """``x_adv`` after the validator's output checks: a training attack that returns NaN or leaves
    the eps-ball or [0, 1] stops the training with a message."""
    problem = output_problem(x_adv, images, recipe.unit_eps)
    if problem is not None and problem.kind == "non-finite":
        raise UserError(f"{label}: the attack {attack!r} returned NaN or inf images")
    if problem is not None:
        raise UserError(f"{label}: the attack {attack!r} left the eps-ball or [0, 1] (image {problem.image}: max "
                        f"|delta| {problem.delta:.3f}/255 for eps {recipe.eps:g}/255, values in "
                        f"[{problem.low:.6f}, {problem.high:.6f}])")
    return x_adv


@dataclass
class AdversarialRecipe:
    """How a training defense's checkpoint is trained: the manifest's ``[defenses]`` table, the recipe
    of every adversarial training (stored in the checkpoint's config). ``tau`` and ``fooled_ratio``
    are FAT's early stop; a defense without one ignores them."""

    steps: int = setting(200, low=1, high=10_000_000)  # optimiser steps
    batch_size: int = setting(16, low=1, high=65_536)
    lr: float = setting(5e-4, low=0, high=10, open_low=True)  # cosine-annealed to 0 over the steps
    weight_decay: float = setting(1e-4, low=0, high=10)
    eps: float = setting(8.0, low=0, high=255, open_low=True)  # 0-255 units
    attack_steps: int = setting(20, low=1, high=100_000)  # K
    tau: int = setting(20, low=0, high=100_000)  # model calls after a sample is first fooled before it stops
    #: a sample is fooled when its adversarial/clean loss ratio reaches this
    fooled_ratio: float = setting(1.5, low=1, high=1e6)
    clean_weight: float = setting(0.0, low=0, high=1e3)  # weight of a clean-loss term beside the adversarial one
    seed: int = setting(0, low=0, high=2**62)
    checkpoint_every: int = setting(20, low=1, high=10_000_000)  # steps between resume files
    #: synthetic suites: training scenes (None: the suite's train_size)
    train_size: int | None = setting(None, low=1, high=10_000_000)

    def __post_init__(self) -> None:
        check_fields(self, "")

    @property
    def unit_eps(self) -> float:
        """The training attacks' eps on the [0, 1] image scale."""
        return unit_eps(self.eps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def adversarial_recipe(suite, defense: str | None = None, **overrides: Any) -> AdversarialRecipe:
    """The suite's adversarial training recipe (its manifest's ``[defenses]`` table's own
    entries, refined by the ``[defenses.<defense>]`` table) with ``overrides`` (those not None)."""
    own = getattr(suite, "defense_recipes", {}).get(defense, {}) if defense else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    values = {**getattr(suite, "defense_defaults", {}), **own, **given}
    return read_table(AdversarialRecipe, values, "adversarial training recipe")


class _Cosine(torch.optim.lr_scheduler.LRScheduler):
    """The recipe's lr cosine-annealed to 0 over its steps, computed in closed form at each step
    (the training defenses' schedule; members use torch's recursive form, whose rounding differs).
    Its state (a resume file's) is numbers only."""

    def __init__(self, optimizer: torch.optim.Optimizer, recipe: AdversarialRecipe) -> None:
        self.peak, self.total = recipe.lr, recipe.steps
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        lr = self.peak * 0.5 * (1.0 + math.cos(math.pi * self.last_epoch / self.total))
        return [lr for _ in self.optimizer.param_groups]


def adversarial_training(model: nn.Module, tasks: list[Task], dataset, examples: Examples,
                         recipe: AdversarialRecipe, *, device: torch.device, resume: Path | None = None,
                         meta: dict | None = None, progress: Callable[[int, float], None] | None = None,
                         label: str = "adversarial training") -> dict[str, Any]:
    """Train ``model`` in place for ``recipe.steps`` steps on the adversarial examples that
    ``examples(model, batch, generator)`` makes of each batch (with the model in eval mode), on
    the one training loop (:func:`~benchmark.training.run_training`): each step reseeds from the
    recipe's seed and the step number. With ``resume`` (a file path), continue from the state
    there when it exists and write it every ``checkpoint_every`` steps; ``meta`` identifies the
    training. ``label`` names the defense in messages. Returns training statistics."""

    def step_loss(step: int, batch: dict) -> torch.Tensor:
        torch.manual_seed(recipe.seed * 1_000_003 + step)
        generator = torch.Generator(device=device).manual_seed(recipe.seed * 1_000_003 + step)
        model.eval()
        x_adv = examples(model, batch, generator)
        model.train()
        loss = total_loss(tasks, model(x_adv), batch)
        if recipe.clean_weight > 0:
            loss = loss + recipe.clean_weight * total_loss(tasks, model(batch["image"]), batch)
        return loss

    for p in model.parameters():
        p.requires_grad_(True)
    stats = run_training(model, dataset, step_loss, steps=recipe.steps, batch_size=recipe.batch_size,
                         seed=recipe.seed, lr=recipe.lr, weight_decay=recipe.weight_decay, optimizer="adam",
                         schedule=lambda opt: _Cosine(opt, recipe), device=device, progress=progress, resume=resume,
                         checkpoint_every=recipe.checkpoint_every, identity=meta, loss_every=1, label=label,
                         restart="delete it, or pass --restart to train from the start")
    for p in model.parameters():
        p.requires_grad_(False)
    return stats
