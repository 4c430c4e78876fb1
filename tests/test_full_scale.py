"""The full suites at scale on a CPU: a default cell time limit that grows with the cell's measured
cost, resumable training with honest progress after a resume, ImageNet weights supplied offline,
and a data root with another labelling of NYUv2 named before any training."""

import json
import re
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from benchmark.attacks import Attack, clip_to_ball, register_attack
from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.runner import ResultsStore, RunOptions, run
from benchmark.zoo.checkpoint import CheckpointError, file_sha256
from benchmark.zoo.imagenet import ImagenetSource, download_imagenet

BATCH_SLEEP_S = 0.4


@pytest.fixture
def slow_attack():
    @register_attack("test-slow-batches")
    class SlowBatches(Attack):
        """Sleeps a fixed time on every batch, then adds +eps noise."""

        def perturb(self, model, images, targets, *, tasks, eps, generator):
            time.sleep(BATCH_SLEEP_S)
            return clip_to_ball(images + eps, images, eps)

    return "test-slow-batches"


def _slow_manifest(mini, tmp_path, timeout: float) -> Path:
    manifest = tmp_path / "slow.toml"  # the mini suite with a profile of 3 batches and a short default limit
    manifest.write_text(Path(mini).read_text() + textwrap.dedent(f"""
        [profiles.slow]
        eps = [8]
        attacks = ["fgsm:total"]
        eval_size = 6
        batch_size = 2
        cell_timeout = {timeout}
        """))
    return manifest


def test_the_profiles_default_time_limit_grows_to_twice_the_cells_projected_time(mini, tmp_path, slow_attack):
    """3 batches of 0.4 s against a default limit of 1 s: the limit becomes 2 x 3 x (first batch),
    the cell is valid and its stored config says the limit it ran under; the same limit given by
    the user (--cell-timeout) is kept as it is and fails the cell."""
    manifest = _slow_manifest(mini, tmp_path, 1.0)
    db = tmp_path / "r.db"
    run(RunOptions(suite=str(manifest), profile="slow", results=str(db), attacks=[slow_attack], models=["AS"],
                   workers=1))
    with ResultsStore(db, readonly=True) as store:
        (cell,) = store.cells()
    assert cell.status == "valid", cell.reason
    assert 2 * 3 * BATCH_SLEEP_S <= cell.config["timeout_s"] < 2 * 3 * BATCH_SLEEP_S + 5
    db2 = tmp_path / "r2.db"
    run(RunOptions(suite=str(manifest), profile="slow", results=str(db2), attacks=[slow_attack], models=["AS"],
                   workers=1, cell_timeout=1.0))
    with ResultsStore(db2, readonly=True) as store:
        (cell,) = store.cells()
    assert cell.status == "failed" and "time limit of 1 s" in cell.reason


def test_a_grown_limit_is_the_one_a_timeout_names(mini, tmp_path):
    """A cell whose later batches are slower than its first outruns even the grown limit; it fails
    with that limit (not the profile's) in its message."""

    @register_attack("test-slowing-batches")
    class SlowingBatches(Attack):
        def perturb(self, model, images, targets, *, tasks, eps, generator):
            self.calls = getattr(self, "calls", 0) + 1
            time.sleep(0.1 if self.calls <= 2 else 1.0)  # batch 1: two calls (the determinism check)
            return clip_to_ball(images + eps, images, eps)

    manifest = _slow_manifest(mini, tmp_path, 0.6)
    db = tmp_path / "r.db"
    run(RunOptions(suite=str(manifest), profile="slow", results=str(db), attacks=["test-slowing-batches"],
                   models=["AS"], workers=1))
    with ResultsStore(db, readonly=True) as store:
        (cell,) = store.cells()
    limit = float(re.search(r"time limit of ([0-9.]+) s", cell.reason).group(1))
    assert cell.status == "failed" and limit > 0.6, cell.reason  # the grown limit, not the profile's


def test_progress_after_a_resume_counts_only_the_steps_done_since(monkeypatch):
    """A training resumed at step 500 of 1000 that does 100 steps in 100 s has 400 s left, not
    the 80 s a rate over all 600 steps gives."""
    import benchmark.progress as progress

    base = time.perf_counter()  # the tasks' own clocks start at the real time
    clock = [base]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: clock[0])
    console = Console(record=True, width=200, force_terminal=False)
    bar = progress.PlainProgress(console, every_s=1.0)
    task = bar.add_task("train AS", total=1000)
    bar.update(task, completed=500)  # the resumed step, said at once
    clock[0] = base + 100.0
    bar.update(task, completed=600)
    line = console.export_text().strip().splitlines()[-1]
    assert "600/1000" in line and "ETA 0:06:40" in line, line
    fresh = progress.PlainProgress(console, every_s=1.0)  # a fresh task: 100 steps in 100 s, 900 left
    clock[0] = base = time.perf_counter()
    task = fresh.add_task("train IND", total=1000)
    clock[0] = base + 50.0
    fresh.update(task, advance=50)
    clock[0] = base + 100.0
    fresh.update(task, advance=50)
    assert "ETA 0:15:00" in console.export_text().strip().splitlines()[-1]


def test_a_resumed_training_says_where_it_resumed(mini_suite, tmp_path, monkeypatch, capsys):
    import benchmark.training as train
    from benchmark.suites import load_suite
    from benchmark.zoo.build import build_member, with_training

    manifest, home = mini_suite
    monkeypatch.setenv("MTLBENCH_HOME", str(home))
    suite = with_training(load_suite(manifest), checkpoint_every=2, steps=4)
    real = train._save_state

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_save_state", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_member(suite, suite.member("AS"), out_dir=tmp_path / "m")
    monkeypatch.setattr(train, "_save_state", real)
    capsys.readouterr()
    build_member(suite, suite.member("AS"), out_dir=tmp_path / "m")
    assert "resumed at step 2 of 4 from" in capsys.readouterr().err


def test_zoo_build_takes_the_resume_interval_without_changing_the_recipe(monkeypatch, capsys):
    import benchmark.zoo.build as build

    seen = {}

    def fake_build(suite, members, **kwargs):
        seen.update(kwargs["training"])
        changed = build.with_training(suite, **{k: v for k, v in kwargs["training"].items() if v is not None})
        seen["same_recipe"] = changed.training_id == suite.training_id
        return {}

    monkeypatch.setattr(build, "build_suite", fake_build)
    assert main(["zoo", "build", "tiny-nyuv2-resnet34", "--model", "AS", "--checkpoint-every", "50"]) == 0
    assert seen["checkpoint_every"] == 50 and seen["same_recipe"]
    with pytest.raises(SystemExit) as info:
        main(["zoo", "build", "tiny-nyuv2-resnet34", "--checkpoint-every", "0"])
    assert info.value.code == 2


# ---------------------------------------------------------------------- ImageNet weights offline
@pytest.fixture
def offline_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.delenv("MTLBENCH_IMAGENET_FILE", raising=False)
    return tmp_path / "hf" / "hub"


def _source(path: Path) -> ImagenetSource:
    return ImagenetSource("fixture/resnet-34", "b" * 40, file_sha256(path))


def test_imagenet_weights_missing_offline_say_how_to_get_them(tmp_path, offline_cache):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    with pytest.raises(UserError) as info:
        download_imagenet(_source(weights))
    text = str(info.value)
    assert f"fixture/resnet-34@{'b' * 40}/model.safetensors" in text  # the whole revision, not 12 characters
    assert "hf_hub_download('fixture/resnet-34', 'model.safetensors', revision='" + "b" * 40 + "')" in text
    assert str(offline_cache) in text and "--imagenet-file PATH" in text and file_sha256(weights) in text


def test_a_local_imagenet_file_is_checked_against_the_pin(tmp_path, offline_cache, monkeypatch):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"weights")
    source = _source(weights)
    assert download_imagenet(source, local_file=weights) == weights
    monkeypatch.setenv("MTLBENCH_IMAGENET_FILE", str(weights))  # the option's way to the workers
    assert download_imagenet(source) == weights
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"other weights")
    with pytest.raises(CheckpointError) as info:
        download_imagenet(source, local_file=other)
    assert f"{other} has sha256 {file_sha256(other)}, not the pinned {source.sha256}" in str(info.value)
    assert f"delete {other}" in str(info.value)
    with pytest.raises(UserError, match="is not a file"):
        download_imagenet(source, local_file=tmp_path / "absent.safetensors")


def test_zoo_train_with_a_local_imagenet_file_and_no_network(tmp_path, offline_cache, monkeypatch, capsys):
    from test_data import _write_nyuv2
    from test_full_suites import REAL_SUITE, _fake_imagenet

    weights = tmp_path / "imagenet.safetensors"
    _fake_imagenet(weights, "resnet34", "transformers")
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "home"))
    data = tmp_path / "nyuv2"
    _write_nyuv2(data, n=4, h=24, w=24)
    manifest = tmp_path / "real.toml"
    manifest.write_text(textwrap.dedent(REAL_SUITE.format(repo="fixture/resnet-34", revision="c" * 40,
                                                          sha=file_sha256(weights))))
    out = tmp_path / "weights"
    args = ["zoo", "train", str(manifest), "--model", "AS", "--data-root", str(data), "--out", str(out),
            "--workers", "1"]
    assert main(args) == 2 and "--imagenet-file PATH" in " ".join(capsys.readouterr().err.split())
    assert main([*args, "--imagenet-file", str(weights)]) == 0
    config = json.loads((out / "AS" / "config.json").read_text())
    assert config["training"]["imagenet"]["sha256"] == file_sha256(weights)


# ---------------------------------------------------------------------- another labelling of NYUv2
def _write_labels(root: Path, n: int, classes: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        for sub in ("img", "seg", "normal", "depth"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"img/{i}.png")
        Image.fromarray(rng.integers(0, classes, (8, 8), dtype=np.uint8)).save(root / f"seg/{i}.png")
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / f"normal/{i}.png")
        np.save(root / f"depth/{i}.npy", rng.uniform(1, 5, (8, 8)).astype(np.float32))
        rows.append([f"img/{i}.png", f"seg/{i}.png", f"normal/{i}.png", f"depth/{i}.npy"])
    (root / "nyu_v2_3task.json").write_text(json.dumps({"train": rows, "test": rows}))


def test_a_13_class_nyuv2_root_is_named_for_a_40_class_suite(tmp_path):
    from benchmark.data.real import NYUv2

    _write_labels(tmp_path / "13", 12, 13)
    with pytest.warns(UserWarning, match=r"use only classes 0-12 of the suite's 40 .*13-class"):
        NYUv2(tmp_path / "13", "test")
    _write_labels(tmp_path / "40", 12, 40)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(NYUv2(tmp_path / "40", "test")) == 12


# ---------------------------------------------------------------------- reduced precision, opt-in
def test_bf16_is_an_attack_option_kept_apart_from_float32(mini, tmp_path, slow_attack):
    from benchmark.attacks import create_attack

    with pytest.raises(UserError, match="precision must be one of float32, bf16"):
        create_attack("pgd:gb-mta", precision="fp8")
    db = tmp_path / "r.db"
    common = {"suite": str(mini), "results": str(db), "attacks": ["pgd:gb-mta", "fgsm:total"], "eps": [8],
              "models": ["AS"], "workers": 1}
    run(RunOptions(**common))
    run(RunOptions(**common, precision="bf16"))
    with ResultsStore(db, readonly=True) as store:
        cells = store.cells()
    assert len(cells) == 4 and {c.status for c in cells} == {"valid"}
    by = {(c.attack, c.config["options"].get("precision", "float32")): c for c in cells}
    assert set(by) == {(a, p) for a in ("pgd:gb-mta", "fgsm:total") for p in ("float32", "bf16")}
    # the same attack, steps and seed: close (bf16 rounds the forward passes) but not the same cell
    assert abs(by["pgd:gb-mta", "bf16"].arp - by["pgd:gb-mta", "float32"].arp) < 5
    assert by["pgd:gb-mta", "bf16"].key != by["pgd:gb-mta", "float32"].key
    with pytest.raises(UserError, match="has no precision option"):
        run(RunOptions(**{**common, "attacks": [slow_attack]}, precision="bf16"))
