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

The training loop, its recipe and resume files are every training defense's
(:mod:`benchmark.defenses.training`).
"""

from __future__ import annotations

import torch
from torch import nn

from benchmark.attacks.objectives import output_losses
from benchmark.defenses.registry import register_defense
from benchmark.defenses.training import AdversarialRecipe, TrainingDefense
from benchmark.tasks import Task

__all__ = ["FAT", "fat_examples"]


@register_defense("fat")
class FAT(TrainingDefense):
    """Friendly adversarial training with the attack named by the argument (``fat:pgd:gb-mta``)."""

    label = "FAT"

    def examples(self, attack, model, batch, tasks, recipe, generator):
        return fat_examples(attack, model, batch, tasks, recipe, generator)


class _EarlyStop(nn.Module):
    """The model as the attack sees it, watching each call: a sample stops ``tau`` calls after it
    is first fooled, and the input of that call is its adversarial example."""

    def __init__(self, model: nn.Module, tasks: list[Task], batch: dict, clean_loss: torch.Tensor,
                 recipe: AdversarialRecipe) -> None:
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


def fat_examples(attack, model: nn.Module, batch: dict, tasks: list[Task], recipe: AdversarialRecipe,
                 generator: torch.Generator) -> torch.Tensor:
    """FAT's adversarial examples of ``batch`` for ``model`` (in eval mode while attacked)."""
    images = batch["image"]
    eps = recipe.unit_eps
    if recipe.tau >= recipe.attack_steps:  # no sample can stop early: the attack itself
        x_adv = attack(model, images, batch, tasks=tasks, eps=eps, generator=generator)
    else:
        with torch.no_grad():
            clean = output_losses(model(images), batch, tasks)
        watch = _EarlyStop(model, tasks, batch, clean, recipe)
        x_adv = attack(watch, images, batch, tasks=tasks, eps=eps, generator=generator)
        if watch.points is not None:
            x_adv = torch.where(watch.stopped.view(-1, 1, 1, 1), watch.points, x_adv)
    return x_adv.detach()
