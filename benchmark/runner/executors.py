"""Executors: where cells run. Both call :func:`~benchmark.runner.cells.evaluate_cell`, and the
driver process is the only writer of the results store. An executor takes cells (and the driver's
context of their target, for its clean metrics); everything a worker needs to rebuild the model
and the data is in the cell itself.

* :class:`LocalExecutor` (default): in this process, one target at a time, its evaluation batches
  kept on the device.
* :class:`ProcessExecutor` (default on a CPU with several usable cores, ``--workers N``): the
  cells of a target spread over N spawned processes of this machine, one torch thread each (on 2
  cores, 30 PGD cells of the tiny AS took 21.9 s in 2 processes of 1 thread, 31.0 s in 1 process
  of 2 threads, 37.9 s in 1 of 1). The cells of consecutive targets share one queue
  (:meth:`Executor.run_groups`): a worker that finishes a target's last cell starts on the next
  target's. It runs on :class:`benchmark.workers.WorkerPool`, the scheduler the zoo's builds use:
  a worker that dies is replaced and its cells are retried once.
* :class:`RayExecutor` (``--executor ray``): each cell is a Ray task with ``gpus_per_cell`` GPUs
  (a fraction shares one GPU) on a cluster (``--address``, or a local one). A worker keeps the
  last target it loaded; a worker that dies is replaced and its cells are retried.
"""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Iterator

import torch

from benchmark.enums import Status
from benchmark.errors import UserError
from benchmark.registry import imported_plugin_modules, load_plugin_modules
from benchmark.runner.cells import Cell, evaluate_cell
from benchmark.runner.context import CellContext, prepare_context
from benchmark.runner.store import CellResult
from benchmark.threads import worker_env
from benchmark.workers import WorkerPool

__all__ = ["Executor", "LocalExecutor", "ProcessExecutor", "RayExecutor"]


Group = tuple[Hashable, list[Cell], CellContext]  # (the caller's key, cells of one target, its context)


class Executor(ABC):
    """Runs cells that share one target; yields their results in any order."""

    @abstractmethod
    def run(self, cells: list[Cell], ctx: CellContext) -> Iterator[CellResult]:
        """Evaluate ``cells`` (all of ``ctx``'s target)."""

    def run_groups(self, groups: Iterable[Group]) -> Iterator[tuple[Hashable, CellResult]]:
        """Evaluate groups of cells, one target each, pulled from ``groups`` as the executor is
        ready for them (the caller may prepare a group's context when it is asked for it); yields
        ``(key, result)``. By default one group after the other."""
        for key, cells, ctx in groups:
            for result in self.run(cells, ctx):
                yield key, result

    def close(self) -> None:  # noqa: B027 - most executors hold nothing to release
        """Release the executor's workers (the run is over)."""


class LocalExecutor(Executor):
    def run(self, cells: list[Cell], ctx: CellContext) -> Iterator[CellResult]:
        for cell in cells:
            yield evaluate_cell(cell, ctx)


@functools.lru_cache(maxsize=1)
def _worker_context(data_key: tuple, device: str, env: tuple) -> CellContext:
    return prepare_context(*data_key, device=torch.device(device), clean={})


def _worker_cell(cell: Cell, device: str, clean: dict, git_commit: str, env: dict[str, str]) -> CellResult:
    """A cell in a worker, on the worker's context of its target (kept while the target is the same)."""
    ctx = _worker_context(cell.data_key, device, tuple(sorted(env.items())))
    # the driver's clean metrics, so every executor scores against the same numbers
    ctx.clean, ctx.git_commit = clean, git_commit
    return evaluate_cell(cell, ctx)


def _ray_cell(cell: Cell, device: str, clean: dict, git_commit: str, threads: int,
              env: dict[str, str], plugins: list[str]) -> CellResult:
    # a worker of a cluster started elsewhere has its own environment: the driver's settings win,
    # so that it loads the same weights (a different copy would be stored under another revision)
    os.environ.update(env)
    torch.set_num_threads(threads)
    load_plugin_modules(plugins)
    return _worker_cell(cell, device, clean, git_commit, env)


def _pool_cell(cell: Cell, device: str, clean: dict, git_commit: str, env: dict[str, str],
               plugins: list[str]) -> CellResult:
    from benchmark.attacks.sandbox import watch_user_interrupts

    load_plugin_modules(plugins)  # the driver's plugin modules travel with each cell (imported once)
    with watch_user_interrupts():  # an attack's KeyboardInterrupt is its cell's failure, not a Ctrl-C
        return _worker_cell(cell, device, clean, git_commit, env)


class ProcessExecutor(Executor):
    """Cells in ``workers`` spawned processes of this machine, ``threads`` torch threads each (the
    :class:`~benchmark.workers.WorkerPool` the zoo's builds run on too)."""

    def __init__(self, workers: int, *, device: str = "cpu", threads: int = 1, max_retries: int = 1) -> None:
        self.workers, self.device = workers, device
        self._pool = WorkerPool(workers, threads=threads, max_retries=max_retries)

    def run(self, cells: list[Cell], ctx: CellContext) -> Iterator[CellResult]:
        for _, result in self.run_groups([(None, cells, ctx)]):
            yield result

    def run_groups(self, groups: Iterable[Group]) -> Iterator[tuple[Hashable, CellResult]]:
        """The cells of every group through one queue: the next group is asked for (and its
        context prepared by the caller) while the workers still run the cells of the previous
        ones, so no worker waits at the end of a target for the other's last cell."""
        groups = iter(groups)
        contexts: dict[tuple[Hashable, Cell], CellContext] = {}
        exhausted = False
        while True:
            # keep every worker busy and two more cells each queued: ask for the next group then
            while not exhausted and len(self._pool) < 3 * self.workers:
                try:
                    key, cells, ctx = next(groups)
                except StopIteration:
                    exhausted = True
                    break
                if not self._pool.started and len(cells) < 2:  # not worth a process: the same code path here
                    for result in LocalExecutor().run(cells, ctx):
                        yield key, result
                    continue
                for cell in cells:
                    contexts[key, cell] = ctx
                    self._pool.submit((key, cell), _pool_cell, cell, self.device, ctx.clean, ctx.git_commit,
                                      self._pool.env, imported_plugin_modules())
            if not len(self._pool):
                return
            for done in self._pool.wait():
                key, cell = done.tag
                ctx = contexts.pop(done.tag)
                if done.lost:
                    yield key, cell.new_result(ctx, Status.FAILED, f"the worker process running it died {done.lost} "
                                                                   "times (killed, out of memory, or a crash)")
                else:
                    yield key, done.result

    def close(self) -> None:
        self._pool.close()


class RayExecutor(Executor):
    def __init__(self, *, device: str = "cpu", address: str | None = None, gpus_per_cell: float = 1.0,
                 max_retries: int = 3, threads: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'ray[default]>=2.9' (in a checkout of mtlbench: "
                            "pip install -e '.[ray]')") from None
        self.ray = ray
        if not ray.is_initialized():
            env = {k: v for k, v in os.environ.items() if k.startswith(("MTLBENCH_", "HF_"))}
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     runtime_env={"env_vars": env} if env else None)
        self.device = "cuda" if str(device).startswith("cuda") else "cpu"
        self.gpus_per_cell = gpus_per_cell
        self.max_retries = max_retries
        self.threads = threads  # per task: each holds the CPUs it asked Ray for, never every core

    def run(self, cells: list[Cell], ctx: CellContext) -> Iterator[CellResult]:
        ray = self.ray
        remote = ray.remote(_ray_cell).options(
            num_cpus=self.threads, num_gpus=self.gpus_per_cell if self.device == "cuda" else 0,
            max_retries=self.max_retries, retry_exceptions=False)
        env, plugins = worker_env(), imported_plugin_modules()
        pending = {remote.remote(cell, self.device, ctx.clean, ctx.git_commit, self.threads, env, plugins): cell
                   for cell in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as exc:
                    # the task died more often than it may be retried: a failed cell, the run goes on
                    yield cell.new_result(ctx, Status.FAILED, f"Ray task lost after {self.max_retries} retries: "
                                                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
