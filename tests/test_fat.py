"""FAT (training defense): `mtlbench defend` writes a Hub-format checkpoint that records its
defense; FAT with GB-MTA-PGD lowers the ARP of GB-MTA-PGD; FAT's early stop; a killed defend
resumes to the same weights; bad requests are messages."""

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from benchmark.attacks import create_attack
from benchmark.attacks.objectives import output_losses
from benchmark.cli import main
from benchmark.defenses.fat import _loss_ratio, fat_examples
from benchmark.defenses.training import AdversarialRecipe
from benchmark.runner import ResultsStore, RunOptions, run
from benchmark.suites import load_suite
from benchmark.training import RESUME_FILE
from benchmark.zoo.checkpoint import CONFIG_FILE, WEIGHTS_FILE, file_sha256, read_config
from benchmark.zoo.locate import defended_dir


@pytest.fixture
def home(mini_suite, tmp_path, monkeypatch):
    """A private copy of the mini suite's home (defended checkpoints are written into it)."""
    manifest, built = mini_suite
    copy = tmp_path / "home"
    shutil.copytree(built, copy)
    monkeypatch.setenv("MTLBENCH_HOME", str(copy))
    return manifest, copy


def test_fat_gb_mta_lowers_the_arp_of_gb_mta_and_records_its_parent(home, tmp_path, capsys):
    manifest, _ = home
    assert main(["defend", str(manifest), "--defense", "fat:pgd:gb-mta", "--models", "AS", "--steps", "24",
                 "--device", "cpu"]) == 0
    suite = load_suite(manifest)
    out = defended_dir(suite, suite.member("AS"), "fat:pgd:gb-mta")
    info = read_config(out)
    parent = file_sha256(Path(os.environ["MTLBENCH_HOME"]) / "zoo" / "mini-run" / "AS" / WEIGHTS_FILE)
    assert info.defense["spec"] == "fat:pgd:gb-mta" and info.defense["attack"] == "pgd:gb-mta"
    assert info.defense["parent_sha256"] == parent and info.defense["recipe"]["steps"] == 24
    assert info.defense["attack_options"] == {"steps": 2}
    card = (out / "README.md").read_text()
    assert "fat:pgd:gb-mta" in card and parent in card and 'load_checkpoint(".")' in card
    assert not (out / RESUME_FILE).exists()

    db = tmp_path / "r.db"
    summary = run(RunOptions(suite=str(manifest), attacks=["pgd:gb-mta"], eps=[8], models=["AS"],
                             defenses=["none", "fat:pgd:gb-mta"], results=str(db)))
    assert summary.done == {"valid": 2}
    with ResultsStore(db, readonly=True) as store:
        arps = {c.model: c.arp for c in store.cells()}
        described = store.models()
    assert arps["AS+fat:pgd:gb-mta"] < arps["AS"]
    record = next(m for m in described if m["model"] == "AS+fat:pgd:gb-mta")
    assert record["defense_kind"] == "training" and record["trained_with"] == "pgd:gb-mta"
    assert record["parent_sha256"] == parent

    # the defended checkpoint belongs to its parent's weights: one of other weights is stale. Given
    # in --weights-dir it is refused with what to do; in the local zoo of a tiny suite it is trained
    # again on first use, as the members of a tiny suite are rebuilt
    cfg = out / CONFIG_FILE
    cfg.write_text(cfg.read_text().replace(parent, "0" * 64))
    given = tmp_path / "given"
    shutil.copytree(out, given / "defended" / "fat_pgd_gb-mta" / "AS")
    assert main(["run", "--suite", str(manifest), "--models", "AS", "--defenses", "fat:pgd:gb-mta", "--attacks",
                 "fgsm:total", "--eps", "8", "--weights-dir", str(given),
                 "--results", str(tmp_path / "stale.db")]) == 2
    err = capsys.readouterr().err
    assert "parent weights sha256 000000000000" in err and "--rebuild" in err
    assert main(["run", "--suite", str(manifest), "--models", "AS", "--defenses", "fat:pgd:gb-mta", "--attacks",
                 "fgsm:total", "--eps", "8", "--results", str(tmp_path / "again.db")]) == 0
    assert read_config(out).defense["parent_sha256"] == parent


def test_early_stop_keeps_the_point_where_a_sample_stopped(tiny_nyu):
    model, tasks, batch = tiny_nyu
    model = copy.deepcopy(model).eval()
    attack = create_attack("pgd:total", steps=4)
    gen = torch.Generator().manual_seed(0)
    full = fat_examples(attack, model, batch, tasks, AdversarialRecipe(attack_steps=4, tau=4), gen)
    assert torch.equal(full, attack(model, batch["image"], batch, tasks=tasks, eps=8 / 255, generator=gen))
    # every sample is "fooled" at the clean image (ratio 1) and tau = 0: all stop at the first call
    stopped = fat_examples(attack, model, batch, tasks, AdversarialRecipe(attack_steps=4, tau=0, fooled_ratio=1.0), gen)
    assert torch.equal(stopped, batch["image"])
    # tau = 1: a sample still fooled after one PGD step stops there (second call); the others go on
    one_step = create_attack("pgd:total", steps=1, step_size=2.0)
    after_one = one_step(model, batch["image"], batch, tasks=tasks, eps=8 / 255, generator=gen)
    four = create_attack("pgd:total", steps=4, step_size=2.0)
    end = four(model, batch["image"], batch, tasks=tasks, eps=8 / 255, generator=gen)
    got = fat_examples(four, model, batch, tasks, AdversarialRecipe(attack_steps=4, tau=1, fooled_ratio=1.0), gen)
    with torch.no_grad():
        clean = output_losses(model(batch["image"]), batch, tasks)
        still = _loss_ratio(tasks, model(after_one), batch, clean) >= 1.0
    assert still.any()
    assert torch.equal(got[still], after_one[still])
    assert not torch.equal(got, end)
    assert not model.training  # the model is left in the mode it was in


def _defend_cmd(manifest, spec: str = "fat:pgd:total") -> list[str]:
    return [sys.executable, "-m", "benchmark", "defend", str(manifest), "--defense", spec, "--models",
            "AS", "--steps", str(STEPS), "--checkpoint-every", "2", "--device", "cpu"]


#: the killed training's steps: enough that a loaded machine still kills it before it finishes
STEPS = 40


def _resume_step(path: Path) -> int:
    """The step of the resume file at ``path``; -1 while there is none (not yet written, or
    removed by a training that has finished between the poll's check and its read)."""
    import json

    try:
        with safe_open(str(path), "pt") as f:
            return json.loads(f.metadata()["mtlbench-training"])["step"]
    except (FileNotFoundError, RuntimeError):  # safetensors reports a missing file as a RuntimeError
        if path.exists():
            raise
        return -1


@pytest.mark.parametrize("spec", ["fat:pgd:total", "pgdat:pgd:total"])
def test_kill_minus_9_of_defend_resumes_to_the_same_weights(home, tmp_path, spec):
    """Every training defense trains on the same resumable loop."""
    manifest, copy = home
    other = tmp_path / "home-uninterrupted"
    shutil.copytree(copy, other)
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    whole = subprocess.run(_defend_cmd(manifest, spec), env={**env, "MTLBENCH_HOME": str(other)}, capture_output=True,
                           text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr
    suite = load_suite(manifest)
    rel = defended_dir(suite, suite.member("AS"), spec).relative_to(copy)
    reference = file_sha256(other / rel / WEIGHTS_FILE)

    resume = copy / rel / RESUME_FILE
    proc = subprocess.Popen(_defend_cmd(manifest, spec), env={**env, "MTLBENCH_HOME": str(copy)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None and _resume_step(resume) < 6:
            time.sleep(0.05)
        assert proc.poll() is None, "defend finished before the test could kill it"
        assert resume.exists(), "defend did not write a resume checkpoint"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (copy / rel / CONFIG_FILE).exists()  # no finished-looking checkpoint after the kill
    again = subprocess.run(_defend_cmd(manifest, spec), env={**env, "MTLBENCH_HOME": str(copy)}, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    info = read_config(copy / rel)
    assert 6 <= info.training["resumed_at_step"] < STEPS
    assert file_sha256(copy / rel / WEIGHTS_FILE) == reference


def test_defend_refuses_what_it_cannot_train(home, tmp_path, capsys):
    manifest, _ = home
    assert main(["defend", str(manifest), "--defense", "bitdepth:4", "--models", "AS"]) == 2
    assert "inference-time defense" in capsys.readouterr().err
    assert main(["defend", str(manifest), "--defense", "fat:pgd:nope", "--models", "AS"]) == 2
    assert "unknown objective 'nope'" in capsys.readouterr().err
    assert main(["defend", str(manifest), "--models", "AS", "--steps", "0"]) == 2
    assert "recipe.steps: expected an integer in [1" in capsys.readouterr().err
    # a resume file of another training is not silently continued
    suite = load_suite(manifest)
    out = defended_dir(suite, suite.member("AS"), "fat:pgd:gb-mta")
    out.mkdir(parents=True)
    (out / RESUME_FILE).write_bytes(b"not a safetensors file")
    assert main(["defend", str(manifest), "--models", "AS", "--steps", "2"]) == 2
    assert "not a readable FAT resume file" in capsys.readouterr().err
    assert main(["defend", str(manifest), "--models", "AS", "--steps", "2", "--restart"]) == 0
    # a manifest's recipe is checked when the suite loads
    bad = tmp_path / "bad.toml"
    bad.write_text(manifest.read_text().replace("attack_steps = 2", "attack_steps = -2"))
    assert main(["defend", str(bad), "--models", "AS"]) == 2
    assert "fat" in capsys.readouterr().err


def test_defenses_train_in_the_build_workers_once_their_member_is_built(mini, tmp_path, monkeypatch, capsys):
    """A run on a fresh zoo builds the members in worker processes and trains each defense there as
    soon as its member is built; the defended weights equal those `mtlbench defend` trains here."""
    manifest = mini
    fresh = tmp_path / "fresh"
    monkeypatch.setenv("MTLBENCH_HOME", str(fresh))
    summary = run(RunOptions(suite=str(manifest), attacks=["fgsm:total"], eps=[8], models=["AS", "layout-9"],
                             defenses=["none", "fat:pgd:gb-mta"], results=str(tmp_path / "r.db"), workers=2))
    assert summary.done == {"valid": 4}  # AS and layout-9, each without and with FAT
    assert "AS fat:pgd:gb-mta: trained in" in capsys.readouterr().err
    suite = load_suite(manifest)
    out = defended_dir(suite, suite.member("AS"), "fat:pgd:gb-mta")
    parent = file_sha256(fresh / "zoo" / "mini-run" / "AS" / WEIGHTS_FILE)
    assert read_config(out).defense["parent_sha256"] == parent
    in_worker = file_sha256(out / WEIGHTS_FILE)
    # the same training in this process (one worker: the build, then the defense)
    again = tmp_path / "again"
    shutil.copytree(fresh / "zoo" / "mini-run" / "AS", again / "zoo" / "mini-run" / "AS")
    monkeypatch.setenv("MTLBENCH_HOME", str(again))
    assert main(["defend", str(manifest), "--defense", "fat:pgd:gb-mta", "--models", "AS", "--device", "cpu"]) == 0
    assert file_sha256(defended_dir(suite, suite.member("AS"), "fat:pgd:gb-mta") / WEIGHTS_FILE) == in_worker


def test_pgd_adversarial_training_is_a_second_training_defense(home, tmp_path):
    """PGD-AT (Madry et al.) is one file on the training-defense protocol: `mtlbench defend` trains
    it from the suite's recipe with PGD from a random start, `--defenses` attacks it, and the
    defenses page lists it beside the undefended model."""
    from leaderboard import render_leaderboard

    manifest, _ = home
    assert main(["defend", str(manifest), "--defense", "pgdat:pgd:total", "--models", "AS", "--steps", "24",
                 "--device", "cpu"]) == 0
    suite = load_suite(manifest)
    info = read_config(defended_dir(suite, suite.member("AS"), "pgdat:pgd:total"))
    assert info.defense["spec"] == "pgdat:pgd:total" and info.defense["attack"] == "pgd:total"
    assert info.defense["attack_options"] == {"preset": "madry", "steps": 2}
    db = tmp_path / "r.db"
    summary = run(RunOptions(suite=str(manifest), attacks=["pgd:gb-mta", "pgd:total"], eps=[8], models=["AS"],
                             defenses=["none", "pgdat:pgd:total"], results=str(db)))
    assert summary.done == {"valid": 4}
    with ResultsStore(db, readonly=True) as store:
        arps = {(c.model, c.attack): c.arp for c in store.cells()}
        record = next(m for m in store.models() if m["model"] == "AS+pgdat:pgd:total")
    assert record["defense_kind"] == "training" and record["trained_with"] == "pgd:total"
    assert arps[("AS+pgdat:pgd:total", "pgd:total")] < arps[("AS", "pgd:total")]
    site = render_leaderboard(db, tmp_path / "site")
    page = (site.parent / "defenses-mini-run.html").read_text()
    assert 'data-defense="pgdat:pgd:total"' in page
    # an inference-time defense is not something `defend` trains
    assert main(["defend", str(manifest), "--defense", "bitdepth:4", "--models", "AS"]) == 2


def test_a_training_defense_takes_its_own_recipe_table_over_fat(home, tmp_path):
    """``[defenses.<name>]`` refines the ``[defenses]`` table's own entries (every training
    defense's recipe) for one training defense, validated by the recipe class; FAT keeps the
    common recipe. The former ``[fat]`` table is a message that says where it went."""
    from benchmark.defenses import create_defense
    from benchmark.suites import SuiteError

    manifest, _ = home
    own = tmp_path / "own.toml"
    own.write_text(manifest.read_text() + "\n[defenses.pgdat]\nsteps = 7\nattack_steps = 1\n")
    suite, plain = load_suite(own), load_suite(manifest)
    pgdat, fat = create_defense("pgdat:pgd:total"), create_defense("fat:pgd:total")
    assert (pgdat.recipe(suite).steps, pgdat.recipe(suite).attack_steps) == (7, 1)
    assert pgdat.recipe(suite, steps=3).steps == 3  # --steps still overrides
    assert fat.recipe(suite) == fat.recipe(plain) and pgdat.recipe(plain) == fat.recipe(plain)
    for table, words in (("[defenses.bitdepth]\nsteps = 3", "defenses.bitdepth: not a training defense"),
                         ("[defenses.pgdat]\nepochs = 3", "defenses.pgdat.epochs: unknown key"),
                         ("[defenses.pgdat]\nsteps = 0", "defenses.pgdat.steps: expected an integer in")):
        own.write_text(manifest.read_text() + "\n" + table + "\n")
        with pytest.raises(SuiteError, match=words):
            load_suite(own)
    own.write_text(manifest.read_text().replace("[defenses]\n", "[defenses]\nepochs = 3\n"))
    with pytest.raises(SuiteError, match="defenses.epochs: unknown key"):
        load_suite(own)
    own.write_text(manifest.read_text().replace("[defenses]", "[fat]"))
    with pytest.raises(SuiteError, match=r"fat: .*rename \[fat\] to \[defenses\]"):
        load_suite(own)
