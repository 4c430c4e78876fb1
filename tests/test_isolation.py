"""An attack cannot change anything but its own output (issue: hardening, section 1): weights,
buffers, clean images, targets, hooks and autograd state are restored after it and it alone is
marked invalid; nondeterminism found at one eps invalidates every eps; a cell that hangs or
calls sys.exit is stored as failed and the run goes on; the user's Ctrl-C still stops the run."""

from pathlib import Path

import pytest
import torch

from benchmark.attacks import create_attack, run_attack
from benchmark.cli import main
from benchmark.runner import ResultsStore, RunOptions, run

PLUGIN = str(Path(__file__).parent / "plugin_hostile_attacks.py")
BENIGN = ["fgsm:total", "pgd:gb-mta"]


@pytest.fixture
def mini(mini, monkeypatch):
    monkeypatch.setenv("MTLBENCH_PLUGINS", PLUGIN)
    return mini


def _cells(db):
    with ResultsStore(db, readonly=True) as store:
        return {c.key: c for c in store.cells()}


@pytest.fixture
def baseline(mini, tmp_path):
    db = tmp_path / "baseline.db"
    run(RunOptions(suite=str(mini), results=str(db), attacks=BENIGN, eps=[8]))
    return _cells(db)


@pytest.mark.parametrize("hostile, reason", [
    ("hostile-weights", "changed the model's weights or buffers (restored)"),
    ("hostile-inputs", "changed the clean images it was given in place; the attack changed the targets in place "
                       "(depth_zbuffer)"),
    ("hostile-hook", "left 1 hook(s) registered"),
    ("hostile-no-grad", "left autograd switched off"),
])
def test_an_attack_spoils_only_its_own_cells(mini, baseline, tmp_path, hostile, reason):
    db = tmp_path / "hostile.db"
    summary = run(RunOptions(suite=str(mini), results=str(db), attacks=[hostile, *BENIGN], eps=[8]))
    cells = _cells(db)
    bad = [c for c in cells.values() if c.attack == hostile]
    assert len(bad) == 2 and all(c.status == "invalid" and reason in c.reason for c in bad), [c.reason for c in bad]
    assert summary.done["invalid"] == 2 and summary.done["valid"] == 4
    # every other cell is exactly what it is without the hostile attack in the run
    for key, expected in baseline.items():
        got = cells[key]
        assert got.status == "valid" and got.arp == expected.arp and got.adversarial == expected.adversarial
    assert torch.is_grad_enabled()


def test_nondeterminism_found_at_the_first_eps_invalidates_every_eps(mini, tmp_path):
    db = tmp_path / "r.db"
    run(RunOptions(suite=str(mini), results=str(db), attacks=["hostile-random", "fgsm:total"], eps=[4, 8]))
    cells = list(_cells(db).values())
    random = [c for c in cells if c.attack == "hostile-random"]
    assert len(random) == 4 and all(c.status == "invalid" and "not deterministic" in c.reason for c in random)
    assert all(c.status == "valid" for c in cells if c.attack == "fgsm:total")
    # the verdict also reaches cells stored by an earlier run (a rerun only re-checks the first eps)
    with ResultsStore(db) as store:
        for c in random:
            if c.config["check_determinism"]:
                store.conn.execute("DELETE FROM cells WHERE key = ?", (c.key,))
            else:
                c.status, c.reason = "valid", ""
                store.put(c)
    run(RunOptions(suite=str(mini), results=str(db), attacks=["hostile-random"], eps=[4, 8]))
    assert all(c.status == "invalid" for c in _cells(db).values() if c.attack == "hostile-random")


def test_nondeterminism_found_at_the_profiles_budget_invalidates_the_budget_curves_points(mini, tmp_path):
    manifest = tmp_path / "curve.toml"  # the mini suite (same name, same models) with a budget curve
    manifest.write_text(Path(mini).read_text() + """
[profiles.curve]
eps = [4, 8]
attacks = ["hostile-random-steps", "fgsm:total"]
steps = { hostile-random-steps = 2 }
budgets = { hostile-random-steps = [1, 3] }
budget_models = ["AS"]
eval_size = 4
batch_size = 2
""")
    db = tmp_path / "r.db"
    run(RunOptions(suite=str(manifest), profile="curve", results=str(db), models=["AS"]))
    random = [c for c in _cells(db).values() if c.attack == "hostile-random-steps"]
    curve = [c for c in random if c.config["budget"]["extra"]]
    assert sorted(c.config["budget"]["value"] for c in curve) == [1, 1, 3, 3]
    assert not any(c.config["check_determinism"] for c in curve)  # checked once, at the profile's budget
    assert len(random) == 6 and all(c.status == "invalid" and "not deterministic" in c.reason for c in random)
    assert all("{'steps': 2}" in c.reason for c in curve)


@pytest.mark.parametrize("workers", ["1", "2"])  # in this process, and in worker processes
def test_hanging_and_exiting_attacks_fail_their_cells_and_the_run_goes_on(mini, tmp_path, capsys, wide_console,
                                                                         workers):
    db = tmp_path / "r.db"
    code = main(["run", "--suite", str(mini), "--results", str(db), "--attacks",
                 "hostile-sleep,hostile-busy,hostile-exit,hostile-keyboard,fgsm:total", "--eps", "8",
                 "--models", "AS", "--cell-timeout", "6", "--device", "cpu", "--workers", workers])
    by = {c.attack: c for c in _cells(db).values()}
    assert by["fgsm:total"].status == "valid", by["fgsm:total"].reason
    assert code == 1  # bad cells: exit status 1 (their count is in the message), not the attack's sys.exit(7)
    for name in ("hostile-sleep", "hostile-busy"):
        assert by[name].status == "failed" and "time limit of 6 s" in by[name].reason
        assert by[name].wall_s < 30
    assert by["hostile-exit"].status == "failed" and "sys.exit(7)" in by["hostile-exit"].reason
    assert by["hostile-keyboard"].status == "failed" and "not the user's Ctrl-C" in by["hostile-keyboard"].reason
    assert "4 cell(s) of this request are stored failed or invalid" in " ".join(capsys.readouterr().err.split())
    assert main(["run", "--suite", str(mini), "--cell-timeout", "-1"]) == 2


def test_the_users_ctrl_c_stops_the_run(mini, tmp_path, capsys):
    code = main(["run", "--suite", str(mini), "--results", str(tmp_path / "r.db"), "--attacks", "test-user-ctrl-c",
                 "--eps", "8", "--models", "AS", "--device", "cpu"])
    assert code == 130 and "interrupted" in capsys.readouterr().err


def test_run_attack_restores_the_model_for_library_users(tiny_nyu, monkeypatch):
    from benchmark.attacks.registry import load_plugins

    model, tasks, batch = tiny_nyu
    monkeypatch.setenv("MTLBENCH_PLUGINS", PLUGIN)
    load_plugins()

    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = batch["image"].clone()
    result = run_attack(create_attack("hostile-weights"), model, batch["image"], batch, tasks=tasks, eps=8, seed=0)
    assert result.verdict.status == "invalid" and result.extra["model_restored"] is True
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    result = run_attack(create_attack("hostile-inputs"), model, batch["image"], batch, tasks=tasks, eps=8, seed=0)
    assert result.verdict.status == "invalid" and torch.equal(batch["image"], images)
    # every module's mode and every parameter's flag is put back, as each was (here: one module
    # training, as a library user's model may be)
    model.heads.train()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    run_attack(create_attack("hostile-train"), model, batch["image"], batch, tasks=tasks, eps=8, seed=0)
    assert {n: m.training for n, m in model.named_modules()} == modes and any(modes.values())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    model.eval()
