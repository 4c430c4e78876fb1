"""Synthetic scenes rendered per second on this machine (2 threads), at 64x64 and 321x321."""

import pytest

from benchmark.data import SyntheticScenes


@pytest.mark.parametrize(("resolution", "count"), [(64, 512), (321, 16)])
def test_scenes_per_second(benchmark, resolution, count):
    ds = SyntheticScenes("taskonomy", "train", size=count, resolution=resolution, cache=False)
    batch = benchmark.pedantic(ds.render, args=(range(count),), rounds=2, iterations=1)
    assert batch["image"].shape == (count, 3, resolution, resolution)
    benchmark.extra_info["scenes_per_second"] = count / benchmark.stats.stats.mean
