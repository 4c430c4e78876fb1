"""A manifest table read into a dataclass, its rules declared once on the dataclass's fields.

Each field of a table's dataclass carries its rule in its metadata (:func:`setting`): the types it
takes (by default from its annotation: ``int``, ``float``, ``str``, ``bool``, ``list``, ``dict``,
``X | None``), a range, the allowed values, or a check of its own. :func:`read_table` derives from
them what the table may hold (an unknown key names the allowed ones), checks every value given and
fills in the field defaults; :func:`check_fields` checks a constructed instance the same way (a
recipe given in Python, or a manifest's table refined on the command line).

>>> from dataclasses import dataclass
>>> @dataclass
... class Recipe:
...     steps: int = setting(100, low=1)
...     optimizer: str = setting("adam", choices=("adam", "sgd"))
>>> read_table(Recipe, {"steps": 5}, "training")
Recipe(steps=5, optimizer='adam')
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, Field
from typing import Any

from benchmark.errors import UserError

__all__ = ["TableError", "check_fields", "check_keys", "check_table", "check_value", "read_table", "setting",
           "text_rule"]

_RULE = "mtlbench.rule"
_TYPES: dict[str, tuple[type, ...]] = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
                                       "list": (list, tuple), "dict": (dict,)}


class TableError(UserError):
    """A table value that breaks its field's rule; ``key`` is the field (``where.key``)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.reason = key, message


@dataclasses.dataclass(frozen=True)
class Rule:
    types: tuple[type, ...] | None = None  # None: from the field's annotation
    low: float | None = None
    high: float | None = None
    open_low: bool = False  # the low bound itself is not allowed (a learning rate, an eps)
    choices: tuple | None = None
    #: a message when the value is wrong (or ``(entry, message)`` for an entry of a table value), else None
    check: Callable[[Any], str | tuple[str, str] | None] | None = None
    table: bool = True  # read from a manifest table (False: a field the code fills in)
    nested: type | None = None  # a table of its own, with the rules of this dataclass (kept as written)
    convert: Callable[[Any], Any] | None = None  # the checked value as the dataclass holds it (a list as a tuple)


def setting(default: Any = MISSING, *, types: type | tuple[type, ...] | None = None, low: float | None = None,
            high: float | None = None, open_low: bool = False, choices: tuple | None = None,
            check: Callable[[Any], str | tuple[str, str] | None] | None = None,
            factory: Callable[[], Any] | None = None, table: bool = True, nested: type | None = None,
            convert: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field with its rule: ``types`` (default: the annotation's), ``[low, high]``
    (``open_low``: ``(low, high]``), ``choices``, ``check(value)`` returning a message, or
    ``nested``: a sub-table with the rules of that dataclass; ``convert``: how the checked value is
    held (a list as a tuple). ``table=False``: filled in by the code, not read from a manifest."""
    rule = Rule(types if isinstance(types, tuple) or types is None else (types,), low, high, open_low,
                None if choices is None else tuple(choices), check, table, nested, convert)
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={_RULE: rule})
    return dataclasses.field(default=default, metadata={_RULE: rule})


def text_rule(limit: int, pattern: re.Pattern | None = None) -> Callable[[str], str | None]:
    """The ``check`` of a text field: at most ``limit`` characters (and matching ``pattern``)."""

    def check(value: str) -> str | None:
        if len(value) > limit:
            return f"expected a string of at most {limit:,} characters, got {len(value):,}"
        if pattern is not None and not pattern.fullmatch(value):
            shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
            return f"{shown} is not valid here"
        return None

    return check


def _rule(f: Field) -> Rule:
    return f.metadata.get(_RULE) or Rule()


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The type of each field of ``cls``, its annotation evaluated (``Optional[int]`` and
    ``int | None`` alike)."""
    return typing.get_type_hints(cls)


def _types(f: Field, annotation: Any) -> tuple[tuple[type, ...], bool]:
    """The types a field takes (its rule's, else its annotation's), and whether it may be None."""
    rule = _rule(f)
    origin = typing.get_origin(annotation)
    parts = typing.get_args(annotation) if origin in (typing.Union, types.UnionType) else (annotation,)
    optional = type(None) in parts
    if rule.types is not None:
        return rule.types, optional
    out: tuple[type, ...] = ()
    for part in parts:
        if part is type(None):
            continue
        name = getattr(typing.get_origin(part) or part, "__name__", "")
        out += _TYPES.get(name, (object,))
    return out or (object,), optional


def _type_names(types: tuple[type, ...]) -> str:
    if set(types) >= {int, float} and len(set(types)) == 2:
        return "a number"
    names = {"str": "a string", "int": "an integer", "float": "a number", "list": "a list", "tuple": "a list",
             "dict": "a table", "bool": "true/false"}
    return " or ".join(dict.fromkeys(names.get(t.__name__, t.__name__) for t in types))


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e16 else format(x, "g")


def check_value(f: Field, value: Any, key: str, annotation: Any) -> Any:
    """``value`` checked against ``f``'s rule and ``annotation`` (the field's evaluated type; a
    :class:`TableError` naming ``key``), an integer given for a ``float`` field made a float."""
    types, optional = _types(f, annotation)
    rule = _rule(f)
    if value is None:
        if optional:
            return None
        raise TableError(key, f"expected {_type_names(types)}, got nothing")
    if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
        raise TableError(key, f"expected {_type_names(types)}, got {value!r}")
    if rule.choices is not None and value not in rule.choices:
        raise TableError(key, f"expected one of {', '.join(map(str, rule.choices))}, got {value!r}")
    bounded = rule.low is not None or rule.high is not None
    if bounded and isinstance(value, int | float) and not isinstance(value, bool):
        low_ok = rule.low is None or (value > rule.low if rule.open_low else value >= rule.low)
        high_ok = rule.high is None or value <= rule.high
        if not (low_ok and high_ok):
            low = "-inf" if rule.low is None else _number(rule.low)
            high = "inf" if rule.high is None else _number(rule.high)
            raise TableError(key, f"expected {_type_names(types)} in {'(' if rule.open_low else '['}{low}, {high}], "
                                  f"got {value!r}")
    if rule.nested is not None:
        return dict(check_table(rule.nested, value, key))
    if rule.check is not None and (message := rule.check(value)):
        if isinstance(message, tuple):  # (the entry of a table value that is wrong, the message)
            sub, message = message
            key = f"{key}.{sub}"
        raise TableError(key, message)
    if rule.convert is not None:
        return rule.convert(value)
    if types == _TYPES["float"] and isinstance(value, int):
        return float(value)
    return value


def read_table(cls, entries: Any, where: str, /, **computed: Any):
    """An instance of ``cls`` from a manifest table's ``entries`` (keys and values checked,
    defaults filled in); ``computed``: the fields the code fills in. Errors name ``where.key``."""
    values = check_table(cls, entries, where)
    return cls(**values, **computed)


def check_keys(table: Any, allowed: Iterable[str], where: str) -> Mapping:
    """``table`` itself: a table whose keys are all ``allowed`` (else a :class:`TableError` that
    names the first unknown key and lists the allowed ones)."""
    if not isinstance(table, Mapping):
        raise TableError(where, f"expected a table, got {type(table).__name__}")
    allowed = set(allowed)
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise TableError(f"{where}.{unknown[0]}" if where else unknown[0],
                         f"unknown key (allowed: {', '.join(sorted(allowed))})")
    return table


def check_table(cls, table: Any, where: str) -> dict[str, Any]:
    """The entries of ``table`` checked against the fields of ``cls`` (only those given)."""
    fields = {f.name: f for f in dataclasses.fields(cls) if _rule(f).table and not f.name.startswith("_")}
    check_keys(table, fields, where)
    missing = [n for n, f in fields.items() if n not in table and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise TableError(f"{where}.{missing[0]}", "missing")
    hints = _hints(cls)
    return {k: check_value(fields[k], v, f"{where}.{k}", hints[k]) for k, v in table.items()}


def check_fields(instance: Any, where: str) -> None:
    """Every field of a constructed dataclass ``instance`` checked against its rule (in place: an
    integer of a ``float`` field becomes a float)."""
    hints = _hints(type(instance))
    for f in dataclasses.fields(instance):
        if f.name.startswith("_") or _RULE not in f.metadata:
            continue
        value = check_value(f, getattr(instance, f.name), f"{where}.{f.name}" if where else f.name, hints[f.name])
        object.__setattr__(instance, f.name, value)
