"""A manifest table's rules live on its dataclass's fields (benchmark.schema): the allowed keys,
types, ranges, choices and defaults come from there, and the suites' tables use nothing else."""

import dataclasses
import re
from typing import List, Optional  # noqa: UP035  (the spellings under test)

import pytest

from benchmark.schema import TableError, check_fields, read_table, setting
from benchmark.suites import MemberTable, Profile, SuiteTable, Training, load_suite


@dataclasses.dataclass(frozen=True)
class Sub:
    depth: int = setting(2, low=1, high=4)


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str = setting()
    steps: int = setting(100, low=1, high=1000)
    lr: float = setting(0.1, low=0, high=1, open_low=True)
    mode: str = setting("fast", choices=("fast", "slow"))
    tags: tuple = setting((), types=list, convert=tuple,
                          check=lambda v: None if all(isinstance(t, str) for t in v) else "expected names")
    sub: dict | None = setting(None, nested=Sub)
    seen: int = setting(0, table=False)


def test_keys_types_ranges_and_defaults_come_from_the_fields():
    r = read_table(Recipe, {"name": "a", "lr": 1, "tags": ["x"], "sub": {"depth": 3}}, "recipe", seen=5)
    assert r == Recipe("a", 100, 1.0, "fast", ("x",), {"depth": 3}, 5)
    assert isinstance(r.lr, float)  # an integer given for a number field
    for table, key, words in (
        ({"name": "a", "colour": 1}, "recipe.colour", "unknown key (allowed: lr, mode, name, steps, sub, tags)"),
        ({"name": "a", "seen": 1}, "recipe.seen", "unknown key"),  # filled in by the code, not a manifest key
        ({}, "recipe.name", "missing"),
        ({"name": "a", "steps": 0}, "recipe.steps", "expected an integer in [1, 1000], got 0"),
        ({"name": "a", "steps": True}, "recipe.steps", "expected an integer, got True"),
        ({"name": "a", "steps": 2.0}, "recipe.steps", "expected an integer, got 2.0"),
        ({"name": "a", "lr": 0}, "recipe.lr", "expected a number in (0, 1], got 0"),
        ({"name": "a", "mode": "medium"}, "recipe.mode", "expected one of fast, slow, got 'medium'"),
        ({"name": "a", "tags": [1]}, "recipe.tags", "expected names"),
        ({"name": "a", "sub": {"depth": 9}}, "recipe.sub.depth", "expected an integer in [1, 4], got 9"),
        ({"name": "a", "sub": 3}, "recipe.sub", "expected a table, got 3"),
        ([1], "recipe", "expected a table, got list"),
    ):
        with pytest.raises(TableError, match=re.escape(f"{key}: {words}")):
            read_table(Recipe, table, "recipe")


def test_a_constructed_instance_is_checked_by_the_same_rules():
    @dataclasses.dataclass
    class Checked:
        steps: int = setting(10, low=1)

        def __post_init__(self):
            check_fields(self, "recipe")

    assert Checked(3).steps == 3
    with pytest.raises(TableError, match=r"recipe\.steps: expected an integer in \[1, inf\], got 0"):
        Checked(0)


def test_the_suite_tables_are_their_dataclasses():
    suite = load_suite("tiny-nyuv2-resnet34")
    assert isinstance(suite.training, Training) and suite.training.init == "pretext"
    assert suite.training.table["steps"] == suite.training.steps  # kept as written: it names the recipe
    assert isinstance(suite.profile("quick"), Profile) and isinstance(suite.profile("quick").eps, tuple)
    for cls in (SuiteTable, MemberTable, Profile, Training):
        assert all("mtlbench.rule" in f.metadata for f in dataclasses.fields(cls)), cls


@dataclasses.dataclass
class _Spelled:
    old: Optional[int] = setting(None, low=1)  # noqa: UP045  (the spelling under test)
    new: int | None = setting(None, low=1)
    listed: List[str] = setting(factory=list)  # noqa: UP006


def test_annotations_are_read_as_types_whatever_their_spelling():
    """``Optional[int]`` is an optional integer, as ``int | None`` is (read as text, it accepted anything)."""
    assert read_table(_Spelled, {"old": 3, "new": 4, "listed": ["a"]}, "t") == _Spelled(3, 4, ["a"])
    assert read_table(_Spelled, {"old": None}, "t").old is None
    for key in ("old", "new"):
        with pytest.raises(TableError, match=rf"t\.{key}: expected an integer, got 'not an int'"):
            read_table(_Spelled, {key: "not an int"}, "t")
    with pytest.raises(TableError, match=r"t\.listed: expected a list, got 3"):
        read_table(_Spelled, {"listed": 3}, "t")
