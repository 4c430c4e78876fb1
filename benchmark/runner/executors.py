"""Executors: where cells run. Each calls :func:`~benchmark.runner.batching.evaluate_unit` on a
unit of work (a cell, or a :class:`~benchmark.runner.batching.CellBatch` of cells attacked in one
batch), and the driver process is the only writer of the results store. An executor takes units
(and the driver's context of their target, for its clean metrics); everything a worker needs to
rebuild the model and the data is in the cells themselves.

* :class:`LocalExecutor` (default): in this process, one target at a time, its evaluation batches
  kept on the device.
* :class:`ProcessExecutor` (default on a CPU with several usable cores, ``--workers N``): the
  cells of a target spread over N spawned processes of this machine, one torch thread each (on 2
  cores, 30 PGD cells of the tiny AS took 21.9 s in 2 processes of 1 thread, 31.0 s in 1 process
  of 2 threads, 37.9 s in 1 of 1). The cells of consecutive targets share one queue
  (:meth:`Executor.run_groups`): a worker that finishes a target's last cell starts on the next
  target's. It runs on :class:`benchmark.workers.WorkerPool`, the scheduler the zoo's builds use:
  a worker that dies is replaced and its cells are retried once.
* :class:`RayExecutor` (``--executor ray``): long-lived workers (Ray actors) on a cluster
  (``--address``, or a local one), one per GPU by default (``gpus_per_worker``; a fraction puts
  several on a card); the cells of one target go to one worker, which keeps the model resident;
  a worker that dies is restarted and its cells are retried.
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
from benchmark.runner.batching import Unit, evaluate_unit
from benchmark.runner.cells import Cell
from benchmark.runner.context import CellContext, prepare_context
from benchmark.runner.store import CellResult
from benchmark.threads import worker_env
from benchmark.workers import WorkerPool

__all__ = ["Executor", "LocalExecutor", "ProcessExecutor", "RayExecutor"]


Group = tuple[Hashable, list[Unit], CellContext]  # (the caller's key, units of one target, its context)


def _cells(unit: Unit) -> tuple[Cell, ...]:
    return (unit,) if isinstance(unit, Cell) else unit.cells


class Executor(ABC):
    """Runs cells that share one target; yields their results in any order."""

    @abstractmethod
    def run(self, units: list[Unit], ctx: CellContext) -> Iterator[CellResult]:
        """Evaluate ``units`` (cells or batches of cells, all of ``ctx``'s target)."""

    def run_groups(self, groups: Iterable[Group]) -> Iterator[tuple[Hashable, CellResult]]:
        """Evaluate groups of cells, one target each, pulled from ``groups`` as the executor is
        ready for them (the caller may prepare a group's context when it is asked for it); yields
        ``(key, result)``. By default one group after the other."""
        for key, units, ctx in groups:
            for result in self.run(units, ctx):
                yield key, result

    def close(self) -> None:  # noqa: B027 - most executors hold nothing to release
        """Release the executor's workers (the run is over)."""


class LocalExecutor(Executor):
    def run(self, units: list[Unit], ctx: CellContext) -> Iterator[CellResult]:
        for unit in units:
            yield from evaluate_unit(unit, ctx)


@functools.lru_cache(maxsize=1)
def _worker_context(data_key: tuple, device: str, env: tuple) -> CellContext:
    return prepare_context(*data_key, device=torch.device(device), clean={})


def _worker_unit(unit: Unit, device: str, clean: dict, git_commit: str, env: dict[str, str]) -> list[CellResult]:
    """A unit of work in a worker, on the worker's context of its target (kept while the target is
    the same)."""
    ctx = _worker_context(unit.data_key, device, tuple(sorted(env.items())))
    # the driver's clean metrics, so every executor scores against the same numbers
    ctx.clean, ctx.git_commit = clean, git_commit
    return evaluate_unit(unit, ctx)


def _pool_unit(unit: Unit, device: str, clean: dict, git_commit: str, env: dict[str, str],
               plugins: list[str]) -> list[CellResult]:
    from benchmark.attacks.sandbox import watch_user_interrupts

    load_plugin_modules(plugins)  # the driver's plugin modules travel with each unit (imported once)
    with watch_user_interrupts():  # an attack's KeyboardInterrupt is its cell's failure, not a Ctrl-C
        return _worker_unit(unit, device, clean, git_commit, env)


class ProcessExecutor(Executor):
    """Cells in ``workers`` spawned processes of this machine, ``threads`` torch threads each (the
    :class:`~benchmark.workers.WorkerPool` the zoo's builds run on too)."""

    def __init__(self, workers: int, *, device: str = "cpu", threads: int = 1, max_retries: int = 1) -> None:
        self.workers, self.device = workers, device
        self._pool = WorkerPool(workers, threads=threads, max_retries=max_retries)

    def run(self, units: list[Unit], ctx: CellContext) -> Iterator[CellResult]:
        for _, result in self.run_groups([(None, units, ctx)]):
            yield result

    def run_groups(self, groups: Iterable[Group]) -> Iterator[tuple[Hashable, CellResult]]:
        """The units of every group through one queue: the next group is asked for (and its
        context prepared by the caller) while the workers still run the cells of the previous
        ones, so no worker waits at the end of a target for the other's last cell."""
        groups = iter(groups)
        contexts: dict[tuple[Hashable, Unit], CellContext] = {}
        exhausted = False
        while True:
            # keep every worker busy and two more cells each queued: ask for the next group then
            while not exhausted and len(self._pool) < 3 * self.workers:
                try:
                    key, units, ctx = next(groups)
                except StopIteration:
                    exhausted = True
                    break
                if not self._pool.started and len(units) < 2:  # not worth a process: the same code path here
                    for result in LocalExecutor().run(units, ctx):
                        yield key, result
                    continue
                for unit in units:
                    contexts[key, unit] = ctx
                    self._pool.submit((key, unit), _pool_unit, unit, self.device, ctx.clean, ctx.git_commit,
                                      self._pool.env, imported_plugin_modules())
            if not len(self._pool):
                return
            for done in self._pool.wait():
                key, unit = done.tag
                ctx = contexts.pop(done.tag)
                if done.lost:
                    for cell in _cells(unit):
                        yield key, cell.new_result(ctx, Status.FAILED, f"the worker process running it died "
                                                                       f"{done.lost} times (killed, out of memory, "
                                                                       "or a crash)")
                else:
                    for result in done.result:
                        yield key, result

    def close(self) -> None:
        self._pool.close()


class _RayWorker:
    """A Ray actor: one process holding its share of a device (``num_gpus``), the last target it
    loaded kept resident (:func:`_worker_context`), cells evaluated one after the other."""

    def __init__(self, threads: int, env: dict[str, str], plugins: list[str]) -> None:
        # a worker of a cluster started elsewhere has its own environment: the driver's settings
        # win, so that it loads the same weights (a different copy is stored under another revision)
        os.environ.update(env)
        torch.set_num_threads(threads)
        load_plugin_modules(plugins)
        self.env = env

    def where(self) -> dict:
        import ray

        return {"pid": os.getpid(), "gpus": [str(g) for g in ray.get_gpu_ids()]}

    def evaluate(self, unit: Unit, device: str, clean: dict, git_commit: str) -> list[CellResult]:
        return _worker_unit(unit, device, clean, git_commit, self.env)


class RayExecutor(Executor):
    """Cells on a Ray cluster (``--address``, or a local one), in long-lived workers (Ray actors):
    on a GPU one worker per ``gpus_per_worker`` GPUs (one by default; a fraction puts several on a
    card), on CPUs one per ``threads`` CPUs; at most ``workers`` of them. The cells of one target
    go to one worker, which keeps that model resident on its device and evaluates them in turn: a
    model is loaded (and a CUDA context made) once per worker, not once per cell. A worker is given
    the next target when it has fewer than :data:`AHEAD` cells left; when every target is handed
    out, a worker with nothing left takes the later half of the longest queue. A worker that dies is
    restarted and its cells retried (``max_retries``); past that they are stored failed."""

    #: cells a worker holds in flight (the next starts while a result travels back)
    AHEAD = 2

    def __init__(self, *, device: str = "cpu", address: str | None = None, gpus_per_worker: float | None = None,
                 max_retries: int = 3, threads: int = 1, workers: int | None = None) -> None:
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
        # GPUs are asked for on a GPU run, or when given (a CPU run on a cluster's GPU nodes)
        self.gpus_per_worker = (1.0 if self.device == "cuda" else 0.0) if gpus_per_worker is None else gpus_per_worker
        self.max_retries = max_retries
        self.threads = threads  # per worker: each holds the CPUs it asked Ray for, never every core
        self.max_workers = workers or self._fitting()
        if self.max_workers < 1:
            have = ray.cluster_resources()
            raise UserError(f"the Ray cluster has {have.get('GPU', 0):g} GPU(s) and {have.get('CPU', 0):g} CPU(s): "
                            f"not enough for one worker of {self.gpus_per_worker:g} GPU(s) and {threads} CPU(s)")
        self._actors: list = []
        #: for each worker (by index): where it runs (pid, GPU ids; see :meth:`where`), the cells it
        #: evaluated (keys) and how many of them it took from another worker's queue at the end
        self.placements: list[dict] = []

    def _fitting(self) -> int:
        """How many workers the cluster holds at once."""
        have = self.ray.cluster_resources()
        by_cpu = int(have.get("CPU", 0) // max(self.threads, 1))
        if self.gpus_per_worker > 0:
            return min(int(have.get("GPU", 0) // self.gpus_per_worker), by_cpu)
        return by_cpu

    def _actor(self, index: int):
        while len(self._actors) <= index:
            remote = self.ray.remote(_RayWorker).options(
                num_cpus=self.threads, num_gpus=self.gpus_per_worker, max_restarts=self.max_retries,
                max_task_retries=self.max_retries)
            actor = remote.remote(self.threads, worker_env(), imported_plugin_modules())
            self._actors.append(actor)
            self.placements.append({"where": actor.where.remote(), "cells": []})
        return self._actors[index]

    def run(self, units: list[Unit], ctx: CellContext) -> Iterator[CellResult]:
        for _, result in self.run_groups([(None, units, ctx)]):
            yield result

    def run_groups(self, groups: Iterable[Group]) -> Iterator[tuple[Hashable, CellResult]]:
        ray = self.ray
        groups = iter(groups)
        backlog: list[list[tuple[Hashable, Unit, CellContext]]] = []  # per worker: its units not yet sent
        flying: dict = {}  # object ref -> (worker, key, unit, ctx)
        exhausted = False

        def send(w: int) -> None:
            while backlog[w] and sum(1 for f in flying.values() if f[0] == w) < self.AHEAD:
                key, unit, ctx = backlog[w].pop(0)
                ref = self._actor(w).evaluate.remote(unit, self.device, ctx.clean, ctx.git_commit)
                flying[ref] = (w, key, unit, ctx)

        while True:
            for w in range(self.max_workers):
                if w >= len(backlog):
                    backlog.append([])
                if sum(1 for f in flying.values() if f[0] == w) + len(backlog[w]) < self.AHEAD:
                    if not exhausted:
                        try:
                            key, units, ctx = next(groups)
                            backlog[w] += [(key, unit, ctx) for unit in units]
                        except StopIteration:
                            exhausted = True
                    if exhausted and not backlog[w]:  # steal the later half of the longest queue
                        longest = max(range(len(backlog)), key=lambda i: len(backlog[i]))
                        if len(backlog[longest]) > 1:
                            half = len(backlog[longest]) // 2
                            backlog[w], backlog[longest] = backlog[longest][half:], backlog[longest][:half]
                            self.placements[w]["taken"] = self.placements[w].get("taken", 0) + len(backlog[w])
                send(w)
            if not flying:
                if exhausted:  # every backlog was sent (send leaves none while a worker is free)
                    return
                continue  # the groups asked for were empty
            ready, _ = ray.wait(list(flying), num_returns=1)
            for ref in ready:
                w, key, unit, ctx = flying.pop(ref)
                try:
                    results = ray.get(ref)
                except ray.exceptions.RayError as exc:
                    # the worker died more often than it may be restarted: failed cells, the run goes on
                    results = [cell.new_result(ctx, Status.FAILED, f"Ray worker lost after {self.max_retries} "
                                                                   f"restarts: {type(exc).__name__}: "
                                                                   f"{str(exc).splitlines()[0][:300]}")
                               for cell in _cells(unit)]
                for result in results:
                    self.placements[w]["cells"].append(result.key)
                    yield key, result

    def where(self) -> list[dict]:
        """Where each worker ran (as it started): its pid and the GPU ids Ray gave it."""
        return [self.ray.get(p["where"]) for p in self.placements]

    def close(self) -> None:
        for actor in self._actors:
            self.ray.kill(actor)
        self._actors.clear()
