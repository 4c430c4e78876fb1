"""An example third-party mtlbench attack: PGD from a random start in the eps-ball with a cosine
step-size schedule (large steps first, fine ones at the end).

It subclasses ``OptimizerAttack``, so it follows whichever objective it is combined with
(``cospgd:gb-mta``, ``cospgd:total``, ``cospgd:single-depth``, ...) without knowing which:
``objective.direction`` returns the objective's ascent direction for the images.
"""

from __future__ import annotations

import math

import torch

from benchmark.attacks import OptimizerAttack, clip_to_ball

__all__ = ["CosinePGD"]


class CosinePGD(OptimizerAttack):
    #: the option a suite profile's step budget sets (``steps = { cospgd = 5 }``)
    budget_option = "steps"

    def __init__(self, objective: str = "gb-mta", *, steps: int = 10, peak: float = 2.0) -> None:
        super().__init__(objective)
        if int(steps) < 1 or not peak > 0:
            raise ValueError(f"need steps >= 1 and peak > 0, got steps={steps}, peak={peak}")
        self.steps = int(steps)
        self.peak = float(peak)  # the first step is peak * eps / steps

    def step_size(self, eps: float, i: int) -> float:
        return self.peak * eps / self.steps * 0.5 * (1.0 + math.cos(math.pi * i / self.steps))

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        objective = self.objective(tasks)
        noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        x_adv = (images + (2 * noise - 1) * eps / 2).clamp(0.0, 1.0)  # start inside half the ball
        for i in range(self.steps):
            direction, _ = objective.direction(model, self._start(x_adv), targets)
            x_adv = clip_to_ball(x_adv + self.step_size(eps, i) * direction.sign(), images, eps)
        return x_adv.detach()
