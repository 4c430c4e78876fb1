"""The attack interface and the L-infinity helpers the optimizers share.

An attack is anything with ``perturb(model, images, targets, *, tasks, eps, generator)`` that
returns adversarial images: ``images`` are the clean RGB images in [0, 1], ``targets`` the dict of
every task's ground truth, ``tasks`` the model's tasks in order, ``eps`` the L-infinity radius on
the [0, 1] scale (the paper's eps=8 is 8/255) and ``generator`` a seeded ``torch.Generator`` for
any randomness. The model is in eval mode with ``requires_grad`` off on its parameters.

Built-in attacks are an optimizer (a subclass of :class:`Attack`) combined with an
:class:`~benchmark.attacks.objectives.Objective`; both are chosen by name, e.g. ``pgd:gb-mta``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from benchmark.attacks.objectives import Objective, create_objective
from benchmark.errors import UserError
from benchmark.tasks import Task

__all__ = ["PRECISIONS", "Attack", "OptimizerAttack", "PassCounter", "check_steps", "clip_to_ball", "frozen"]


def check_steps(steps: int) -> int:
    if int(steps) < 1:
        raise UserError(f"steps must be >= 1, got {steps}")
    return int(steps)


def clip_to_ball(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Project onto the L-infinity eps-ball around ``x`` and onto [0, 1]."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """Eval mode and no parameter gradients for the duration of an attack; afterwards every
    module's mode and every parameter's flag is what it was (also when the attack changed them).
    Only what differs is set, both ways: a loaded target is frozen already."""
    modules = list(model.modules())
    modes = [m.training for m in modules]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    if any(modes):
        model.eval()
    for p, flag in zip(params, flags, strict=True):
        if flag:
            p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in zip(params, flags, strict=True):
            if p.requires_grad != flag:
                p.requires_grad_(flag)
        for m, mode in zip(modules, modes, strict=True):
            if m.training != mode:
                m.training = mode


@dataclass
class PassCounter:
    """Counts forward and backward passes of the model (counted by hooks, not assumed): a forward
    is a call of the model, a backward one gradient computation that reaches its input."""

    forward: int = 0
    backward: int = 0
    _handles: list = field(default_factory=list, repr=False)

    def attach(self, model: torch.nn.Module) -> PassCounter:
        self._handles.append(model.register_forward_pre_hook(self._on_forward))
        return self

    def _on_forward(self, module, args) -> None:
        self.forward += 1
        x = args[0] if args else None
        if isinstance(x, torch.Tensor) and x.requires_grad:
            x.register_hook(self._on_backward)

    def _on_backward(self, grad):
        self.backward += 1
        return grad

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class Attack(ABC):
    """Base class of every attack. Subclasses implement :meth:`perturb`."""

    #: registry name, e.g. ``"pgd:gb-mta"``; set by :func:`~benchmark.attacks.registry.create_attack`
    name: str = ""
    #: the constructor option that sets the attack's iteration budget (``"steps"``), through which a
    #: suite profile's ``steps`` table is applied; ``None`` for attacks without one (FGSM)
    budget_option: ClassVar[str | None] = None

    @abstractmethod
    def perturb(self, model: torch.nn.Module, images: torch.Tensor, targets: dict[str, torch.Tensor], *,
                tasks: list[Task], eps: float, generator: torch.Generator) -> torch.Tensor:
        """Return adversarial images for ``images`` (see the module docstring)."""

    def __call__(self, model, images, targets, *, tasks, eps, generator):
        with frozen(model):
            return self.perturb(model, images, targets, tasks=tasks, eps=eps, generator=generator)

    def options(self) -> dict:
        """The attack's settings, stored with each result."""
        return {k: v for k, v in vars(self).items()
                if not k.startswith("_") and isinstance(v, int | float | str | bool)}


#: the precisions an optimizer's forward passes run in (``precision`` option; float32 by default)
PRECISIONS = ("float32", "bf16")


class OptimizerAttack(Attack):
    """An optimizer following an objective chosen by name (built for the model's tasks on use)."""

    optimizer: str = ""

    def __init__(self, objective: str = "gb-mta", *, loss: str = "image", precision: str = "float32") -> None:
        if loss not in ("image", "batch"):
            raise UserError(f"loss must be 'image' (each image's mean over its valid pixels) or 'batch' (the "
                            f"authors' mean over the batch's valid pixels), got {loss!r}")
        if precision not in PRECISIONS:
            raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.objective_name = objective
        self.loss = loss
        self.precision = precision
        self._objective: Objective | None = None
        self._objective_tasks: tuple[str, ...] = ()

    def objective(self, tasks: list[Task]) -> Objective:
        key = tuple(t.name for t in tasks)
        if self._objective is None or key != self._objective_tasks:
            self._objective = create_objective(self.objective_name, tasks, batch_loss=self.loss == "batch")
            self._objective_tasks = key
        return self._objective

    def __call__(self, model, images, targets, *, tasks, eps, generator):
        """With ``precision="bf16"``, the attack's forward passes run under bfloat16 autocast
        (convolutions and matrix products in bf16; the losses, the input gradient and the step in
        float32); the cell scores the adversarial images in float32 like every other."""
        if self.precision == "float32":
            return super().__call__(model, images, targets, tasks=tasks, eps=eps, generator=generator)
        with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16):
            return super().__call__(model, images, targets, tasks=tasks, eps=eps, generator=generator)

    @staticmethod
    def _start(images: torch.Tensor) -> torch.Tensor:
        return images.detach().clone().requires_grad_(True)
