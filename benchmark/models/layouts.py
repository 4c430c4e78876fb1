"""TreeMTL layout notation for branched multi-task models.

A layout has one entry per branch block; each entry is a partition of the task ids into
task sets, and every task set shares one copy of that block::

    [[{0,1,2}], [{0,1,2}], [{0},{1,2}], [{0},{1,2}], [{0},{1},{2}]]

Reading down the blocks a task set may split but never merge again, so the layout is a tree.
``AS`` (all shared) and ``IND`` (independent) are the two extremes.

A model's *paper index* is its position in TreeMTL's design-space enumeration
(:func:`enumerate_layouts`): starting from the all-shared layout, recursively apply every
two-way cut of a task set from the lowest available block onwards, keeping a layout the first
time it appears.
"""

from __future__ import annotations

import functools
import itertools
import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from benchmark.errors import UserError

__all__ = [
    "Layout",
    "LayoutError",
    "count_layouts",
    "enumerate_layouts",
    "layout_from_index",
    "layout_index",
    "treemtl_set_order",
]


class LayoutError(UserError, ValueError):
    """A layout string or structure is malformed; the message names the problem."""


TaskSet = frozenset[int]


def _sort_key(task_set: TaskSet) -> tuple[int, ...]:
    return tuple(sorted(task_set))


@dataclass(frozen=True)
class Layout:
    """An immutable, validated layout. Task sets in a block are kept sorted by their smallest task,
    so two layouts are equal exactly when every block holds the same task sets."""

    blocks: tuple[tuple[TaskSet, ...], ...]

    # ------------------------------------------------------------------ construction
    def __post_init__(self) -> None:
        blocks = tuple(tuple(sorted((frozenset(s) for s in b), key=_sort_key)) for b in self.blocks)
        object.__setattr__(self, "blocks", blocks)
        self._validate()

    @classmethod
    def from_sets(cls, blocks: Iterable[Iterable[Iterable[int]]]) -> Layout:
        """Build from nested lists, e.g. ``[[[0, 1, 2]], [[0], [1, 2]], ...]`` (the JSON form)."""
        try:
            return cls(tuple(tuple(frozenset(int(t) for t in s) for s in b) for b in blocks))
        except TypeError as exc:
            raise LayoutError(f"a layout is a list of blocks, each a list of task sets: {exc}") from None

    @classmethod
    def all_shared(cls, num_tasks: int, num_blocks: int = 5) -> Layout:
        return cls(tuple((frozenset(range(num_tasks)),) for _ in range(num_blocks)))

    @classmethod
    def independent(cls, num_tasks: int, num_blocks: int = 5) -> Layout:
        return cls(tuple(tuple(frozenset([t]) for t in range(num_tasks)) for _ in range(num_blocks)))

    @classmethod
    def parse(cls, text: str, *, num_tasks: int | None = None, num_blocks: int | None = None) -> Layout:
        """Parse ``IND``, ``AS``, the TreeMTL notation ``[[{0,1,2}], [{0},{1,2}], ...]`` or its
        JSON form ``[[[0,1,2]], [[0],[1,2]], ...]``. ``num_tasks``/``num_blocks`` are required for
        ``IND``/``AS`` and, when given, checked for the other forms."""
        s = text.strip()
        if s.upper() in ("IND", "AS"):
            if num_tasks is None:
                raise LayoutError(f"layout {s!r} needs the number of tasks")
            nb = 5 if num_blocks is None else num_blocks
            return cls.independent(num_tasks, nb) if s.upper() == "IND" else cls.all_shared(num_tasks, nb)
        if not re.fullmatch(r"[\[\]{}\d,\s]+", s):
            bad = sorted(set(re.sub(r"[\[\]{}\d,\s]", "", s)))
            raise LayoutError(f"layout {text!r} has unexpected characters {''.join(bad)!r}; expected e.g. "
                              "'[[{0,1,2}], [{0},{1,2}], ...]', 'IND' or 'AS'")
        shown = s if len(s) <= 120 else s[:117] + "..."
        depth = deepest = 0
        for ch in s:
            depth += (ch in "[{") - (ch in "]}")
            deepest = max(deepest, depth)
        if deepest > 3:
            raise LayoutError(f"layout {shown!r} is nested {deepest} deep; a layout is a list of blocks, each a list "
                              "of task sets of task ids (3 levels: '[[{0,1,2}], [{0},{1,2}], ...]')")
        try:
            data = json.loads(s.replace("{", "[").replace("}", "]"))
        except json.JSONDecodeError as exc:
            raise LayoutError(f"layout {shown!r} is not well formed ({exc.msg} at character {exc.pos})") from None
        if not isinstance(data, list) or not all(isinstance(b, list) for b in data) or not all(
            isinstance(ts, list) and all(isinstance(t, int) for t in ts) for b in data for ts in b
        ):
            raise LayoutError(f"layout {text!r} must be a list of blocks, each a list of task sets of task ids")
        layout = cls.from_sets(data)
        layout.check(num_tasks=num_tasks, num_blocks=num_blocks)
        return layout

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        if not self.blocks:
            raise LayoutError("a layout needs at least one block")
        tasks = set().union(*self.blocks[0]) if self.blocks[0] else set()
        if not tasks:
            raise LayoutError("block 0 has no task sets")
        if tasks != set(range(len(tasks))):
            raise LayoutError(f"task ids must be 0..{len(tasks) - 1}, block 0 has {sorted(tasks)}")
        for i, block in enumerate(self.blocks):
            seen: dict[int, TaskSet] = {}
            for task_set in block:
                if not task_set:
                    raise LayoutError(f"block {i} has an empty task set")
                for t in task_set:
                    if t in seen:
                        raise LayoutError(f"task {t} is in two task sets of block {i}: "
                                          f"{_fmt_set(seen[t])} and {_fmt_set(task_set)}")
                    seen[t] = task_set
            extra = seen.keys() - tasks
            if extra:
                raise LayoutError(f"block {i} has task {sorted(extra)[0]}, which block 0 does not have")
            missing = tasks - seen.keys()
            if missing:
                raise LayoutError(f"task {sorted(missing)[0]} is missing in block {i}")
            if i:
                for task_set in block:
                    if not any(task_set <= parent for parent in self.blocks[i - 1]):
                        raise LayoutError(f"task set {_fmt_set(task_set)} of block {i} merges tasks that "
                                          f"were split in block {i - 1}; a split may not merge again later")

    def check(self, *, num_tasks: int | None = None, num_blocks: int | None = None) -> Layout:
        """Raise :class:`LayoutError` if the layout does not have this many tasks/blocks."""
        if num_blocks is not None and self.num_blocks != num_blocks:
            raise LayoutError(f"layout {self} has {self.num_blocks} blocks, expected {num_blocks}")
        if num_tasks is not None and self.num_tasks != num_tasks:
            raise LayoutError(f"layout {self} has {self.num_tasks} tasks, expected {num_tasks}")
        return self

    # ------------------------------------------------------------------ properties
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_tasks(self) -> int:
        return sum(len(s) for s in self.blocks[0])

    @property
    def is_all_shared(self) -> bool:
        return all(len(b) == 1 for b in self.blocks)

    @property
    def is_independent(self) -> bool:
        return all(len(b) == self.num_tasks for b in self.blocks)

    @property
    def name(self) -> str:
        """``AS``, ``IND`` or the TreeMTL string."""
        if self.is_all_shared:
            return "AS"
        if self.is_independent and self.num_tasks > 1:
            return "IND"
        return str(self)

    def task_set(self, block: int, task: int) -> TaskSet:
        """The task set of ``block`` that contains ``task``."""
        for s in self.blocks[block]:
            if task in s:
                return s
        raise KeyError(task)

    def parent(self, block: int, task_set: TaskSet) -> TaskSet | None:
        """The task set in ``block - 1`` that ``task_set`` branches from (None for block 0)."""
        if block == 0:
            return None
        return self.task_set(block - 1, min(task_set))

    def branch_block(self, t1: int, t2: int) -> int:
        """First block in which tasks ``t1`` and ``t2`` use different copies (``num_blocks`` if
        they share every block)."""
        for i in range(self.num_blocks):
            if t2 not in self.task_set(i, t1):
                return i
        return self.num_blocks

    @property
    def shared_blocks(self) -> int:
        """Number of leading blocks shared by all tasks (5 = AS, 0 = no block shared by all)."""
        return sum(1 for _ in itertools.takewhile(lambda b: len(b) == 1, self.blocks))

    @property
    def num_block_copies(self) -> int:
        return sum(len(b) for b in self.blocks)

    def to_json(self) -> list[list[list[int]]]:
        return [[sorted(s) for s in b] for b in self.blocks]

    def __str__(self) -> str:
        return "[" + ", ".join("[" + ",".join(_fmt_set(s) for s in b) + "]" for b in self.blocks) + "]"

    def __repr__(self) -> str:
        return f"Layout({self})"


def _fmt_set(task_set: Iterable[int]) -> str:
    return "{" + ",".join(str(t) for t in sorted(task_set)) + "}"


# ---------------------------------------------------------------------- enumeration
def _two_way_splits(task_set: Sequence[int]) -> list[tuple[frozenset[int], frozenset[int]]]:
    """All splits of a task set into two non-empty parts, in TreeMTL's order: the elements are
    taken in ascending order, the first one always stays in the second part, and the membership
    patterns of the others run True-before-False in lexicographic order."""
    rest = task_set[1:]
    splits = []
    for pattern in itertools.product((True, False), repeat=len(rest)):
        if not any(pattern):
            continue
        moved = frozenset(t for t, keep in zip(rest, pattern, strict=True) if keep)
        splits.append((moved, frozenset(task_set) - moved))
    return splits


def _canonical(state: list[list[frozenset[int]]]) -> tuple[tuple[tuple[int, ...], ...], ...]:
    return tuple(tuple(sorted(_sort_key(s) for s in b)) for b in state)


@functools.lru_cache(maxsize=16)
def _enumerate(num_tasks: int, num_blocks: int) -> tuple[Layout, ...]:
    return tuple(Layout(tuple(tuple(b) for b in s)) for s in _enumerate_states(num_tasks, num_blocks))


@functools.lru_cache(maxsize=16)
def _enumerate_states(num_tasks: int, num_blocks: int) -> tuple[tuple[tuple[frozenset[int], ...], ...], ...]:
    """The enumeration with each block's task sets in TreeMTL's own list order (a cut removes the
    set and appends its two parts), which fixes the order of block copies in its checkpoints."""
    root = [[frozenset(range(num_tasks))] for _ in range(num_blocks)]
    ordered: list[list[list[frozenset[int]]]] = [root]
    seen = {_canonical(root)}

    def recurse(state: list[list[frozenset[int]]], cuts: int, lowest: int) -> None:
        if cuts >= num_tasks - 1:
            return
        for i in range(lowest, num_blocks):
            for task_set in list(state[i]):
                if len(task_set) == 1:
                    continue
                for moved, kept in _two_way_splits(sorted(task_set)):
                    new = [list(b) for b in state]
                    for j in range(i, num_blocks):
                        new[j].remove(task_set)
                        new[j] += [moved, kept]
                    key = _canonical(new)
                    if key in seen:
                        continue
                    seen.add(key)
                    ordered.append(new)
                    recurse(new, cuts + 1, i)

    recurse(root, 0, 0)
    return tuple(tuple(tuple(b) for b in s) for s in ordered)


@functools.lru_cache(maxsize=256)
def count_layouts(num_tasks: int, num_blocks: int = 5) -> int:
    """How many layouts :func:`enumerate_layouts` gives, computed without enumerating them.

    A layout is a chain of set partitions of the tasks, each block's refining the previous one's.
    With g(b, n) the number of such chains over b blocks that start from one set of n tasks,
    g(1, n) = 1 and g(b, n) = sum over the partitions of the n tasks of the product of
    g(b - 1, |part|) (the exponential formula); a layout is a chain under a virtual all-shared
    block, so there are g(B + 1, T) of them (51 for 3 tasks over 5 blocks)."""
    if num_tasks < 1 or num_blocks < 1:
        raise LayoutError(f"need at least one task and one block, got {num_tasks} tasks, {num_blocks} blocks")

    @functools.cache
    def chains(blocks: int, n: int) -> int:
        if blocks == 1 or n <= 1:
            return 1
        total = [1] + [0] * n  # total[m]: partitions of m tasks weighted by chains(blocks - 1, part sizes)
        for m in range(1, n + 1):
            total[m] = sum(math.comb(m - 1, k - 1) * chains(blocks - 1, k) * total[m - k] for k in range(1, m + 1))
        return total[n]

    return chains(num_blocks + 1, num_tasks)


def enumerate_layouts(num_tasks: int, num_blocks: int = 5) -> list[Layout]:
    """Every layout of ``num_tasks`` tasks over ``num_blocks`` blocks, in TreeMTL's
    ``enumerator(T, B)`` order: index 0 is all-shared (51 layouts for 3 tasks, 7556 for 5)."""
    if num_tasks < 1 or num_blocks < 1:
        raise LayoutError(f"need at least one task and one block, got {num_tasks} tasks, {num_blocks} blocks")
    return list(_enumerate(num_tasks, num_blocks))


@functools.lru_cache(maxsize=16)
def _index_map(num_tasks: int, num_blocks: int) -> dict[Layout, int]:
    return {layout: i for i, layout in enumerate(_enumerate(num_tasks, num_blocks))}


def layout_index(layout: Layout) -> int:
    """The paper index of ``layout`` (its position in :func:`enumerate_layouts`)."""
    return _index_map(layout.num_tasks, layout.num_blocks)[layout]


def treemtl_set_order(layout: Layout) -> list[list[frozenset[int]]]:
    """The task sets of each block in the order TreeMTL's code holds them (its ``Layout.state``)."""
    state = _enumerate_states(layout.num_tasks, layout.num_blocks)[layout_index(layout)]
    return [list(b) for b in state]


def layout_from_index(index: int, num_tasks: int, num_blocks: int = 5) -> Layout:
    layouts = _enumerate(num_tasks, num_blocks)
    if not 0 <= index < len(layouts):
        raise LayoutError(f"layout index {index} is out of range: {num_tasks} tasks over {num_blocks} "
                          f"blocks have {len(layouts)} layouts (0..{len(layouts) - 1})")
    return layouts[index]
