"""The full suites as a researcher with the real data meets them: ImageNet-initialised training
from a (fixture) Hub cache, resumable training, a limit on the images, honest exits and messages,
and progress that a log shows."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from fakehub import FakeHub
from safetensors.torch import save_file
from torch import nn

from benchmark.cli import main
from benchmark.models.backbones import build_backbone
from benchmark.runner import ResultsStore, RunOptions, run
from benchmark.suites import load_suite
from benchmark.zoo.checkpoint import file_sha256
from benchmark.zoo.imagenet import imagenet_blocks

RESNET_REPO, MBV2_REPO, REVISION = "fixture/resnet-34", "fixture/mobilenetv2_100", "a" * 40


def _convs(module: nn.Module):
    layers = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    return list(zip(layers[::2], layers[1::2], strict=True))


def _foreign_names(backbone: str, naming: str) -> list[tuple[str, str]]:
    """The (convolution, batch norm) names of the layers of a full-width backbone, in the order
    they run, as the other libraries name them (written out here independently of mtlbench's)."""
    if backbone == "resnet34":
        depths = (3, 4, 6, 3)
        if naming == "torchvision":
            names = [("conv1", "bn1")]
            for layer, n in enumerate(depths, start=1):
                for b in range(n):
                    p = f"layer{layer}.{b}."
                    names += [(p + "conv1", p + "bn1"), (p + "conv2", p + "bn2")]
                    if b == 0 and layer > 1:
                        names.append((p + "downsample.0", p + "downsample.1"))
            return names
        names = [("resnet.embedder.embedder.convolution", "resnet.embedder.embedder.normalization")]
        for stage, n in enumerate(depths):
            for b in range(n):
                p = f"resnet.encoder.stages.{stage}.layers.{b}."
                names += [(p + f"layer.{i}.convolution", p + f"layer.{i}.normalization") for i in (0, 1)]
                if b == 0 and stage > 0:
                    names.append((p + "shortcut.convolution", p + "shortcut.normalization"))
        return names
    names = [("conv_stem", "bn1"), ("blocks.0.0.conv_dw", "blocks.0.0.bn1"), ("blocks.0.0.conv_pw", "blocks.0.0.bn2")]
    for stage, n in enumerate((2, 3, 4, 3, 3, 1), start=1):
        for b in range(n):
            p = f"blocks.{stage}.{b}."
            names += [(p + "conv_pw", p + "bn1"), (p + "conv_dw", p + "bn2"), (p + "conv_pwl", p + "bn3")]
    return [*names, ("conv_head", "bn2")]


def _fake_imagenet(path, backbone: str, naming: str) -> dict:
    """A weights file in another library's naming, from a randomly initialised backbone (whose
    tensors are returned by our block-local names, to compare with)."""
    torch.manual_seed(1)
    spec = build_backbone(backbone, width=1.0)
    flat = [pair for block in spec.blocks for pair in _convs(block)]
    names = _foreign_names(backbone, naming)
    assert len(flat) == len(names)
    state = {}
    for (conv, bn), (conv_name, bn_name) in zip(flat, names, strict=True):
        with torch.no_grad():
            bn.running_mean.normal_()
            bn.running_var.uniform_(0.5, 2)
            bn.weight.normal_()
        state[f"{conv_name}.weight"] = conv.weight.detach().clone()
        for key in ("weight", "bias", "running_mean", "running_var"):
            state[f"{bn_name}.{key}"] = getattr(bn, key).detach().clone()
        state[f"{bn_name}.num_batches_tracked"] = torch.tensor(7)
    state["fc.weight" if naming != "transformers" else "classifier.1.weight"] = torch.randn(10, 4)  # not ours
    save_file(state, str(path))
    return [block.state_dict() for block in spec.blocks]


@pytest.mark.parametrize("backbone, naming", [("resnet34", "torchvision"), ("resnet34", "transformers"),
                                              ("mobilenetv2", "timm")])
def test_imagenet_weights_map_onto_every_layer(tmp_path, backbone, naming):
    expected = _fake_imagenet(tmp_path / "w.safetensors", backbone, naming)
    blocks = imagenet_blocks(tmp_path / "w.safetensors", backbone, 1.0, None)
    assert len(blocks) == len(expected) == 5
    for got, want in zip(blocks, expected, strict=True):
        for key, value in want.items():
            if not key.endswith("num_batches_tracked"):
                assert torch.equal(got[key], value), key


def test_imagenet_weights_of_another_network_are_refused(tmp_path):
    from benchmark.zoo.checkpoint import CheckpointError

    _fake_imagenet(tmp_path / "w.safetensors", "mobilenetv2", "timm")
    with pytest.raises(CheckpointError, match="not a resnet34 this mtlbench can read"):
        imagenet_blocks(tmp_path / "w.safetensors", "resnet34", 1.0, None)
    with pytest.raises(Exception, match="width 1"):
        imagenet_blocks(tmp_path / "w.safetensors", "mobilenetv2", 0.5, None)


REAL_SUITE = """
[suite]
name = "real-r34"
dataset = "nyuv2"
data = "nyuv2"
width = 1.0
input_size = 24
head_hidden = 8
head_rates = [1, 2]

[training]
steps = 2
batch_size = 2
lr = 0.001
train_size = 4
init = "imagenet"
checkpoint_every = 2

[training.imagenet]
repo_id = "{repo}"
revision = "{revision}"
sha256 = "{sha}"

[profiles.quick]
eps = [8]
attacks = ["fgsm:total"]

[[models]]
name = "AS"
layout = "AS"

[[models]]
name = "IND"
layout = "IND"
"""


@pytest.fixture
def fixture_hub(tmp_path, monkeypatch):
    """A fake Hub serving fake ResNet-34 ImageNet weights (transformers naming) at a pinned commit,
    with huggingface_hub's cache in the test's folder."""
    weights = tmp_path / "imagenet.safetensors"
    _fake_imagenet(weights, "resnet34", "transformers")
    hub = FakeHub().install()
    hub.repos[RESNET_REPO] = {REVISION: {"model.safetensors": weights.read_bytes()}}
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    yield hub, file_sha256(weights)
    FakeHub.uninstall()


def test_zoo_train_init_imagenet_from_a_hub_cache(fixture_hub, tmp_path, monkeypatch, capsys):
    """Every member starts from the pinned ImageNet weights (downloaded once, then read from the
    cache offline) for the same budget; the card records the source."""
    from test_data import _write_nyuv2

    hub, sha = fixture_hub
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "home"))
    data = tmp_path / "nyuv2"
    _write_nyuv2(data, n=4, h=24, w=24)
    manifest = tmp_path / "real.toml"
    manifest.write_text(textwrap.dedent(REAL_SUITE.format(repo=RESNET_REPO, revision=REVISION, sha=sha)))
    out = tmp_path / "weights"
    assert main(["zoo", "train", str(manifest), "--model", "AS", "--data-root", str(data), "--out", str(out),
                 "--batch-size", "2", "--workers", "1"]) == 0
    config = json.loads((out / "AS" / "config.json").read_text())
    assert config["training"]["init"] == "imagenet" and config["training"]["warm_start"] is None
    assert config["training"]["imagenet"] == {"repo_id": RESNET_REPO, "revision": REVISION, "sha256": sha,
                                              "file": "model.safetensors"}
    assert "ImageNet" in (out / "AS" / "README.md").read_text()
    hub.offline = True  # from the cache alone
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["zoo", "train", str(manifest), "--model", "IND", "--data-root", str(data), "--out", str(out),
                 "--workers", "1"]) == 0
    assert json.loads((out / "IND" / "config.json").read_text())["training"]["init"] == "imagenet"
    bad = tmp_path / "bad.toml"
    bad.write_text(manifest.read_text().replace(sha, "0" * 64))
    assert main(["zoo", "train", str(bad), "--model", "AS", "--data-root", str(data), "--out",
                 str(tmp_path / "other"), "--workers", "1"]) == 2
    assert ", not the pinned " in " ".join(capsys.readouterr().err.split())


def test_a_killed_training_resumes_to_the_same_weights(mini_suite, tmp_path, monkeypatch):
    """A member's training saves its state every checkpoint_every steps; one killed mid-way and
    started again ends with exactly the weights of a run that was never interrupted."""
    import benchmark.training as train
    from benchmark.zoo.build import build_member, with_training

    manifest, home = mini_suite
    monkeypatch.setenv("MTLBENCH_HOME", str(home))
    suite = with_training(load_suite(manifest), checkpoint_every=3, steps=8)
    member = suite.member("AS")
    whole = build_member(suite, member, out_dir=tmp_path / "whole")
    real = train._save_state
    saves = []

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        saves.append(args[4])
        if args[4] == 6:
            raise KeyboardInterrupt  # killed after the state of step 6 was written

    monkeypatch.setattr(train, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_member(suite, member, out_dir=tmp_path / "again")
    assert saves == [3, 6] and (tmp_path / "again" / "resume.safetensors").exists()
    monkeypatch.setattr(train, "_save_state", real)
    again = build_member(suite, member, out_dir=tmp_path / "again")
    from safetensors.torch import load_file

    a, b = load_file(whole / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((again / "config.json").read_text())["training"]["resumed_at_step"] == 6
    assert not (again / "resume.safetensors").exists()


def test_images_limits_the_work_and_is_recorded(mini, tmp_path, capsys, wide_console):
    db = tmp_path / "r.db"
    assert main(["run", "--suite", str(mini), "--models", "AS", "--attacks", "fgsm:total", "--eps", "8",
                 "--images", "2", "--results", str(db)]) == 0
    with ResultsStore(db, readonly=True) as store:
        (cell,) = store.cells()
    assert cell.images == 2 and cell.config["images"] == 2
    from leaderboard import render_leaderboard

    html = render_leaderboard(db, tmp_path / "site", plots_enabled=False).read_text()
    assert "2 images per cell" in html


def test_a_full_suite_without_weights_or_data_says_so_and_fails(tmp_path, capsys, wide_console, monkeypatch):
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "home"))
    assert main(["run", "--suite", "nyuv2-resnet34", "--results", str(tmp_path / "r.db")]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "runs on the real nyuv2 data: pass --data-root DIR" in err and "25 of its 25 models have no weights" in err
    (tmp_path / "data").mkdir()
    assert main(["run", "--suite", "nyuv2-resnet34", "--results", str(tmp_path / "r.db"), "--data-root",
                 str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err
    assert "no model has weights on this machine" in err and "layout-9" in err and "mtlbench zoo import" in err
    assert err.count("skipped") == 0  # one table, not a paragraph per model


def test_a_zero_clean_metric_names_its_task_and_metric():
    from benchmark.scoring import arp
    from benchmark.tasks import get_tasks

    tasks = get_tasks("nyuv2")
    clean = {t.name: dict.fromkeys(t.metrics, 1.0) for t in tasks}
    clean["depth_zbuffer"]["delta_1.25"] = 0.0
    with pytest.raises(ValueError, match=r"got 0.0 for depth_zbuffer delta_1.25"):
        arp(clean, clean, tasks)


def test_degenerate_checkpoints_are_warned_about_before_any_attack(mini, tmp_path, capsys):
    """A --weights-dir checkpoint no better than a constant prediction is named before its cells run."""
    from benchmark.zoo.build import member_model
    from benchmark.zoo.checkpoint import CheckpointInfo, save_checkpoint

    suite = load_suite(mini)
    member = suite.member("AS")
    model = member_model(suite, member)  # untrained
    save_checkpoint(model, CheckpointInfo(model=model.config, dataset=suite.data_source, suite=suite.name,
                                          member="AS", input_size=member.input_size), tmp_path / "w" / "AS")
    run(RunOptions(suite=str(mini), results=str(tmp_path / "r.db"), models=["AS"], attacks=["fgsm:total"], eps=[8],
                   weights_dir=str(tmp_path / "w")))
    err = " ".join(capsys.readouterr().err.split())
    assert "warning: AS from" in err and "degenerate clean metrics" in err and "no better than a constant" in err


def test_a_run_off_a_terminal_prints_progress_while_a_long_cell_runs(mini, tmp_path, monkeypatch, capsys):
    import importlib

    import benchmark.progress as prog

    runner = importlib.import_module("benchmark.runner.run")  # the module (the package exports run, the function)

    monkeypatch.setenv("MTLBENCH_PLUGINS", str(Path(__file__).parent / "plugin_bad_attacks.py"))
    monkeypatch.setenv("MTLBENCH_TEST_SLEEP", "1.5")
    monkeypatch.setattr(prog, "PLAIN_EVERY_S", 0.3)
    monkeypatch.setattr(runner, "TICK_S", 0.1)
    run(RunOptions(suite=str(mini), results=str(tmp_path / "r.db"), models=["AS"], attacks=["test-slow"], eps=[8],
                   images=1))
    lines = [line for line in capsys.readouterr().err.splitlines() if "mini-run [quick]: 0/1" in line]
    assert len(lines) >= 2, lines
