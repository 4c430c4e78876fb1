"""Attack registry: ``@register_attack("pgd")``, ``list_attacks("apgd:*")``; names are parsed
and attacks created by :mod:`benchmark.attacks.spec` (``create_attack("pgd:gb-mta", steps=20)``).

A registered :class:`~benchmark.attacks.base.OptimizerAttack` subclass combines with every
objective (``<optimizer>:<objective>``); any other :class:`~benchmark.attacks.base.Attack`
subclass is a complete attack used by its name alone. Third-party packages register theirs through
the ``mtlbench.attacks`` entry-point group (``name = "package.module:Class"``).
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import inspect
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from benchmark.errors import UserError
from benchmark.tasks import Task, all_tasks

__all__ = ["ATTACKS", "is_optimizer", "list_attacks", "load_plugins", "register_attack"]

ATTACKS: dict[str, type] = {}
_PLUGINS_LOADED = False
_PLUGIN_MODULES: set[str] = set()


def register_attack(name: str):
    """Class decorator registering an attack (an optimizer or a complete attack) under ``name``."""
    if ":" in name or not name:
        raise ValueError(f"attack name {name!r} must be non-empty and contain no ':'")

    def deco(cls):
        from benchmark.attacks.base import Attack

        if not (inspect.isclass(cls) and issubclass(cls, Attack)):
            raise TypeError(f"@register_attack({name!r}) needs a subclass of benchmark.attacks.Attack, got {cls!r}")
        if ATTACKS.get(name, cls) is not cls:
            raise ValueError(f"attack {name!r} is already registered by {ATTACKS[name].__module__}")
        ATTACKS[name] = cls
        return cls

    return deco


def load_plugins() -> None:
    """Import the attacks of installed plugins (entry-point group ``mtlbench.attacks``, once) and
    of the modules named in ``MTLBENCH_PLUGINS`` (each once)."""
    global _PLUGINS_LOADED
    for module in filter(None, (m.strip() for m in os.environ.get("MTLBENCH_PLUGINS", "").split(","))):
        if module not in _PLUGIN_MODULES:
            _PLUGIN_MODULES.add(module)
            _import_plugin_module(module)
    if _PLUGINS_LOADED:
        return
    _PLUGINS_LOADED = True
    for ep in entry_points(group="mtlbench.attacks"):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the benchmark
            raise UserError(f"attack plugin {ep.name!r} ({ep.value}) failed to import: {exc}") from exc
        if ep.name not in ATTACKS:
            register_attack(ep.name)(obj)


def _import_plugin_module(spec: str) -> None:
    """Import a module that registers attacks with ``@register_attack``: a module name, or the
    path of a ``.py`` file (``MTLBENCH_PLUGINS``, ``mtlbench run --plugins``)."""
    try:
        if spec.endswith(".py"):
            path = Path(spec).resolve()
            if not path.exists():
                raise FileNotFoundError(f"no file {path}")
            module_spec = importlib.util.spec_from_file_location(f"mtlbench_plugin_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            module_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except Exception as exc:  # a broken plugin is the user's error, reported as such
        raise UserError(f"attack plugin {spec!r} failed to import: {type(exc).__name__}: {exc}") from exc


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
    for name, cls in sorted(ATTACKS.items()):
        if is_optimizer(cls):
            names += [f"{name}:{obj}" for obj in list_objectives(tasks)]
        else:
            names.append(name)
    return [n for n in names if fnmatch.fnmatch(n, pattern)]
