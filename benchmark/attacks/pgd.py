"""PGD (Madry et al. 2018): ``steps`` projected sign steps of ``step_size`` in the eps-ball.

The paper's "PGD" is iterative FGSM: no random start and step eps/steps (``preset="paper"``, the
default). ``preset="madry"`` starts uniformly in the ball and steps 2.5 eps/steps. Step sizes are
in the same 0-255 units as eps (``step_size=2`` means 2/255).
"""

from __future__ import annotations

import torch

from benchmark.attacks.base import OptimizerAttack, check_steps, clip_to_ball
from benchmark.attacks.batching import ImagesIndependent
from benchmark.attacks.registry import register_attack
from benchmark.errors import UserError

__all__ = ["PGD"]


@register_attack("pgd")
class PGD(ImagesIndependent, OptimizerAttack):
    budget_option = "steps"

    def __init__(self, objective: str = "gb-mta", *, steps: int = 10, step_size: float | None = None,
                 random_start: bool | None = None, preset: str = "paper", loss: str = "image",
                 precision: str = "float32") -> None:
        super().__init__(objective, loss=loss, precision=precision)
        if preset not in ("paper", "madry"):
            raise UserError(f"unknown PGD preset {preset!r}; use 'paper' or 'madry'")
        self.preset = preset
        self.steps = check_steps(steps)
        self.step_size = step_size  # 0-255 units; None = the preset's
        self.random_start = (preset == "madry") if random_start is None else bool(random_start)

    def alpha(self, eps: float) -> float:
        if self.step_size is not None:
            return self.step_size / 255.0
        return eps / self.steps * (2.5 if self.preset == "madry" else 1.0)

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        objective = self.objective(tasks)
        alpha = self.alpha(eps)
        x_adv = images.detach().clone()
        if self.random_start:
            noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
            x_adv = (x_adv + (2 * noise - 1) * eps).clamp_(0.0, 1.0)
        for _ in range(self.steps):
            direction, _ = objective.direction(model, self._start(x_adv), targets)
            x_adv = clip_to_ball(x_adv + alpha * direction.sign(), images, eps)
        return x_adv.detach()
