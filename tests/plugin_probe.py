"""An attack whose code a test can change between two `mtlbench check` runs (through environment
variables, as a pull request would change its source): PGD from a random start in the eps-ball.

PROBE_STEP_SCALE scales its step size (a weakened attack), PROBE_EXTRA_STEPS adds iterations (more
passes), PROBE_SLEEP_S sleeps in every batch (slower at the same passes)."""

import os
import time

import torch

from benchmark.attacks import OptimizerAttack, clip_to_ball, register_attack


@register_attack("probe")
class Probe(OptimizerAttack):
    budget_option = "steps"

    def __init__(self, objective: str = "gb-mta", *, steps: int = 4) -> None:
        super().__init__(objective)
        self.steps = int(steps)

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        scale = float(os.environ.get("PROBE_STEP_SCALE", "1"))
        steps = self.steps + int(os.environ.get("PROBE_EXTRA_STEPS", "0"))
        time.sleep(float(os.environ.get("PROBE_SLEEP_S", "0")))
        objective = self.objective(tasks)
        noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        x_adv = clip_to_ball(images + (2 * noise - 1) * eps, images, eps)
        for _ in range(steps):
            direction, _ = objective.direction(model, self._start(x_adv), targets)
            x_adv = clip_to_ball(x_adv + scale * 2.5 * eps / self.steps * direction.sign(), images, eps)
        return x_adv.detach()
