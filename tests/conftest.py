import json
import os
from pathlib import Path

import pytest
import torch
from manifests import AS_AND_LAYOUT_9

DATA = Path(__file__).parent / "data"

pytest_plugins = ["pytester"]

# runs in tests stay in their own process (spawning worker processes for a few cells would cost
# more than the cells); tests/test_runner.py checks the worker processes themselves
os.environ.setdefault("MTLBENCH_WORKERS", "1")


@pytest.fixture(scope="session")
def paper_layouts() -> dict:
    """Tables 4, 6, 16 and 17 of the paper: layouts, paper indices and backbone parameters."""
    return json.loads((DATA / "paper_layouts.json").read_text())


@pytest.fixture(autouse=True)
def _registries():
    """Every registry (attacks, objectives, defenses, backbones, task sets) and the list of imported
    plugin modules as they were before the test: what a test registers is gone after it, so no test
    depends on another's plugins."""
    from benchmark import registry
    from benchmark.attacks.objectives import OBJECTIVES
    from benchmark.attacks.registry import ATTACKS
    from benchmark.defenses.registry import DEFENSES
    from benchmark.models.backbones import BACKBONES
    from benchmark.tasks import DATASET_TASKS

    saved = [(r, dict(r._items), r._plugins_loaded) for r in (ATTACKS, OBJECTIVES, DEFENSES, BACKBONES, DATASET_TASKS)]
    imported = dict(registry._IMPORTED)
    yield
    for r, items, loaded in saved:
        r._items.clear()
        r._items.update(items)
        r._plugins_loaded = loaded
    registry._IMPORTED.clear()
    registry._IMPORTED.update(imported)


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_nyu():
    """A tiny all-shared NYUv2 model trained briefly on synthetic scenes, with a test batch."""
    from benchmark.data import SyntheticScenes
    from benchmark.models import BranchedModel
    from benchmark.tasks import get_tasks
    from benchmark.training import TrainRecipe, train_model

    torch.manual_seed(0)
    torch.set_num_threads(2)
    tasks = get_tasks("nyuv2")
    model = BranchedModel("AS", {t.name: t.channels for t in tasks}, width=0.125, head_hidden=24,
                          head_rates=(1, 2, 3))
    train = SyntheticScenes("nyuv2", "train", size=256, resolution=32)
    train_model(model, tasks, train, TrainRecipe(steps=150, batch_size=16, lr=3e-3))
    batch = SyntheticScenes("nyuv2", "test", size=8, resolution=32).render(range(8))
    return model.eval(), tasks, batch


@pytest.fixture
def wide_console(monkeypatch):
    """The CLI's rich console at a fixed wide width, so table cells are not wrapped in captures."""
    import benchmark.cli as package
    from benchmark.cli import common, explore, report, run, zoo
    from benchmark.progress import make_console

    out, err = make_console(width=300), make_console(width=300, stderr=True)
    for module in (package, common, explore, report, run, zoo):  # each command group prints through its own binding
        monkeypatch.setattr(module, "console", out, raising=False)
        monkeypatch.setattr(module, "err_console", err, raising=False)


MINI_SUITE = """
[suite]
name = "mini-run"
dataset = "nyuv2"
data = "synthetic-nyuv2"
width = 0.125
input_size = 32
head_hidden = 16
head_rates = [1, 2]

[training]
steps = 40
batch_size = 8
lr = 0.003
train_size = 64
warm_start = "AS"
finetune_steps = 5

[defenses]
steps = 12
batch_size = 8
lr = 0.001
attack_steps = 2
tau = 2
checkpoint_every = 4
train_size = 64

[profiles.quick]
eps = [4, 8]
attacks = ["fgsm:total", "pgd:gb-mta"]
steps = { pgd = 2 }
eval_size = 4
batch_size = 2

""" + AS_AND_LAYOUT_9


@pytest.fixture
def mini(mini_suite, monkeypatch):
    """The mini suite's manifest, with MTLBENCH_HOME set to the home its models are built in."""
    manifest, home = mini_suite
    monkeypatch.setenv("MTLBENCH_HOME", str(home))
    return manifest


@pytest.fixture(scope="session")
def mini_suite(tmp_path_factory):
    """A 2-model synthetic suite (AS and layout 9 at 32x32), built once; returns (manifest path,
    MTLBENCH_HOME). Tests set MTLBENCH_HOME to that home to use the built models."""
    import os

    from benchmark.zoo.build import build_suite

    root = tmp_path_factory.mktemp("mini-suite")
    manifest = root / "mini-run.toml"
    manifest.write_text(MINI_SUITE)
    home = root / "home"
    old = os.environ.get("MTLBENCH_HOME")
    os.environ["MTLBENCH_HOME"] = str(home)
    try:
        build_suite(str(manifest))
    finally:
        if old is None:
            os.environ.pop("MTLBENCH_HOME")
        else:
            os.environ["MTLBENCH_HOME"] = old
    return manifest, home


@pytest.fixture(scope="session")
def example_package(tmp_path_factory):
    """examples/my_attack installed (built as a wheel, with its entry point) into a folder that a
    subprocess puts on its PYTHONPATH: the test's own environment is left as it was."""
    import subprocess
    import sys

    target = tmp_path_factory.mktemp("example-site")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target",
                    str(target), str(Path(__file__).parents[1] / "examples" / "my_attack")],
                   check=True, capture_output=True, timeout=600)
    return target
