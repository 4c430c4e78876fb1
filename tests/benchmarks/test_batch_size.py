"""What evaluating several cells' images in one batch could buy on this machine: one input-gradient
pass (forward + backward to the images, as an attack step does) of the shipped tiny AS over 64
images as one batch against four batches of 16 (the quick profile's batch), interleaved in the
same process. ``extra_info["one_batch_over_four"]`` is the time ratio (below 1: the larger batch
is faster per image)."""

import time

import torch

from benchmark.targets import Target, resolve
from benchmark.tasks import get_tasks, total_loss


def test_one_batch_of_64_against_four_of_16(benchmark):
    model = resolve(Target.of("tiny-nyuv2-resnet34", "AS")).model.eval()
    tasks, size = get_tasks("nyuv2"), 48  # the tiny suite's tasks and image size
    g = torch.Generator().manual_seed(0)
    images = torch.rand(64, 3, size, size, generator=g)
    targets = {"segment_semantic": torch.randint(0, 40, (64, size, size), generator=g),
               "normal": torch.nn.functional.normalize(torch.randn(64, 3, size, size, generator=g), dim=1),
               "depth_zbuffer": torch.rand(64, 1, size, size, generator=g) + 0.5}

    def gradient(batch: int) -> None:
        for i in range(0, 64, batch):
            x = images[i: i + batch].clone().requires_grad_(True)
            part = {k: v[i: i + batch] for k, v in targets.items()}
            total_loss(tasks, model(x), part).backward()

    gradient(64), gradient(16)  # warm-up
    times = {64: [], 16: []}
    for _ in range(5):  # interleaved: both see the same load
        for batch in (16, 64):
            start = time.perf_counter()
            gradient(batch)
            times[batch].append(time.perf_counter() - start)
    benchmark.pedantic(gradient, args=(64,), rounds=3, iterations=1)
    median = {b: sorted(t)[len(t) // 2] for b, t in times.items()}
    benchmark.extra_info.update({"seconds_per_image_batch_64": median[64] / 64,
                                 "seconds_per_image_batch_16": median[16] / 64,
                                 "one_batch_over_four": median[64] / median[16]})
