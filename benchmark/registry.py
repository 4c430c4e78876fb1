"""One registry for every pluggable kind: attacks, objectives, defenses, backbones, task sets.

A :class:`Registry` maps names to objects of one kind. It registers with a decorator (checking
the name and, through ``check``, the object), looks a name up with a message that says what is
known and what was probably meant, lists names with a shell-style filter, and loads the kind's
third-party plugins from its entry-point group once. Plugin *modules* (a module name or a ``.py``
file that registers with the decorators) are loaded explicitly with :func:`load_plugin_modules`;
the runner hands them to its worker processes with their tasks.

>>> shapes = Registry("shape")
>>> @shapes.register("square")
... def square(side): return side * side
>>> shapes.get("square")(3)
9
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Generic, TypeVar

from benchmark.errors import UserError

__all__ = ["Registry", "imported_plugin_modules", "load_plugin_modules", "plugin_modules"]

T = TypeVar("T")
_MISSING = object()

#: the plugin modules this process has imported, in order (module names, or absolute ``.py`` paths)
_IMPORTED: dict[str, None] = {}


class Registry(Generic[T]):
    """Names of one ``kind`` of object. ``group``: the entry-point group its plugins register in;
    ``check(name, obj)`` raises a ``TypeError``/``ValueError`` for an object that is not of the kind;
    ``forbidden``: characters a name may not hold (``:`` separates an optimizer from an objective)."""

    def __init__(self, kind: str, *, group: str | None = None, check: Callable[[str, T], None] | None = None,
                 forbidden: str = "", reserved: Iterable[str] = (), error: type[Exception] = UserError,
                 on_register: Callable[[str, T], None] | None = None) -> None:
        self.kind, self.group, self._check, self._on_register = kind, group, check, on_register
        self.forbidden, self.reserved, self.error = forbidden, set(reserved), error
        self._items: dict[str, T] = {}
        self._plugins_loaded = group is None

    def register(self, name: str, obj: T | None = None):
        """``@registry.register("name")`` (or ``registry.register("name", obj)``): add ``obj``
        under ``name``; the same object again is a no-op, another one under a taken name an error."""
        if not isinstance(name, str) or not name or any(ch in name for ch in self.forbidden) \
                or name in self.reserved:
            raise ValueError(f"{self.kind} name {name!r} must be a non-empty string"
                             + (f" without {self.forbidden!r}" if self.forbidden else "")
                             + (f" and not {', '.join(sorted(self.reserved))}" if self.reserved else ""))

        def deco(target: T) -> T:
            if self._check is not None:
                self._check(name, target)
            if self._items.get(name, target) is not target:
                raise ValueError(f"{self.kind} {name!r} is already registered by "
                                 f"{getattr(self._items[name], '__module__', '?')}")
            self._items[name] = target
            if self._on_register is not None:
                self._on_register(name, target)
            return target

        return deco if obj is None else deco(obj)

    def load_plugins(self) -> None:
        """Register the objects of the installed packages' entry points (once)."""
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for ep in entry_points(group=self.group):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin is the user's error, named, not our traceback
                raise UserError(f"{self.kind} plugin {ep.name!r} ({ep.value}) failed to import: {exc}") from exc
            if ep.name not in self._items:
                self.register(ep.name, obj)

    def get(self, name: str, default=_MISSING) -> T:
        """The object registered under ``name``; an unknown name is :meth:`unknown`'s error, or
        ``default`` when one is given (as ``dict.get``)."""
        self.load_plugins()
        try:
            return self._items[name]
        except (KeyError, TypeError):
            if default is not _MISSING:
                return default
            raise self.unknown(name) from None

    def unknown(self, name: object, where: str = "", *, extra: Iterable[str] = ()) -> Exception:
        """The error for an unknown ``name`` (in ``where``, e.g. the spec it came from): it names the
        closest known name and every known one (``extra``: names that are known without being
        registered, such as ``none``)."""
        known = [*extra, *sorted(self._items)]
        close = difflib.get_close_matches(str(name), known, n=1)
        return self.error(f"unknown {self.kind} {name!r}" + (f" in {where!r}" if where else "")
                          + (f" (did you mean {close[0]!r}?)" if close else "") + f"; known: {', '.join(known)}")

    def names(self, pattern: str = "*") -> list[str]:
        """The registered names matching the shell-style ``pattern``, in the order they were registered."""
        self.load_plugins()
        return [n for n in self._items if fnmatch.fnmatch(n, pattern)]

    def items(self) -> list[tuple[str, T]]:
        """``(name, object)`` pairs sorted by name."""
        self.load_plugins()
        return sorted(self._items.items())

    def pop(self, name: str, default: T | None = None) -> T | None:
        return self._items.pop(name, default)

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._items

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __setitem__(self, name: str, obj: T) -> None:  # a test's temporary entry (monkeypatch.setitem)
        self._items[name] = obj

    def __delitem__(self, name: str) -> None:
        del self._items[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)


def plugin_modules(explicit: Iterable[str] | str | None = None) -> list[str]:
    """The plugin modules a command loads: those it is given (``--plugins``) and those named in
    ``MTLBENCH_PLUGINS`` (comma-separated module names or ``.py`` files), in that order, once each."""
    if isinstance(explicit, str):
        explicit = explicit.split(",")
    given = [*(explicit or []), *os.environ.get("MTLBENCH_PLUGINS", "").split(",")]
    return list(dict.fromkeys(m.strip() for m in given if m and m.strip()))


def load_plugin_modules(modules: Iterable[str]) -> None:
    """Import each plugin module (a module name, or the path of a ``.py`` file) once; its
    ``@register_*`` decorators register what it defines. A module that fails to import is the
    user's error, named."""
    for plugin in modules:
        plugin = str(Path(plugin).resolve()) if plugin.endswith(".py") else plugin
        if plugin in _IMPORTED:
            continue
        _IMPORTED[plugin] = None
        try:
            if plugin.endswith(".py"):
                path = Path(plugin)
                if not path.exists():
                    raise FileNotFoundError(f"no file {path}")
                module_spec = importlib.util.spec_from_file_location(f"mtlbench_plugin_{path.stem}", path)
                module = importlib.util.module_from_spec(module_spec)
                sys.modules[module_spec.name] = module
                module_spec.loader.exec_module(module)
            else:
                importlib.import_module(plugin)
        except Exception as exc:  # the plugin's failure, reported as the user's error
            _IMPORTED.pop(plugin, None)
            raise UserError(f"plugin {plugin!r} failed to import: {type(exc).__name__}: {exc}") from exc


def imported_plugin_modules() -> list[str]:
    """The plugin modules this process has imported, in order: what a worker process imports
    before it runs a task of this one (the executors pass them with every task)."""
    return list(_IMPORTED)
