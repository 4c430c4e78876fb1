"""Executors: where cells run. Both call :func:`~benchmark.runner.cells.evaluate_cell`, and the
driver process is the only writer of the results store.

* :class:`LocalExecutor` (default): in this process, one model at a time, its evaluation batches
  kept on the device.
* :class:`RayExecutor` (``--executor ray``): each cell is a Ray task with ``gpus_per_cell`` GPUs
  (a fraction shares one GPU) on a cluster (``--address``, or a local one). A worker keeps the
  last model it loaded; a worker that dies is replaced and its cells are retried.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator

import torch

from benchmark.errors import UserError
from benchmark.runner.cells import Cell, CellContext, evaluate_cell
from benchmark.runner.store import CellResult

__all__ = ["LocalExecutor", "RayExecutor"]


class LocalExecutor:
    def run(self, cells: list[Cell], ctx: CellContext, options) -> Iterator[CellResult]:
        for cell in cells:
            yield evaluate_cell(cell, ctx)


@functools.lru_cache(maxsize=1)
def _worker_context(suite_ref: str, model: str, profile: str, device: str, data_root: str | None,
                    weights_dir: str | None) -> CellContext:
    from benchmark.runner.run import load_context
    from benchmark.suites import load_suite

    return load_context(load_suite(suite_ref), model, profile, device=torch.device(device), data_root=data_root,
                        weights_dir=weights_dir)


def _ray_cell(cell: Cell, suite_ref: str, device: str, data_root: str | None, weights_dir: str | None,
              clean: dict, threads: int) -> CellResult:
    torch.set_num_threads(threads)
    ctx = _worker_context(suite_ref, cell.model, cell.profile, device, data_root, weights_dir)
    ctx.clean = clean  # the driver's clean metrics, so every executor scores against the same numbers
    return evaluate_cell(cell, ctx)


class RayExecutor:
    def __init__(self, *, address: str | None = None, gpus_per_cell: float = 1.0, max_retries: int = 3) -> None:
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install 'mtlbench[ray]'") from None
        self.ray = ray
        if not ray.is_initialized():
            env = {k: v for k, v in os.environ.items() if k.startswith(("MTLBENCH_", "HF_"))}
            ray.init(address=address, ignore_reinit_error=True, log_to_driver=False,
                     runtime_env={"env_vars": env} if env else None)
        self.gpus_per_cell = gpus_per_cell
        self.max_retries = max_retries

    def run(self, cells: list[Cell], ctx: CellContext, options) -> Iterator[CellResult]:
        ray = self.ray
        cuda = options.device.startswith("cuda")
        remote = ray.remote(_ray_cell).options(num_cpus=1, num_gpus=self.gpus_per_cell if cuda else 0,
                                               max_retries=self.max_retries, retry_exceptions=False)
        suite_ref = str(options.suite)
        pending = {remote.remote(cell, suite_ref, "cuda" if cuda else "cpu", options.data_root, options.weights_dir,
                                 ctx.clean, torch.get_num_threads()): cell for cell in cells}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                cell = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as exc:
                    # the task died more often than it may be retried: a failed cell, the run goes on
                    yield ctx.new_result(cell, "failed", f"Ray task lost after {self.max_retries} retries: "
                                                         f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")

