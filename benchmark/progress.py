"""What long commands print: the console, and progress (a live bar on a terminal, plain lines
elsewhere).

Under CI, ``nohup`` or ``tox -e demo > log`` a live bar prints nothing until it ends, so a build
or a run looks hung. :func:`progress` returns rich's bar when the console is a terminal and
otherwise a :class:`PlainProgress` with the same methods (``add_task``, ``update``,
``remove_task``, ``console``), which prints one line per finished task and, while a task runs, a
line every ``every_s`` seconds with its count, the elapsed time and an estimate of what is left.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

__all__ = ["PlainProgress", "make_console", "progress"]


def make_console(*, stderr: bool = False, **console_args: Any) -> Console:
    """The console every command prints on. Markup is off: names, paths and messages a user
    wrote are printed literally (``[/x]`` or ``[bold red]x`` in a model name is text, never a
    style or a MarkupError); our own styling is passed as :class:`rich.text.Text` spans."""
    console = Console(stderr=stderr, markup=False, highlight=False, **console_args)
    if "width" not in console_args and not console.is_terminal and not os.environ.get("COLUMNS"):
        # off a terminal (a log, a pipe, CI) rich would squeeze tables into 80 columns, a word per line:
        # a log has room for wide lines
        console.width = NOT_A_TERMINAL_WIDTH
    return console


#: the width of a console whose output is not a terminal (``COLUMNS`` sets another)
NOT_A_TERMINAL_WIDTH = 200


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class _Task:
    description: str
    total: float | None
    fields: dict[str, Any]
    completed: float = 0.0
    start: float = field(default_factory=time.perf_counter)
    last_print: float = field(default_factory=time.perf_counter)
    finished: bool = False
    #: the count and time of the first update: a resumed task's rate counts only what it did here
    base: float | None = None
    base_time: float = 0.0


class PlainProgress:
    """Plain progress lines for a console that is not a terminal (``loss`` is shown when a task
    has that field)."""

    def __init__(self, console: Console, *, every_s: float = 10.0) -> None:
        import threading

        self.console = console
        self.every_s = every_s
        self._tasks: dict[int, _Task] = {}
        self._lock = threading.RLock()  # a ticker thread may update while the run does

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        task_id = len(self._tasks)
        self._tasks[task_id] = _Task(description.strip(), total, dict(fields))
        return task_id

    def remove_task(self, task_id: int) -> None:
        self._tasks.pop(task_id, None)

    def update(self, task_id: int, *, completed: float | None = None, advance: float | None = None,
               **fields: Any) -> None:
        with self._lock:
            self._update(task_id, completed=completed, advance=advance, **fields)

    def _update(self, task_id: int, *, completed: float | None = None, advance: float | None = None,
                **fields: Any) -> None:
        task = self._tasks.get(task_id)
        if task is None:
            return
        now = time.perf_counter()
        first = task.base is None
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        if first:  # a first count above one step is work done before (a resumed training, cells stored before)
            task.base, task.base_time = (task.completed, now) if task.completed > 1 else (0.0, task.start)
        task.fields.update(fields)
        done = task.total is not None and task.completed >= task.total
        if done and not task.finished:
            task.finished = True
            self._line(task, now, finished=True)
        elif not done and now - task.last_print >= self.every_s:
            self._line(task, now, finished=False)

    def _line(self, task: _Task, now: float, *, finished: bool) -> None:
        task.last_print = now
        elapsed = now - task.start
        count = f"{task.completed:g}" + (f"/{task.total:g}" if task.total is not None else "")
        parts = [f"{task.description}: {count}", f"elapsed {_clock(elapsed)}"]
        done_here = task.completed - (task.base or 0.0)
        if not finished and task.total and done_here > 0:
            rate = (now - task.base_time) / done_here
            parts.append(f"ETA {_clock(rate * (task.total - task.completed))}")
        loss = task.fields.get("loss")
        if isinstance(loss, float) and loss == loss:
            parts.append(f"loss {loss:.3f}")
        if finished:
            parts.append("done")
        self.console.print(", ".join(parts), markup=False, highlight=False, soft_wrap=True)


#: seconds between two plain progress lines of a running task (off a terminal)
PLAIN_EVERY_S = 10.0


def progress(console: Console, *, loss: bool = False, eta: bool = True, every_s: float | None = None):
    """A progress display for ``console``: rich's live bar on a terminal, else plain lines (one
    every ``every_s`` seconds, default :data:`PLAIN_EVERY_S`)."""
    if not console.is_terminal:
        return PlainProgress(console, every_s=PLAIN_EVERY_S if every_s is None else every_s)
    columns = [TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn()]
    if loss:
        columns.append(TextColumn("loss {task.fields[loss]:.3f}"))
    columns.append(TimeElapsedColumn())
    if eta:
        columns += [TextColumn("ETA"), TimeRemainingColumn()]
    return Progress(*columns, console=console, transient=False)
