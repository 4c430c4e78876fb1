"""The tiny suites' members ship with mtlbench, pinned by sha256 in their manifests: every machine
attacks the same weights, a first run trains nothing, and ``mtlbench zoo build`` still reproduces
them from the recipe."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.data import make_loader
from benchmark.evaluation import evaluate
from benchmark.paths import SHIPPED_ZOO
from benchmark.suites import load_suite
from benchmark.zoo.build import build_member, clean_test_set, load_model, training_set
from benchmark.zoo.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, file_sha256, read_config
from benchmark.zoo.hub import shipped_pretext_dir, shipped_root
from benchmark.zoo.locate import locate_member

TINY = ("tiny-nyuv2-resnet34", "tiny-nyuv2-mobilenetv2", "tiny-taskonomy-resnet34")
SHIPPED = [name for name in TINY if any(m.sha256 for m in load_suite(name).members)]
#: the most a suite's shipped weights may take in the repository
BUDGET_BYTES = 64 * 2**20
#: the most all shipped weights together may take (160 MB)
TOTAL_BUDGET_BYTES = 160 * 10**6
REFERENCE = Path(__file__).parent / "data" / "tiny_build_reference.json"


def _shipped_bytes(root: Path) -> int:
    """The bytes of every file under ``root`` (weights, configs and cards)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _constant_predictor(suite):
    test = clean_test_set(suite).materialize()
    out = {}
    for task in suite.tasks:
        metric = task.new_metric()
        metric.update(task.trivial_prediction(test), test)
        out[task.name] = metric.compute()
    return out


def test_tiny_nyuv2_resnet34_ships_with_its_demo_defense():
    """The default suite a new user meets ships whole: its 25 members and the FAT model the demo
    attacks."""
    suite = load_suite("tiny-nyuv2-resnet34")
    assert "tiny-nyuv2-resnet34" in SHIPPED
    assert all(m.sha256 for m in suite.members)
    assert suite.defended_sha256.get("fat:pgd:gb-mta", {}).get("AS")
    assert "fat:pgd:gb-mta" in suite.profile("quick").defenses


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_member_loads_through_its_pin(name):
    """Each pinned member resolves to the shipped folder, was trained with the manifest's recipe,
    stores float16 weights, loads with its sha256 checked, and clearly beats a constant
    predictor on every task; the suite's weights stay within the size budget."""
    from benchmark.scoring import task_arp

    suite = load_suite(name)
    trivial = _constant_predictor(suite)
    for member in suite.members:
        assert member.sha256, f"{name}/{member.name} is not pinned"
        location = locate_member(suite, member)
        directory = location.directory
        assert location.origin == "shipped" and directory == shipped_root(suite) / member.name
        assert location.sha256 == member.sha256
        assert file_sha256(directory / WEIGHTS_FILE) == member.sha256
        info = read_config(directory)
        assert info.training["recipe_id"] == suite.training_id and info.training["weights_dtype"] == "float16"
        model, loaded = load_model(suite, member)
        assert loaded.origin == "shipped" and not model.training
        gain = task_arp(trivial, info.clean_metrics, suite.tasks)  # negative: better than the constant
        assert all(v < -10 for v in gain.values()), (member.name, gain)
    size = _shipped_bytes(shipped_root(suite))
    assert size <= BUDGET_BYTES, f"{name}: {size / 2**20:.1f} MB of shipped weights"


def test_the_stored_clean_metrics_are_those_of_the_stored_weights():
    """A member's card reports the metrics of the float16 values it ships (re-measured here; the
    same numbers up to float rounding on another CPU)."""
    suite = load_suite("tiny-nyuv2-resnet34")
    for name in ("AS", "IND"):
        model, info = load_model(suite, name)
        again = evaluate(model, suite.tasks, make_loader(clean_test_set(suite), 32))
        for task, metrics in info.clean_metrics.items():
            for key, value in metrics.items():
                assert again[task][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (name, task, key)


@pytest.mark.parametrize("name", TINY)
def test_no_tiny_suite_trains_on_first_use(tmp_path, monkeypatch, name):
    """Every tiny suite's targets (every member, and the defended models of its quick profile) are
    all there in a fresh MTLBENCH_HOME: a first run of any of them trains nothing."""
    import benchmark.defenses.training as adversarial
    import benchmark.zoo.build as build
    from benchmark.runner import RunOptions
    from benchmark.runner.run import build_targets

    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "fresh"))

    def refuse(*args, **kwargs):
        raise AssertionError("trained a model")

    monkeypatch.setattr(build, "train_model", refuse)
    monkeypatch.setattr(adversarial, "adversarial_training", refuse)
    build_targets(RunOptions(suite=name, profile="quick"), whole_suite=True)
    assert not (tmp_path / "fresh" / "zoo" / name).exists()


def test_all_shipped_weights_fit_the_budget():
    """What the tiny suites ship together (weights, configs and cards) stays within the
    repository's budget for weights."""
    size = _shipped_bytes(SHIPPED_ZOO)
    assert size <= TOTAL_BUDGET_BYTES, f"{size / 10**6:.1f} MB of shipped weights in all"


def test_a_damaged_shipped_file_names_itself_and_the_fix(tmp_path, monkeypatch):
    import benchmark.paths as paths

    suite = load_suite("tiny-nyuv2-resnet34")
    copy = tmp_path / "weights" / suite.name
    real = shipped_root(suite)
    shutil.copytree(real / "AS", copy / "AS")
    monkeypatch.setattr(paths, "SHIPPED_ZOO", tmp_path / "weights")
    raw = bytearray((copy / "AS" / WEIGHTS_FILE).read_bytes())
    raw[-3] ^= 0xFF
    (copy / "AS" / WEIGHTS_FILE).write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"AS/model.safetensors: sha256 .* does not match the pinned .*"
                                              r"either the file was changed \(it ships with mtlbench: reinstall "
                                              r"mtlbench.* or the pin was \(the manifest .*tiny-nyuv2-resnet34.toml, "
                                              r"\[weights\] AS = "):
        load_model(suite, "AS")
    # a file of a shipped checkpoint that is gone is named, never trained anew
    (copy / "AS" / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"AS/config.json is missing from the weights of "
                                              r"tiny-nyuv2-resnet34/AS that ship with mtlbench"):
        load_model(suite, "AS")
    shutil.copytree(real / "IND", copy / "IND")
    (copy / "IND" / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"IND/model.safetensors is missing from the weights"):
        load_model(suite, "IND")


def test_a_shipped_checkpoint_set_aside_says_why_before_its_member_trains(tmp_path, monkeypatch):
    """A manifest without the pin of a shipped member builds it, saying first that the shipped file
    is set aside and why."""
    from benchmark.zoo.locate import shipped_set_aside

    text = load_suite("tiny-nyuv2-resnet34").path.read_text()
    import re

    pin = re.search(r'^AS = "[0-9a-f]{64}"\n', text, re.M).group(0)
    (tmp_path / "no-pin.toml").write_text(text.replace(pin, "", 1))
    suite = load_suite(tmp_path / "no-pin.toml")
    assert "pins no sha256 for AS" in shipped_set_aside(suite, suite.member("AS"))
    assert shipped_set_aside(suite, suite.member("IND")) == ""


def test_an_edited_recipe_builds_locally_instead_of_using_the_shipped_weights(tmp_path, monkeypatch):
    """The pins name the weights of the manifest's recipe: a copy of the manifest with another
    recipe (and the same suite name) does not take them."""
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "home"))
    text = load_suite("tiny-nyuv2-resnet34").path.read_text().replace("steps = 5120", "steps = 5121", 1)
    (tmp_path / "edited.toml").write_text(text)
    edited = load_suite(tmp_path / "edited.toml")
    assert edited.member("AS").sha256  # the pins are still there...
    location = locate_member(edited, edited.member("AS"))
    assert (location.directory, location.origin) == (None, "local")  # ...but not for this recipe


def _reference_build(out: Path) -> dict:
    """AS of tiny-nyuv2-resnet34 trained as ``mtlbench zoo build`` trains it, from the shipped
    pretext backbone and the common heads' draw, for 3 steps on 32 scenes (one thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        suite = load_suite("tiny-nyuv2-resnet34")
        directory = build_member(suite, suite.member("AS"), pretext=shipped_pretext_dir(suite), steps=3,
                                 train_set=training_set(suite, size=32), out_dir=out)
    finally:
        torch.set_num_threads(threads)
    return _summary(directory)


def _reference_fat(out: Path) -> dict:
    """The shipped AS trained with FAT (GB-MTA-PGD) as `mtlbench defend` trains it, for 3 steps on
    32 scenes (one thread)."""
    from benchmark.zoo.defend import defend_suite

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        done = defend_suite("tiny-nyuv2-resnet34", "fat:pgd:gb-mta", ["AS"], out=out, steps=3, train_size=32)
    finally:
        torch.set_num_threads(threads)
    return _summary(done["AS"])


def _summary(directory: Path) -> dict:
    from safetensors.torch import load_file

    state = load_file(directory / WEIGHTS_FILE)
    info = read_config(directory)
    return {"sha256": file_sha256(directory / WEIGHTS_FILE), "device_name": info.training["device_name"],
            "torch": info.training["torch"],
            "sums": {k: float(v.double().sum()) for k, v in state.items() if v.is_floating_point()}}


@pytest.mark.parametrize("what", ["member", "fat"])
def test_training_reproduces_its_reference(tmp_path, what):
    """Training is repeatable, a member's as `mtlbench zoo build` trains it and FAT's as `mtlbench
    defend` does: bit for bit on the CPU (and its kernels' instruction set) and torch build the
    reference was made on, and up to float rounding on another (`python tests/test_shipped_zoo.py`
    writes the references again after a change of a recipe or of the training code)."""
    reference = json.loads(REFERENCE.read_text())[what]
    here = (_reference_build if what == "member" else _reference_fat)(tmp_path / "AS")
    if (here["device_name"], here["torch"]) == (reference["device_name"], reference["torch"]):
        assert here["sha256"] == reference["sha256"]
    assert here["sums"].keys() == reference["sums"].keys()
    for key, value in reference["sums"].items():
        assert here["sums"][key] == pytest.approx(value, rel=2e-3, abs=2e-3), key


def test_a_tiny_bundle_verifies_in_another_process_with_other_threads(tmp_path, capsys):
    """A bundle of the shipped weights made with 2 threads verifies in a fresh process with the
    default 1 thread."""
    bundle = tmp_path / "bundle"
    rc = main(["submit", "fgsm:gb-mta", "--suite", "tiny-nyuv2-resnet34", "--models", "AS", "--eps", "8",
               "--threads", "2", "--workers", "1", "--out", str(bundle)])
    assert rc == 0, capsys.readouterr()
    done = subprocess.run([sys.executable, "-m", "benchmark", "verify", str(bundle)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "verified" in done.stdout, done.stdout + done.stderr


if __name__ == "__main__":  # write the references of test_training_reproduces_its_reference
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        references = {"member": _reference_build(Path(tmp) / "member" / "AS"),
                      "fat": _reference_fat(Path(tmp) / "fat")}
    REFERENCE.write_text(json.dumps(references, indent=1, sort_keys=True) + "\n")
    print(f"wrote {REFERENCE}")
