"""Several cells' images in one batch: the white-box cells of one target, attack and seed that
differ only by eps, attacked together.

Each evaluation batch is repeated once per eps (``k`` copies side by side, ``k * B`` images) and
the attack gets a ``(k * B, 1, 1, 1)`` eps tensor, one value per image. Only an attack whose
``images_independent`` is true is batched (:mod:`benchmark.attacks.batching`: FGSM, MIM and PGD
without a random start, with their default per-image loss); the others (a random start or a
randomised attack such as Square draws for the batch as a whole; APGD's and Auto-SAGA's steps
depend on the batch) and transfer cells run alone. Every copy is validated against its own eps,
scored into its own cell, and each cell keeps its own result: the same counted passes per image
as alone, an equal share of the batch's attack time, and the batch's peak memory. A batch whose
output the validator refuses is run again cell by cell, so the verdict and its reason are each
cell's own.

A batched cell's numbers are the cell's alone up to float rounding (a larger batch may take
another convolution algorithm): on the tiny suite, FGSM's ARP equal, PGD's and MIM's within 0.03
points (tests/test_batching.py; the test allows :data:`BATCHED_ARP_TOLERANCE`). Off on the CPU by
default (the record and the demo keep their unbatched numbers); on by default on a GPU, where a
batch of 16 small images leaves most of the card idle. Each batched cell's configuration says so
(``config["batched"]``: the eps it shared its batches with), outside its key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from benchmark.attacks import run_attack
from benchmark.attacks.sandbox import CellTimeout, time_limit
from benchmark.enums import Status
from benchmark.errors import UserError
from benchmark.runner.cells import Cell, CellScoring, PeakMemory, batch_seed, evaluate_cell
from benchmark.runner.context import CellContext
from benchmark.runner.store import CellResult

__all__ = ["BATCHED_ARP_TOLERANCE", "MAX_CELLS", "CellBatch", "batch_cells", "evaluate_unit", "use_batching"]

#: a batched cell's ARP against the same cell alone, at most (points): measured 0.02 on the tiny
#: suite (MIM; FGSM equal), the same under AVX2; the margin is for rounding that flips a pixel's sign
BATCHED_ARP_TOLERANCE = 0.05
#: cells in one batch at most (the memory of the attack grows with it: a full-size PGD-10 batch of
#: 16 took 7.6 GB on AS, 12.4 GB on IND)
MAX_CELLS = 4


@dataclass(frozen=True)
class CellBatch:
    """Cells of one target, attack, seed and images that differ only by eps (two or more)."""

    cells: tuple[Cell, ...]

    @property
    def data_key(self) -> tuple:
        return self.cells[0].data_key


Unit = Cell | CellBatch


def use_batching(setting: str, device: str) -> bool:
    """Whether cells are batched across eps: ``"on"``, ``"off"``, or ``"auto"`` (on a GPU only)."""
    if setting not in ("auto", "on", "off"):
        raise UserError(f"--batch-cells must be auto, on or off, got {setting!r}")
    return setting == "on" or (setting == "auto" and str(device).startswith("cuda"))


def _batchable(cell: Cell) -> bool:
    if cell.source is not None or cell.share_crafted:  # transfer images are crafted and kept per eps
        return False
    try:
        attack = cell.attack.create()
    except UserError:
        return False  # evaluated alone, where the cell says why it cannot be created
    return bool(getattr(attack, "images_independent", False))


def batch_cells(cells: list[Cell]) -> list[Unit]:
    """``cells`` as units of work: the batchable cells that differ only by eps (and time limit, and
    whether they repeat the attack to check it is deterministic: the batch does when one of them does) as
    one :class:`CellBatch` of at most :data:`MAX_CELLS`, in the order of their first cell; every
    other cell alone."""
    units: list[list[Cell]] = []
    together: dict[Cell, list[Cell]] = {}
    for cell in cells:
        if not _batchable(cell):
            units.append([cell])
            continue
        key = replace(cell, eps=0.0, timeout_s=None, check_determinism=False)
        group = together.get(key)
        if group is not None and len(group) < MAX_CELLS and cell.eps not in {c.eps for c in group}:
            group.append(cell)
            continue
        together[key] = [cell]
        units.append(together[key])
    return [group[0] if len(group) == 1 else CellBatch(tuple(group)) for group in units]


def evaluate_unit(unit: Unit, ctx: CellContext) -> list[CellResult]:
    """The results of a unit of work: one cell's, or each cell's of a batch."""
    if isinstance(unit, Cell):
        return [evaluate_cell(unit, ctx)]
    return evaluate_batch(unit, ctx)


def evaluate_batch(batch: CellBatch, ctx: CellContext) -> list[CellResult]:
    """Attack ``batch``'s cells in one batch per evaluation batch (see the module docstring)."""
    cells = batch.cells
    if ctx.model_problem:
        return [evaluate_cell(cell, ctx) for cell in cells]  # each says the model's fault
    results = [cell.new_result(ctx) for cell in cells]
    scorings = [CellScoring(cell, ctx, result) for cell, result in zip(cells, results, strict=True)]
    limits = [cell.timeout_s for cell in cells]
    start = time.perf_counter()
    meter = PeakMemory(ctx.device)
    refused = None
    try:
        with meter, time_limit(sum(limits) if all(limits) else None):
            refused = _attack_together(cells, ctx, scorings)
    except CellTimeout as exc:
        for result in results:
            result.status, result.reason = Status.FAILED, (f"{exc} in a batch of {len(cells)} cells (eps "
                                                           f"{', '.join(f'{c.eps:g}' for c in cells)})")
            result.adversarial, result.arp, result.task_arp = {}, None, {}
        return results
    finally:
        ctx.ensure_pristine()
    if refused is not None:  # each cell alone: its own verdict and reason
        return [evaluate_cell(cell, ctx) for cell in cells]
    wall = time.perf_counter() - start
    shared = [c.eps for c in cells]
    for scoring, result in zip(scorings, results, strict=True):
        scoring.finish()
        result.wall_s = wall / len(cells)
        result.time_per_image_s = result.attack_s / result.images if result.images else 0.0
        result.peak_memory_bytes, result.peak_memory_kind = meter.peak, meter.kind
        result.config["batched"] = {"eps": shared, "cells": len(cells)}
    return results


def _attack_together(cells: tuple[Cell, ...], ctx: CellContext, scorings: list[CellScoring]) -> str | None:
    """Attack every evaluation batch once for all ``cells``; score each cell's copy into its
    scoring. Returns the validator's reason when it refused an output (nothing is scored then)."""
    first = cells[0]
    attack = first.attack.create()
    k = len(cells)
    for i, batch in enumerate(ctx.batches):
        b = batch["image"].shape[0]
        images = batch["image"].repeat(k, *([1] * (batch["image"].dim() - 1)))
        targets = {name: value.repeat(k, *([1] * (value.dim() - 1))) if isinstance(value, torch.Tensor) else value
                   for name, value in batch.items()}
        eps = torch.tensor([cell.eps for cell in cells], dtype=torch.float32).repeat_interleave(b)
        run = run_attack(attack, ctx.model, images, targets, tasks=ctx.tasks, eps=eps, seed=batch_seed(first.seed, i),
                         check_determinism=i == 0 and any(c.check_determinism for c in cells), snapshot=ctx.snapshot)
        if not run.verdict.valid:
            return run.verdict.reason
        for j, scoring in enumerate(scorings):
            part = run.adversarial[j * b:(j + 1) * b]
            delta = float((part - batch["image"]).abs().max()) * 255
            scoring.add(i, batch, part, run.forward_passes, run.backward_passes,
                        run.extra.get("attack_s", 0.0) / k, delta)
    return None
