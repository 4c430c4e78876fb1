"""PGD-AT: adversarial training as Madry et al. (2018) defined it, the baseline of adversarial
training: every mini-batch is replaced by the adversarial examples of the attack its argument
names, run for all of its K steps (``attack_steps`` of the suite's recipe; no early stop), and
the model is trained on them alone. A PGD attack starts from a random point of the eps-ball and
steps 2.5 eps / K (Madry et al.'s variant, ``preset="madry"``), so ``pgdat:pgd:gb-mta`` is PGD
adversarial training with the GB-MTA objective and ``pgdat:pgd:total`` the usual multi-task one;
any other registered attack runs as it is.

``mtlbench defend SUITE --defense pgdat:pgd:total`` trains it with the suite's recipe (the
manifest's ``[defenses]`` table: steps, batch size, learning rate, eps, K); its checkpoint is a target
like any other (``AS+pgdat:pgd:total``).
"""

from __future__ import annotations

from benchmark.defenses.registry import register_defense
from benchmark.defenses.training import TrainingDefense

__all__ = ["PGDAT"]


@register_defense("pgdat")
class PGDAT(TrainingDefense):
    """Madry et al.'s PGD adversarial training with the attack named by the argument (``pgdat:pgd:total``)."""

    label = "PGD-AT"
    default_argument = "pgd:total"

    def training_attack(self, spec):
        return spec.with_options(preset="madry") if spec.optimizer == "pgd" else spec

    def examples(self, attack, model, batch, tasks, recipe, generator):
        return attack(model, batch["image"], batch, tasks=tasks, eps=recipe.unit_eps, generator=generator)
