"""Attack registry: ``@register_attack("pgd")``, ``list_attacks("apgd:*")``; names are parsed
and attacks created by :mod:`benchmark.attacks.spec` (``create_attack("pgd:gb-mta", steps=20)``).

A registered :class:`~benchmark.attacks.base.OptimizerAttack` subclass combines with every
objective (``<optimizer>:<objective>``); any other :class:`~benchmark.attacks.base.Attack`
subclass is a complete attack used by its name alone. Third-party packages register theirs through
the ``mtlbench.attacks`` entry-point group (``name = "package.module:Class"``).
"""

from __future__ import annotations

import fnmatch
import inspect

from benchmark.registry import Registry, load_plugin_modules, plugin_modules
from benchmark.tasks import Task, all_tasks

__all__ = ["ATTACKS", "is_optimizer", "list_attacks", "load_plugins", "register_attack"]


def _check_attack(name: str, cls) -> None:
    from benchmark.attacks.base import Attack

    if not (inspect.isclass(cls) and issubclass(cls, Attack)):
        raise TypeError(f"@register_attack({name!r}) needs a subclass of benchmark.attacks.Attack, got {cls!r}")


#: every attack class by name (optimizers and complete attacks)
ATTACKS: Registry[type] = Registry("attack", group="mtlbench.attacks", check=_check_attack, forbidden=":")


def register_attack(name: str):
    """Class decorator registering an attack (an optimizer or a complete attack) under ``name``."""
    return ATTACKS.register(name)


def load_plugins() -> None:
    """Import the attacks of installed plugins (entry-point group ``mtlbench.attacks``, once) and
    of the modules named in ``MTLBENCH_PLUGINS`` (each once)."""
    load_plugin_modules(plugin_modules())
    ATTACKS.load_plugins()


def is_optimizer(cls) -> bool:
    """Whether a registered class is an optimizer (combines with every objective)."""
    from benchmark.attacks.base import OptimizerAttack

    return issubclass(cls, OptimizerAttack)


def list_attacks(pattern: str = "*", tasks: list[Task] | None = None) -> list[str]:
    """Every attack name (optimizer x objective for ``tasks``, NYUv2's and Taskonomy's by default)
    matching the shell-style ``pattern``."""
    from benchmark.attacks.objectives import list_objectives

    load_plugins()
    tasks = all_tasks() if tasks is None else tasks
    names = []
    for name, cls in ATTACKS.items():
        if is_optimizer(cls):
            names += [f"{name}:{obj}" for obj in list_objectives(tasks)]
        else:
            names.append(name)
    return [n for n in names if fnmatch.fnmatch(n, pattern)]
