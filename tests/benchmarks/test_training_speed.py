"""One training step (forward, backward, optimiser) of the tiny AS and IND models at the tiny
suites' size: the shipped code against the library operations it replaces, in the same process.

The shipped step upsamples the heads' outputs with two matrix products
(``benchmark.models.branched.upsample_bilinear``), writes the cross-entropy out
(``benchmark.tasks._pixel_cross_entropy``), normalises normals by their sum of squares
(``benchmark.tasks._unit``), runs the four ASPP branches of a head side by side with a
``rand``-drawn dropout mask (``benchmark.models.heads``) and runs AdamW's fused kernel; the
baseline uses ``F.interpolate``, ``F.cross_entropy``, ``F.normalize`` / ``F.cosine_similarity``,
one branch after the other with ``F.dropout`` and the per-parameter AdamW loop.
``extra_info["speedup"]`` is baseline time / shipped time (> 1: the shipped step is faster).
"""

import contextlib
import statistics
import time

import pytest
import torch
import torch.nn.functional as F
from references import aspp_per_branch

from benchmark import tasks as tasks_module
from benchmark.models import BranchedModel
from benchmark.models import branched as branched_module
from benchmark.models.heads import ASPPHead
from benchmark.suites import load_suite
from benchmark.tasks import IGNORE_INDEX, get_tasks, total_loss
from benchmark.training import make_optimizer

TASKS = get_tasks("nyuv2")
CHANNELS = {t.name: t.channels for t in TASKS}
SIZE, BATCH = 48, 16


def _targets():
    g = torch.Generator().manual_seed(0)
    return {"segment_semantic": torch.randint(0, 40, (BATCH, SIZE, SIZE), generator=g),
            "normal": F.normalize(torch.randn(BATCH, 3, SIZE, SIZE, generator=g), dim=1),
            "depth_zbuffer": torch.rand(BATCH, 1, SIZE, SIZE, generator=g) + 0.5}


LIBRARY_OPS = {
    (ASPPHead, "forward"): aspp_per_branch,
    (branched_module, "upsample_bilinear"):
        lambda x, size: F.interpolate(x, size=size, mode="bilinear", align_corners=False),
    (tasks_module, "_pixel_cross_entropy"):
        lambda pred, target: F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX, reduction="none"),
    (tasks_module, "_unit"): lambda x: F.normalize(x, dim=1, eps=1e-8),
}


@contextlib.contextmanager
def _library_ops():
    """The library operations in place of the shipped ones, for the duration of the block."""
    saved = {key: getattr(*key) for key in LIBRARY_OPS}
    for (module, name), op in LIBRARY_OPS.items():
        setattr(module, name, op)
    try:
        yield
    finally:
        for (module, name), op in saved.items():
            setattr(module, name, op)


def _stepper(layout: str, fused: bool):
    torch.manual_seed(0)
    model = BranchedModel(layout, CHANNELS, width=0.125, head_hidden=32, head_rates=(1, 2, 3, 4)).train()
    opt = (make_optimizer(model.parameters(), "adam", lr=1e-3, weight_decay=1e-4) if fused
           else torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, foreach=False))
    x, targets = torch.rand(BATCH, 3, SIZE, SIZE), _targets()

    def step():
        loss = total_loss(TASKS, model(x), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


@pytest.mark.parametrize("layout", ["AS", "IND"])
def test_training_step(benchmark, layout):
    torch.set_num_threads(1)  # as a tiny build's worker processes run
    shipped, library = _stepper(layout, fused=True), _stepper(layout, fused=False)
    library_times: list[float] = []

    def library_step():  # timed before each round of the shipped step: the two interleave
        with _library_ops():
            start = time.perf_counter()
            library()
            library_times.append(time.perf_counter() - start)

    for _ in range(2):  # warm-up of both
        shipped()
        library_step()
    library_times.clear()
    benchmark.pedantic(shipped, setup=library_step, rounds=15, iterations=1)
    ours, theirs = benchmark.stats.stats.median, statistics.median(library_times)
    benchmark.extra_info.update({"seconds_per_step": ours, "library_seconds_per_step": theirs,
                                 "speedup": theirs / ours})


def _mobilenet_stepper(layout: str, channels_last: bool):
    """A tiny MobileNetV2 member's training step (the tiny suite's width, output stride and heads)."""
    member = load_suite("tiny-nyuv2-mobilenetv2").members[0]
    torch.manual_seed(0)
    model = BranchedModel(layout, CHANNELS, backbone="mobilenetv2", width=member.width,
                          output_stride=member.output_stride, head_hidden=member.head_hidden,
                          head_rates=tuple(member.head_rates)).train()
    if channels_last:
        model.use_channels_last()
    opt = make_optimizer(model.parameters(), "adam", lr=1e-3, weight_decay=1e-4)
    x, targets = torch.rand(BATCH, 3, SIZE, SIZE), _targets()

    def step():
        loss = total_loss(TASKS, model(x), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


@pytest.mark.parametrize("layout", ["AS", "IND"])
def test_mobilenet_training_layout(benchmark, layout):
    """MobileNetV2 members train in channels-last order on the CPU
    (``benchmark.training.training_layout``): the step in that order against the default order,
    interleaved. ``speedup`` > 1: channels-last is faster."""
    torch.set_num_threads(1)
    shipped, default = _mobilenet_stepper(layout, True), _mobilenet_stepper(layout, False)
    default_times: list[float] = []

    def default_step():
        start = time.perf_counter()
        default()
        default_times.append(time.perf_counter() - start)

    for _ in range(2):
        shipped()
        default_step()
    default_times.clear()
    benchmark.pedantic(shipped, setup=default_step, rounds=10, iterations=1)
    ours, theirs = benchmark.stats.stats.median, statistics.median(default_times)
    benchmark.extra_info.update({"seconds_per_step": ours, "default_order_seconds_per_step": theirs,
                                 "speedup": theirs / ours})
