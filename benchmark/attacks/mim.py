"""MIM / MI-FGSM (Dong et al. 2018): momentum ``mu`` on the per-sample L1-normalised direction,
``steps`` sign steps of eps/steps (or ``step_size`` in 0-255 units)."""

from __future__ import annotations

import torch

from benchmark.attacks.base import OptimizerAttack, check_steps, clip_to_ball
from benchmark.attacks.batching import ImagesIndependent
from benchmark.attacks.registry import register_attack

__all__ = ["MIM"]


@register_attack("mim")
class MIM(ImagesIndependent, OptimizerAttack):
    budget_option = "steps"

    def __init__(self, objective: str = "gb-mta", *, steps: int = 10, step_size: float | None = None,
                 mu: float = 1.0, loss: str = "image", precision: str = "float32") -> None:
        super().__init__(objective, loss=loss, precision=precision)
        self.steps = check_steps(steps)
        self.step_size = step_size
        self.mu = float(mu)

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        objective = self.objective(tasks)
        alpha = self.step_size / 255.0 if self.step_size is not None else eps / self.steps
        x_adv = images.detach().clone()
        momentum = torch.zeros_like(images)
        for _ in range(self.steps):
            direction, _ = objective.direction(model, self._start(x_adv), targets)
            l1 = direction.abs().mean(dim=tuple(range(1, direction.dim())), keepdim=True)
            momentum = self.mu * momentum + direction / l1.clamp_min(1e-12)
            x_adv = clip_to_ball(x_adv + alpha * momentum.sign(), images, eps)
        return x_adv.detach()
