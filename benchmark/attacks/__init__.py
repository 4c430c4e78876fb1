"""Attacks: optimizers (FGSM, PGD, MIM, APGD, Auto-SAGA, and the score-based black-box Square) x
objectives (SINGLE-X, TOTAL, SIGNTOTAL, GB-MTA), the multi-task AutoAttack ensemble, PGD against a
detector (evade-pgd), the registry and the output validator."""

from benchmark.attacks import apgd, autosaga, ensemble, evasion, fgsm, mim, pgd, square  # noqa: F401  (register)
from benchmark.attacks.base import Attack, OptimizerAttack, PassCounter, clip_to_ball
from benchmark.attacks.objectives import Objective, create_objective, list_objectives, register_objective
from benchmark.attacks.registry import list_attacks, register_attack
from benchmark.attacks.spec import AttackSpec, create_attack
from benchmark.attacks.validate import AttackRun, Verdict, model_fingerprint, run_attack, validate_output

__all__ = [
    "Attack",
    "AttackRun",
    "AttackSpec",
    "Objective",
    "OptimizerAttack",
    "PassCounter",
    "Verdict",
    "clip_to_ball",
    "create_attack",
    "create_objective",
    "list_attacks",
    "list_objectives",
    "model_fingerprint",
    "register_attack",
    "register_objective",
    "run_attack",
    "validate_output",
]
