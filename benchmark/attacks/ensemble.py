"""The multi-task AutoAttack-style standard ensemble (the paper's "AutoAttack" columns).

Runs APGD with each member objective (every SINGLE-X, TOTAL and GB-MTA by default) and keeps, per
sample, the adversarial image with the highest multi-task score sum_i (L_i - l_i) / l_i. It is the
leaderboard's reference for the strongest known attack and what defenses are judged by.
"""

from __future__ import annotations

import torch

from benchmark.attacks.apgd import APGD
from benchmark.attacks.base import Attack
from benchmark.attacks.objectives import list_objectives, per_task_losses, relative_score
from benchmark.attacks.registry import register_attack

__all__ = ["MultiTaskAutoAttack"]


@register_attack("autoattack")
class MultiTaskAutoAttack(Attack):
    budget_option = "steps"

    def __init__(self, *, steps: int = 20, restarts: int = 1, objectives: str = "single-*,total,gb-mta",
                 preset: str = "reference") -> None:
        self.steps, self.restarts, self.objectives, self.preset = int(steps), int(restarts), objectives, preset

    def members(self, tasks) -> list[str]:
        names: list[str] = []
        for pattern in self.objectives.split(","):
            names += [n for n in list_objectives(tasks, pattern.strip()) if n not in names]
        return names

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        with torch.no_grad():
            clean = per_task_losses(model, images, targets, tasks)
        best, best_score = images.detach().clone(), torch.zeros(images.shape[0], device=images.device)
        for objective in self.members(tasks):
            member = APGD(objective, steps=self.steps, restarts=self.restarts, preset=self.preset)
            adv = member.perturb(model, images, targets, tasks=tasks, eps=eps, generator=generator)
            with torch.no_grad():
                score = relative_score(per_task_losses(model, adv, targets, tasks), clean)
            better = score > best_score
            best = torch.where(better.reshape(-1, *([1] * (adv.dim() - 1))), adv, best)
            best_score = torch.where(better, score, best_score)
        return best
