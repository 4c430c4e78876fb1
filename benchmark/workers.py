"""The one scheduler of local worker processes: the runner's cells and the zoo's builds run on it.

A :class:`WorkerPool` is ``workers`` spawned processes of this machine (each ends with its parent,
sees the parent's ``MTLBENCH_*``/``HF_*`` settings and uses ``threads`` torch threads:
:func:`benchmark.threads.init_worker`). Jobs are submitted with a tag of the caller's; :meth:`wait`
returns the jobs that finished, in the order they finish.

A worker that dies (killed, out of memory, a crash, a plugin's ``os._exit``) takes the whole process
pool with it, and which of the jobs in flight killed it cannot be told. So the pool is started
again and those jobs are *suspects*: each runs again **alone** (no other job beside it; new jobs
wait), so that a death now names its job. Only a job that kills its worker while alone is charged;
it runs again (alone) up to ``max_retries`` times, then comes back *lost*, for the caller to record
(a failed cell) or report (a member that cannot be built). The innocent jobs that were in flight
beside it come back with their results, and the pool goes back to ``workers`` jobs at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from benchmark.threads import init_worker, stop_pool, worker_env

__all__ = ["Finished", "WorkerPool"]


@dataclass
class Finished:
    """A job that came back: its ``result``, or ``lost`` (the number of times its worker died)."""

    tag: Hashable
    result: Any = None
    lost: int = 0


class WorkerPool:
    """``workers`` spawned processes running jobs (module-level functions and picklable
    arguments), a dead worker replaced and its jobs retried, alone, so that only the job that
    kills its worker is charged (see the module's docstring). ``plugins``: plugin modules each
    worker imports when it starts."""

    def __init__(self, workers: int, *, threads: int = 1, plugins: list[str] | tuple[str, ...] = (),
                 max_retries: int = 1) -> None:
        self.workers, self.threads, self.max_retries = workers, threads, max_retries
        self.env = worker_env()
        self._plugins = list(plugins)
        self._pool = None
        self._pending: dict = {}  # future -> (tag, fn, args)
        self._tries: dict[Hashable, int] = {}  # deaths charged to a job (each while it ran alone)
        self._suspects: list[tuple] = []  # (tag, fn, args) in flight when a worker died: each runs alone
        self._held: list[tuple] = []  # jobs submitted while the suspects run
        self._alone = False  # the one job in flight is a suspect running alone

    def _start(self) -> None:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is not None:
            stop_pool(self._pool)
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=init_worker,
                                         initargs=(self.threads, self.env, self._plugins, os.getpid()))

    def submit(self, tag: Hashable, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in a worker (the processes start with the first job); while jobs
        suspected of killing a worker run alone, it waits its turn."""
        if self._suspects or self._alone:
            self._held.append((tag, fn, args))
        else:
            self._run(tag, fn, args)

    def _run(self, tag: Hashable, fn: Callable[..., Any], args: tuple) -> None:
        if self._pool is None:
            self._start()
        self._pending[self._pool.submit(fn, *args)] = (tag, fn, args)

    @property
    def started(self) -> bool:
        """Whether the worker processes are running (they start with the first job)."""
        return self._pool is not None

    def __len__(self) -> int:
        """Jobs submitted that have not come back (running, suspected or waiting their turn)."""
        return len(self._pending) + len(self._suspects) + len(self._held)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        """The jobs that finished (at least one, unless ``timeout`` seconds pass first). A job's
        exception is raised here, as the job raised it."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

        self._dispatch()
        done, _ = wait(self._pending, timeout=timeout, return_when=FIRST_COMPLETED)
        out, broken = [], []
        for future in done:
            tag, fn, args = self._pending.pop(future)
            try:
                result = future.result()
            except BrokenProcessPool:
                broken.append((tag, fn, args))
                continue
            self._tries.pop(tag, None)
            out.append(Finished(tag, result))
        if broken:  # a worker died and took the pool with it
            broken += list(self._pending.values())
            self._pending.clear()
            self._start()
            if len(broken) == 1:  # it ran alone: this job killed its worker
                ((tag, fn, args),) = broken
                self._tries[tag] = self._tries.get(tag, 0) + 1
                if self._tries[tag] > self.max_retries:
                    out.append(Finished(tag, lost=self._tries.pop(tag)))
                else:
                    self._suspects.insert(0, (tag, fn, args))
            else:  # which one did cannot be told: each runs again alone
                self._suspects = broken + self._suspects
        if not self._pending:
            self._alone = False
        self._dispatch()
        return out

    def _dispatch(self) -> None:
        """Start what may run now: the next suspect alone, else the jobs that waited their turn."""
        if self._pending:
            return
        if self._suspects:
            tag, fn, args = self._suspects.pop(0)
            self._run(tag, fn, args)
            self._alone = True
            return
        held, self._held = self._held, []
        for tag, fn, args in held:
            self._run(tag, fn, args)

    def close(self) -> None:
        """Stop the workers now (queued jobs are cancelled; finished results were returned)."""
        if self._pool is not None:
            stop_pool(self._pool)
            self._pool = None
        self._pending.clear()
        self._tries.clear()
        self._suspects.clear()
        self._held.clear()
        self._alone = False
