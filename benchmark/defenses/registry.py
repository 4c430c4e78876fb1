"""Defense registry: ``@register_defense("bitdepth")``, ``create_defense("bitdepth:4")``,
``list_defenses()``. Third-party packages register theirs through the ``mtlbench.defenses``
entry-point group (``name = "package.module:Class"``).

A defense name is ``name[:argument]``: ``bitdepth:4`` (4 bits), ``gaussian:1.0`` (sigma in
pixels), ``median:3`` (window), ``resize:0.15`` (up to 15% larger), ``fat:pgd:gb-mta`` (FAT
adversarial training with the attack ``pgd:gb-mta``). ``none`` is the undefended model.
"""

from __future__ import annotations

import inspect
import warnings

from benchmark.errors import UserError
from benchmark.registry import Registry

__all__ = ["DEFENSES", "Defense", "canonical_defense", "create_defense", "list_defenses", "parse_defense",
           "register_defense"]


class Defense:
    """Base of every defense. ``kind`` is ``"inference"`` (wraps a model at evaluation time) or
    ``"training"`` (produces new weights). ``argument`` is what follows the name's first colon."""

    kind: str = "inference"
    #: what the argument means, for `mtlbench defenses list`
    argument_help: str = ""
    default_argument: str = ""

    name: str = ""  # set by @register_defense

    def __init__(self, argument: str = "") -> None:
        self.argument = argument or self.default_argument

    def parse_argument(self, kind: type, name: str, low: float, high: float):
        """The argument as a ``kind`` (int or float) in [low, high]; the canonical argument becomes
        its shortest form (``"4"``, ``"0.15"``). A bad value is a ``ValueError`` naming ``name``."""
        try:
            value = kind(self.argument)
        except ValueError:
            raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, "
                             f"got {self.argument!r}") from None
        if not low <= value <= high:
            raise ValueError(f"{name} must be in [{low:g}, {high:g}], got {self.argument!r}")
        self.argument = f"{value:g}"
        return value

    @property
    def canonical_name(self) -> str:
        """The canonical name, ``name:argument``."""
        return f"{self.name}:{self.argument}" if self.argument else self.name

    @property
    def spec(self) -> str:
        """Deprecated name of :attr:`canonical_name` (plugins written for mtlbench before it)."""
        warnings.warn("Defense.spec is deprecated: use Defense.canonical_name", DeprecationWarning, stacklevel=2)
        return self.canonical_name


def _check_defense(name: str, cls) -> None:
    if not (inspect.isclass(cls) and issubclass(cls, Defense)):
        raise TypeError(f"@register_defense({name!r}) needs a subclass of benchmark.defenses.Defense")


def _name_defense(name: str, cls) -> None:
    cls.name = name


#: every defense class by name (``none``, the undefended model, is not one)
DEFENSES: Registry[type] = Registry("defense", group="mtlbench.defenses", check=_check_defense, forbidden=":",
                                    reserved=["none"], on_register=_name_defense)


def register_defense(name: str):
    """Class decorator registering a defense under ``name``."""
    return DEFENSES.register(name)


def create_defense(text: str) -> Defense:
    """A defense from its name and argument (``"bitdepth:4"``)."""
    if not isinstance(text, str) or not text.strip():
        raise UserError(f"a defense name must be a non-empty string, got {text!r}")
    name, colon, argument = text.strip().partition(":")
    if name not in DEFENSES:
        raise DEFENSES.unknown(name, text, extra=["none"])
    cls = DEFENSES.get(name)
    if colon and not argument.strip():
        default = cls.default_argument
        raise UserError(f"defense {text!r} has nothing after ':'; write {name!r}"
                        + (f" for its default ({name}:{default})" if default else "") + f" or '{name}:ARGUMENT'")
    try:
        return cls(argument)
    except (TypeError, ValueError) as exc:
        raise UserError(f"defense {text!r}: {exc}") from None


def parse_defense(text: str | None) -> Defense | None:
    """``None`` for no defense (``None``, ``""`` or ``"none"``), else the defense."""
    if text is None or text.strip() in ("", "none"):
        return None
    return create_defense(text)


def canonical_defense(text: str | None) -> str | None:
    """``None`` for no defense, else the defense's canonical name (``bitdepth`` -> ``bitdepth:4``)."""
    defense = parse_defense(text)
    return None if defense is None else defense.canonical_name


def list_defenses() -> list[type]:
    """The defense classes, sorted by name."""
    return [cls for _, cls in DEFENSES.items()]
