"""One forward+backward of the tiny and the full-size AS and IND models, per image.

``extra_info`` holds seconds per image and the IND/AS cost ratio measured in the same process.
Full-size models run at the paper's 321x321 crop with one image (MTLBENCH_BENCH_FULL_SIZE
overrides it)."""

import os

import pytest
import torch

from benchmark.models import BranchedModel
from benchmark.tasks import get_tasks, total_loss

TASKS = get_tasks("nyuv2")
CHANNELS = {t.name: t.channels for t in TASKS}
FULL = int(os.environ.get("MTLBENCH_BENCH_FULL_SIZE", "321"))
VARIANTS = {
    "tiny": {"width": 0.125, "head_hidden": 32, "head_rates": (1, 2, 3, 4), "size": 64, "batch": 16},
    "full": {"width": 1.0, "head_hidden": None, "head_rates": (6, 12, 18, 24), "size": FULL, "batch": 1},
}
_per_image: dict[tuple[str, str], float] = {}


def _targets(batch, size):
    g = torch.Generator().manual_seed(0)
    return {"segment_semantic": torch.randint(0, 40, (batch, size, size), generator=g),
            "normal": torch.nn.functional.normalize(torch.randn(batch, 3, size, size, generator=g), dim=1),
            "depth_zbuffer": torch.rand(batch, 1, size, size, generator=g) + 0.5}


@pytest.mark.parametrize("variant", ["tiny", "full"])
@pytest.mark.parametrize("layout", ["AS", "IND"])
def test_forward_backward(benchmark, variant, layout):
    cfg = VARIANTS[variant]
    model = BranchedModel(layout, CHANNELS, width=cfg["width"], head_hidden=cfg["head_hidden"],
                          head_rates=cfg["head_rates"]).train()
    x = torch.rand(cfg["batch"], 3, cfg["size"], cfg["size"])
    targets = _targets(cfg["batch"], cfg["size"])

    def step():
        model.zero_grad(set_to_none=True)
        total_loss(TASKS, model(x), targets).backward()

    step()  # warm-up
    rounds = 5 if variant == "tiny" else 2
    benchmark.pedantic(step, rounds=rounds, iterations=1)
    per_image = benchmark.stats.stats.mean / cfg["batch"]
    _per_image[(variant, layout)] = per_image
    benchmark.extra_info.update({"seconds_per_image": per_image, "image_size": cfg["size"],
                                 "backbone_params_M": model.backbone_parameters() / 1e6})
    if layout == "IND" and (variant, "AS") in _per_image:
        benchmark.extra_info["IND_over_AS"] = per_image / _per_image[(variant, "AS")]
