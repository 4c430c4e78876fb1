"""The one scheduler of local worker processes: the runner's cells and the zoo's builds run on it.

A :class:`WorkerPool` is ``workers`` spawned processes of this machine (each ends with its parent,
sees the parent's ``MTLBENCH_*``/``HF_*`` settings and uses ``threads`` torch threads:
:func:`benchmark.threads.init_worker`). Jobs are submitted with a tag of the caller's; :meth:`wait`
returns the jobs that finished, in the order they finish. A worker that dies (killed, out of
memory, a crash) takes the whole process pool with it: the pool is started again and every job
that was in flight is submitted again, up to ``max_retries`` times; after that it comes back
*lost*, for the caller to record (a failed cell) or report (a member that cannot be built).
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
    arguments), a dead worker replaced and its jobs retried (see the module's docstring).
    ``plugins``: plugin modules each worker imports when it starts."""

    def __init__(self, workers: int, *, threads: int = 1, plugins: list[str] | tuple[str, ...] = (),
                 max_retries: int = 1) -> None:
        self.workers, self.threads, self.max_retries = workers, threads, max_retries
        self.env = worker_env()
        self._plugins = list(plugins)
        self._pool = None
        self._pending: dict = {}  # future -> (tag, fn, args)
        self._tries: dict[Hashable, int] = {}

    def _start(self) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        if self._pool is not None:
            stop_pool(self._pool)
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                                         initializer=init_worker, initargs=(self.threads, self.env, self._plugins))

    def submit(self, tag: Hashable, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn(*args)`` in a worker (the processes start with the first job)."""
        if self._pool is None:
            self._start()
        self._tries[tag] = self._tries.get(tag, 0) + 1
        self._pending[self._pool.submit(fn, *args)] = (tag, fn, args)

    @property
    def started(self) -> bool:
        """Whether the worker processes are running (they start with the first job)."""
        return self._pool is not None

    def __len__(self) -> int:
        """Jobs submitted that have not come back."""
        return len(self._pending)

    def wait(self, timeout: float | None = None) -> list[Finished]:
        """The jobs that finished (at least one, unless ``timeout`` seconds pass first). A job's
        exception is raised here, as the job raised it."""
        from concurrent.futures import FIRST_COMPLETED, wait
        from concurrent.futures.process import BrokenProcessPool

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
        if broken:  # a worker died: every job in flight is lost with the pool; retry them in a new one
            broken += list(self._pending.values())
            self._pending.clear()
            self._start()
            for tag, fn, args in broken:
                if self._tries[tag] > self.max_retries:
                    out.append(Finished(tag, lost=self._tries.pop(tag)))
                else:
                    self.submit(tag, fn, *args)
        return out

    def close(self) -> None:
        """Stop the workers now (queued jobs are cancelled; finished results were returned)."""
        if self._pool is not None:
            stop_pool(self._pool)
            self._pool = None
        self._pending.clear()
        self._tries.clear()
