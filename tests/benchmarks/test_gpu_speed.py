"""The full-size NYUv2 models on a GPU: what one cell of the full suites costs per image.

For AS and IND at full width and the paper's 321x321 crop, batch 16 of synthetic scenes: the
benchmark times one PGD-10 GB-MTA attack as a cell runs it (``run_attack``: the attack and its
validation), and ``extra_info`` holds, measured in the same process, the reference (one training
forward+backward of the same batch), ms per image of both, their ratio and the peak GPU memory of
the attack. Skipped without CUDA. ``MTLBENCH_BENCH_GPU_DEVICE=cpu`` with
``MTLBENCH_BENCH_FULL_SIZE=32`` and ``MTLBENCH_BENCH_GPU_BATCH=2`` runs it small on the CPU (a check
of the code path, not a timing)."""

import os
import time

import pytest
import torch

from benchmark.attacks import create_attack
from benchmark.attacks.validate import run_attack
from benchmark.data import load_dataset, make_loader, to_device
from benchmark.models import BranchedModel
from benchmark.tasks import get_tasks, total_loss

DEVICE = os.environ.get("MTLBENCH_BENCH_GPU_DEVICE", "cuda")
SIZE = int(os.environ.get("MTLBENCH_BENCH_FULL_SIZE", "321"))
BATCH = int(os.environ.get("MTLBENCH_BENCH_GPU_BATCH", "16"))
TASKS = get_tasks("nyuv2")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE == "cuda" and not torch.cuda.is_available(), reason="needs CUDA")]


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _seconds(fn, repeats: int) -> float:
    fn()  # warm-up (cuDNN picks its kernels)
    _sync()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync()
    return (time.perf_counter() - start) / repeats


@pytest.mark.parametrize("layout", ["AS", "IND"])
def test_full_size_pgd_cell_per_image(benchmark, layout):
    torch.manual_seed(0)
    model = BranchedModel(layout, {t.name: t.channels for t in TASKS}).to(DEVICE)
    batch = to_device(next(iter(make_loader(load_dataset("synthetic-nyuv2", "test", size=BATCH, resolution=SIZE),
                                            BATCH))), torch.device(DEVICE))

    def forward_backward():
        loss = total_loss(TASKS, model(batch["image"]), batch)
        loss.backward()
        model.zero_grad(set_to_none=True)

    model.train()
    reference = _seconds(forward_backward, 3)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    attack = create_attack("pgd:gb-mta", steps=10)

    def cell_attack():
        run = run_attack(attack, model, batch["image"], batch, tasks=TASKS, eps=8, seed=0, check_determinism=False)
        assert run.verdict.valid, run.verdict
        _sync()

    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()
    benchmark.pedantic(cell_attack, rounds=3, warmup_rounds=1)
    attack_s = benchmark.stats.stats.mean
    benchmark.extra_info.update(
        device=torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", size=SIZE, batch=BATCH,
        reference_ms_per_image=1000 * reference / BATCH, pgd10_ms_per_image=1000 * attack_s / BATCH,
        pgd10_over_reference=attack_s / reference,
        peak_gb=torch.cuda.max_memory_allocated() / 1e9 if DEVICE == "cuda" else float("nan"))
