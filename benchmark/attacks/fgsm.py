"""FGSM (Goodfellow et al. 2015): one step of size eps along the sign of the objective's direction."""

from __future__ import annotations

from benchmark.attacks.base import OptimizerAttack, clip_to_ball
from benchmark.attacks.batching import ImagesIndependent
from benchmark.attacks.registry import register_attack

__all__ = ["FGSM"]


@register_attack("fgsm")
class FGSM(ImagesIndependent, OptimizerAttack):
    def __init__(self, objective: str = "gb-mta", *, loss: str = "image", precision: str = "float32") -> None:
        super().__init__(objective, loss=loss, precision=precision)

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        x = self._start(images)
        direction, _ = self.objective(tasks).direction(model, x, targets)
        return clip_to_ball(images + eps * direction.sign(), images, eps).detach()
