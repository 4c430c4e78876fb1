"""``AttackSpec``: an attack name parsed once.

``"pgd:single-depth"`` becomes ``AttackSpec(optimizer="pgd", objective="single-depth",
task="depth_zbuffer")``; the CLI, the runner and the leaderboard use these fields and never split
the string again. A spec also carries the attack's options (``steps``, ``preset``, ...), and a
profile's step budget is applied through the optimizer's declared :attr:`Attack.budget_option`.

>>> spec = AttackSpec.parse("pgd:single-depth")
>>> (spec.optimizer, spec.objective, spec.task)
('pgd', 'single-depth', 'depth_zbuffer')
>>> spec.with_options(steps=5).options
(('steps', 5),)
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from benchmark.attacks.objectives import OBJECTIVES, SINGLE, list_objectives, parse_single
from benchmark.attacks.registry import ATTACKS, is_optimizer, load_plugins
from benchmark.errors import UserError
from benchmark.tasks import Task, all_tasks

__all__ = ["AttackSpec", "create_attack", "is_ours"]


def is_ours(obj: object) -> bool:
    """Whether a class or function is defined in mtlbench's own package (``benchmark``)."""
    return getattr(obj, "__module__", "").split(".")[0] == "benchmark"


@dataclass(frozen=True)
class AttackSpec:
    """An attack: optimizer (registry name), objective (``None`` for a complete attack), the task
    a SINGLE-X objective targets (full task name), and the options it is created with."""

    optimizer: str
    objective: str | None = None
    task: str | None = None
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def name(self) -> str:
        """The canonical name, ``optimizer:objective`` or the complete attack's name."""
        return f"{self.optimizer}:{self.objective}" if self.objective else self.optimizer

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, text: str | AttackSpec, *, tasks: list[Task] | None = None, **options: Any) -> AttackSpec:
        """Parse ``"optimizer:objective"`` (or a complete attack's name). ``tasks`` are the tasks of
        the model it will attack: a ``single-X`` objective must name one of them. Without them, X
        is resolved among the known tasks (NYUv2's and Taskonomy's) or kept as given."""
        if isinstance(text, AttackSpec):
            return text.with_options(**options) if options else text
        if not isinstance(text, str) or not text.strip():
            raise UserError(f"an attack name must be a non-empty string, got {text!r}")
        load_plugins()
        optimizer, sep, objective = text.strip().partition(":")
        if optimizer not in ATTACKS:
            raise ATTACKS.unknown(optimizer, text)
        task = None
        if is_optimizer(ATTACKS[optimizer]):
            objective = objective.strip().lower()
            if not objective:
                raise UserError(f"attack {text!r} needs an objective, e.g. '{optimizer}:gb-mta' or "
                                f"'{optimizer}:single-depth'")
            pool = tasks if tasks is not None else all_tasks()
            single = parse_single(objective, pool)
            if single is not None:
                if not single.found and tasks is not None:
                    raise UserError(f"attack {text!r}: no task {single.task!r} among {', '.join(t.name for t in pool)}")
                # without the model's tasks, an unknown name stays as given (checked when the attack runs)
                task, objective = single.task, single.name
            elif objective not in OBJECTIVES:
                raise UserError(f"attack {text!r}: unknown objective {objective!r}; known: "
                                f"{', '.join(list_objectives(pool))}")
        elif sep:
            raise UserError(f"attack {optimizer!r} is a complete attack and takes no objective (got {text!r})")
        else:
            objective = None
        return cls(optimizer, objective, task).with_options(**options)

    def with_options(self, **options: Any) -> AttackSpec:
        """A copy with ``options`` added (or replaced); options are kept sorted by name."""
        merged = {**dict(self.options), **options}
        return replace(self, options=tuple(sorted(merged.items())))

    @property
    def attack_class(self) -> type:
        load_plugins()
        return ATTACKS[self.optimizer]

    @property
    def builtin(self) -> bool:
        """Whether all of the attack's code is mtlbench's own: its optimizer (or complete attack)
        and its objective come with the package, not from a plugin, a submission or a
        ``register_objective`` of the user's."""
        parts = [self.attack_class]
        if self.objective is not None and not self.objective.startswith(SINGLE):
            parts.append(OBJECTIVES[self.objective])
        return all(is_ours(part) for part in parts)

    def with_budget(self, steps: dict[str, int]) -> AttackSpec:
        """Apply a profile's step budget (``{optimizer: steps}``) through the optimizer's declared
        budget option; attacks that declare none (FGSM) are returned unchanged."""
        option = getattr(self.attack_class, "budget_option", None)
        if option is None or self.optimizer not in steps or option in dict(self.options):
            return self
        return self.with_options(**{option: steps[self.optimizer]})

    def create(self):
        """A new instance of the attack with this spec's options."""
        return create_attack(self)


def create_attack(spec: str | AttackSpec, **options: Any):
    """Build an attack from an :class:`AttackSpec` or a name (``"optimizer:objective"``, or a
    complete attack's name) and its options."""
    spec = AttackSpec.parse(spec, **options)
    kwargs = dict(spec.options)
    if spec.objective is not None:
        kwargs["objective"] = spec.objective
    try:
        attack = spec.attack_class(**kwargs)
    except TypeError as exc:
        raise UserError(f"bad options for attack {spec.name!r}: {exc}") from None
    attack.name = spec.name
    return attack
