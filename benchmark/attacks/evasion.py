"""Attacks that know the detector: ``evade-pgd:<objective>`` is PGD (no random start, step eps /
steps, the paper's) that knows the detector in front of the model (a model with
``rejection_score`` and, once calibrated, ``threshold``): at each step, an image whose score is
above ``margin`` times the threshold (about to be rejected) also descends the detector's score::

    d = u(direction of the objective) - weight * [score > margin * threshold] * u(grad of the score)
    x <- clip(x + alpha * sign(d))

with ``u`` the direction scaled to unit L2 norm per image: a constraint-style schedule, so an image
the detector accepts spends its budget on the objective alone. Without a threshold (an
uncalibrated detector) the score term applies to every image; without a detector it is PGD with
the objective (the same images). The score is differentiated as it is (both built-in detectors are
differentiable; a detector with a non-differentiable step gives its straight-through gradient,
BPDA, in its own ``score``). A step costs the objective's passes plus a forward and a backward pass
for the score.
"""

from __future__ import annotations

import torch

from benchmark.attacks.base import OptimizerAttack, check_steps, clip_to_ball
from benchmark.attacks.registry import register_attack
from benchmark.errors import UserError

__all__ = ["EvadePGD"]


def _unit(g: torch.Tensor) -> torch.Tensor:
    return g / g.flatten(1).norm(dim=1).clamp_min(1e-20).view(-1, *([1] * (g.dim() - 1)))


@register_attack("evade-pgd")
class EvadePGD(OptimizerAttack):
    """PGD on an objective and against the detector's score (see the module docstring)."""

    budget_option = "steps"

    def __init__(self, objective: str = "gb-mta", *, steps: int = 10, weight: float = 2.0, margin: float = 0.9,
                 loss: str = "image", precision: str = "float32") -> None:
        super().__init__(objective, loss=loss, precision=precision)
        self.steps = check_steps(steps)
        if not 0 <= float(weight) <= 100:
            raise UserError(f"weight must be in [0, 100] (the detector term against the objective's), got {weight}")
        if not 0 < float(margin) <= 1:
            raise UserError(f"margin must be in (0, 1] (a share of the detector's threshold), got {margin}")
        self.weight, self.margin = float(weight), float(margin)

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        objective = self.objective(tasks)
        score = getattr(model, "rejection_score", None)
        threshold = getattr(model, "threshold", None)
        alpha = eps / self.steps
        x_adv = images.detach().clone()
        for _ in range(self.steps):
            direction, _ = objective.direction(model, self._start(x_adv), targets)
            if score is not None and self.weight > 0:
                x = self._start(x_adv)
                value = score(x)
                (grad,) = torch.autograd.grad(value.sum(), x)
                near = (torch.ones_like(value) if threshold is None
                        else (value.detach() > self.margin * threshold).to(value.dtype))
                direction = _unit(direction) - self.weight * near.view(-1, *([1] * (x.dim() - 1))) * _unit(grad)
            x_adv = clip_to_ball(x_adv + alpha * direction.sign(), images, eps)
        return x_adv.detach()
