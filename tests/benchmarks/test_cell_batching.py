"""What attacking the cells that differ only by eps in one batch buys (benchmark.runner.batching):
the quick profile's white-box cells of the shipped tiny AS (FGSM GB-MTA and PGD-5 with every
objective of the profile, at eps 4 and 8, its first 16 images, one batch), evaluated cell by cell
and batched, interleaved in the same process (each pass of both sees the same load).
``extra_info["batched_over_alone"]`` is the time ratio (below 1: batching is faster).
``MTLBENCH_BENCH_DEVICE=cuda`` runs it on a GPU."""

import os
import time

import torch

from benchmark.runner.batching import batch_cells, evaluate_unit
from benchmark.runner.context import prepare_context
from benchmark.runner.plan import Request, make_plan

DEVICE = os.environ.get("MTLBENCH_BENCH_DEVICE", "cpu")


def test_cells_batched_across_eps_against_alone(benchmark):
    plan = make_plan(Request(suite="tiny-nyuv2-resnet34", profile="quick", models=["AS"], defenses=["none"], images=16,
                             attacks=["fgsm:gb-mta", "pgd:total", "pgd:signtotal", "pgd:gb-mta", "pgd:single-*"]))
    cells = [c for c in plan.cells if not c.budget_point and c.source is None]
    ctx = prepare_context(*cells[0].data_key, device=torch.device(DEVICE))
    units = batch_cells(cells)
    assert len(units) == len(cells) // 2  # two eps per attack: every pair in one batch

    def evaluate(work) -> None:
        for unit in work:
            evaluate_unit(unit, ctx)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    evaluate(units), evaluate(cells)  # warm-up
    times = {"alone": [], "batched": []}
    for _ in range(3):
        for name, work in (("alone", cells), ("batched", units)):
            start = time.perf_counter()
            evaluate(work)
            times[name].append(time.perf_counter() - start)
    benchmark.pedantic(evaluate, args=(units,), rounds=1, iterations=1)
    median = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    benchmark.extra_info.update({"cells": len(cells), "device": DEVICE, "seconds_alone": median["alone"],
                                 "seconds_batched": median["batched"],
                                 "batched_over_alone": median["batched"] / median["alone"]})
