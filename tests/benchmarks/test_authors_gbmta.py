"""mtlbench's GB-MTA against the authors' GB-MTA loop, same model, batch and seed.

The authors' attack (re-implemented here from their description, for this benchmark only) takes,
at every step, per-sample losses (reduction none) of each task, one backward per task through the
retained graph, divides each task's input gradient by that sample's loss, sums over tasks and
steps along the sign: PGD without random start, step eps/steps. mtlbench gets the same direction
from one backward of sum_i log L_i. Each is timed in interleaved rounds (drift of the machine hits
both); ``extra_info`` holds the ms per attack step of each, their ratio (``authors_over_ours`` > 1:
ours is faster) and, on a GPU, the peak memory of each. The share of adversarial pixels that are
equal is reported too (a sign step turns a difference of rounding into a flipped pixel only where
the direction is 0 to float precision).

* CPU (always): the tiny suites' size (width 1/8, 64x64, batch 16), so the ratio is tracked
  without a GPU.
* GPU (``gpu``-marked, skipped without CUDA): full width at the paper's 321x321, batch 16, AS.
"""

import statistics
import time

import pytest
import torch

from benchmark.attacks import create_attack
from benchmark.attacks.objectives import per_task_losses
from benchmark.data import SyntheticScenes
from benchmark.models import BranchedModel
from benchmark.tasks import get_tasks

TASKS = get_tasks("nyuv2")
STEPS = 10
EPS = 8 / 255


def authors_gbmta(model, images, targets, *, eps: float, steps: int) -> torch.Tensor:
    """The authors' loop: one backward per task (retain_graph), each task's input gradient over
    that sample's loss, summed; a sign step of eps/steps, projected to the ball and [0, 1]."""
    alpha = eps / steps
    x = images.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        losses = per_task_losses(model, x, targets, TASKS)  # (B, T), reduction none
        direction = torch.zeros_like(x)
        for i in range(losses.shape[1]):
            grad = torch.autograd.grad(losses[:, i].sum(), x, retain_graph=i < losses.shape[1] - 1)[0]
            direction += grad / losses[:, i].detach().clamp_min(1e-12).view(-1, 1, 1, 1)
        with torch.no_grad():
            x = x + alpha * direction.sign()
            x = torch.min(torch.max(x, images - eps), images + eps).clamp(0, 1)
    return x.detach()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _compare(benchmark, model, batch, device: str, rounds: int) -> None:
    images = batch["image"]
    ours_attack = create_attack("pgd:gb-mta", steps=STEPS)
    gen = torch.Generator(device=device).manual_seed(0)

    def ours():
        return ours_attack(model, images, batch, tasks=TASKS, eps=EPS, generator=gen)

    def theirs():
        return authors_gbmta(model, images, batch, eps=EPS, steps=STEPS)

    equal = (ours() == theirs()).float().mean().item()
    times: dict[str, list[float]] = {"ours": [], "authors": []}
    peaks: dict[str, int] = {}
    for _ in range(rounds):
        for key, fn in (("ours", ours), ("authors", theirs)):
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[key].append(time.perf_counter() - start)
            if device == "cuda":
                peaks[key] = max(peaks.get(key, 0), torch.cuda.max_memory_allocated())
    ours_ms = statistics.median(times["ours"]) / STEPS * 1e3
    theirs_ms = statistics.median(times["authors"]) / STEPS * 1e3
    benchmark.extra_info.update({"ours_ms_per_step": ours_ms, "authors_ms_per_step": theirs_ms,
                                 "authors_over_ours": theirs_ms / ours_ms, "equal_pixels": equal})
    for key, peak in peaks.items():
        benchmark.extra_info[f"{key}_peak_gb"] = peak / 2**30
    assert equal > 0.99, f"the two GB-MTA attacks disagree on {1 - equal:.2%} of the pixels"
    benchmark.pedantic(ours, rounds=1, iterations=1)


def test_gbmta_step_against_the_authors_loop_cpu(benchmark):
    torch.manual_seed(0)
    model = BranchedModel("AS", {t.name: t.channels for t in TASKS}, width=0.125, head_hidden=32,
                          head_rates=(1, 2, 3, 4)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    batch = SyntheticScenes("nyuv2", "test", size=16, resolution=64).render(range(16))
    _compare(benchmark, model, batch, "cpu", rounds=5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gbmta_step_against_the_authors_loop_full_size(benchmark):
    from benchmark.data import load_dataset, make_loader, to_device

    torch.manual_seed(0)
    model = BranchedModel("AS", {t.name: t.channels for t in TASKS}).cuda().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    data = load_dataset("synthetic-nyuv2", "test", size=16, resolution=321)
    batch = to_device(next(iter(make_loader(data, 16))), torch.device("cuda"))
    _compare(benchmark, model, batch, "cuda", rounds=5)
