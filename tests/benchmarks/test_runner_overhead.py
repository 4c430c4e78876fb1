"""Runner overhead per cell on the tiny suite: a full cell (attack, validation, scoring of the
adversarial images, store write) against the attack's own forward/backward passes, timed in
interleaved rounds in one process. Target (issue 7): overhead < 5%.

Reported: ``overhead`` = (cell - attack) / attack, and ``overhead_without_scoring_forward``,
which also subtracts the one forward pass that scores the adversarial images."""

import statistics
import time

import pytest
import torch

from benchmark.attacks import AttackSpec, create_attack
from benchmark.attacks.validate import WeightSnapshot
from benchmark.data import load_dataset, make_loader
from benchmark.evaluation import evaluate
from benchmark.runner.cells import Cell, evaluate_cell
from benchmark.runner.context import CellContext
from benchmark.runner.store import ResultsStore
from benchmark.suites import load_suite
from benchmark.targets import Target
from benchmark.tasks import get_tasks
from benchmark.zoo.build import member_model


@pytest.fixture(scope="module")
def context():
    suite = load_suite("tiny-nyuv2-resnet34")
    member = suite.member("layout-9")
    model = member_model(suite, member).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tasks = get_tasks("nyuv2")
    ds = load_dataset("synthetic-nyuv2", "test", size=8, resolution=member.input_size)
    batches = list(make_loader(ds, 8))
    clean = evaluate(model, tasks, batches)
    target = Target.of(suite.name, member.name)
    return suite, CellContext(target=target, model=model, tasks=tasks, batches=batches, clean=clean,
                              model_revision="bench", suite=suite.name, data=suite.data_source,
                              split="test", input_size=member.input_size, device=torch.device("cpu"),
                              snapshot=WeightSnapshot(model))


@pytest.mark.parametrize("steps", [10, 20])
def test_runner_overhead_per_cell(benchmark, context, tmp_path, steps):
    _, ctx = context
    store = ResultsStore(tmp_path / "bench.db")
    cell = Cell(ctx.target, AttackSpec.parse("pgd:gb-mta", steps=steps), 8.0, 0, "bench", 8, 8,
                check_determinism=False)
    attack = create_attack("pgd:gb-mta", steps=steps)
    batch = ctx.batches[0]

    def attack_only():
        gen = torch.Generator().manual_seed(0)
        attack(ctx.model, batch["image"], batch, tasks=ctx.tasks, eps=8 / 255, generator=gen)

    def scoring_forward():
        with torch.no_grad():
            ctx.model(batch["image"])

    def full_cell():
        store.put(evaluate_cell(cell, ctx))

    times = {"attack": [], "cell": [], "forward": []}
    for fn in (attack_only, full_cell, scoring_forward):
        fn()
    for _ in range(7):
        for key, fn in (("attack", attack_only), ("cell", full_cell), ("forward", scoring_forward)):
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    a, c, f = (statistics.median(times[k]) for k in ("attack", "cell", "forward"))
    benchmark.extra_info["overhead"] = (c - a) / a
    benchmark.extra_info["overhead_without_scoring_forward"] = (c - a - f) / a
    benchmark.pedantic(full_cell, rounds=3, iterations=1)
