"""Throughput beside a busy process, relative to the same cells alone, in one run (issue 14 §4).

A busy neighbour (a pure-Python spin loop in another process) is started and stopped between
interleaved rounds of the same PGD cells of the tiny AS model, evaluated with the thread setting
mtlbench chooses for a worker (benchmark.threads: 1 thread for the tiny suites) and, for
comparison, with torch's default of one thread per core. Reported: ``ratio`` = throughput beside
the busy process / throughput alone (goal >= 0.7) for each setting.

The run's default on a CPU with several cores is one such worker per core; the pool beside a busy
neighbour gets at most its fair share of the cores (2/3 of 2 cores), which the README reports.
"""

import statistics
import subprocess
import sys
import time

import pytest
import torch

from benchmark.attacks import AttackSpec
from benchmark.attacks.validate import WeightSnapshot
from benchmark.data import load_dataset, make_loader
from benchmark.evaluation import evaluate
from benchmark.runner.cells import Cell, evaluate_cell
from benchmark.runner.context import CellContext
from benchmark.suites import load_suite
from benchmark.targets import Target
from benchmark.threads import choose_threads, usable_cores
from benchmark.zoo.build import member_model


@pytest.fixture(scope="module")
def context():
    suite = load_suite("tiny-nyuv2-resnet34")
    member = suite.member("AS")
    model = member_model(suite, member).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ds = load_dataset("synthetic-nyuv2", "test", size=8, resolution=member.input_size)
    batches = list(make_loader(ds, 8))
    clean = evaluate(model, suite.tasks, batches)
    return CellContext(target=Target.of(suite.name, member.name), model=model, tasks=suite.tasks, batches=batches,
                       clean=clean, model_revision="bench", suite=suite.name, data=suite.data_source, split="test",
                       input_size=member.input_size, device=torch.device("cpu"), snapshot=WeightSnapshot(model))


@pytest.mark.skipif(usable_cores() < 2, reason="needs two cores: one for the busy neighbour")
@pytest.mark.parametrize("setting", ["mtlbench", "torch-default"])
def test_throughput_beside_a_busy_process(benchmark, context, setting):
    threads = choose_threads(None, small_model=True) if setting == "mtlbench" else usable_cores()
    torch.set_num_threads(threads)
    cells = [Cell(context.target, AttackSpec.parse("pgd:total", steps=5), float(e), 0, "bench", 8, 8,
                  check_determinism=False) for e in (2, 4, 6, 8)]

    def batch_of_cells():
        for cell in cells:
            evaluate_cell(cell, context)

    batch_of_cells()  # warm-up
    alone, busy = [], []
    for _ in range(3):
        start = time.perf_counter()
        batch_of_cells()
        alone.append(time.perf_counter() - start)
        neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.3)
        try:
            start = time.perf_counter()
            batch_of_cells()
            busy.append(time.perf_counter() - start)
        finally:
            neighbour.kill()
            neighbour.wait()
    ratio = statistics.median(alone) / statistics.median(busy)
    benchmark.extra_info.update(threads=threads, ratio=ratio, alone_s=statistics.median(alone),
                                busy_s=statistics.median(busy))
    benchmark.pedantic(batch_of_cells, rounds=1, iterations=1)
    if setting == "mtlbench":
        assert ratio >= 0.7
