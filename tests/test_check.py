"""`mtlbench check`: the CI gate on attack strength (paired test) and speed (ratios)."""

import json
import statistics
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.runner import check as check_module
from benchmark.runner.check import SPEED_ROUNDS, CheckOptions, check, load_baseline, paired_time_ratio, slower_p

PROBE = str(Path(__file__).parent / "plugin_probe.py")


@pytest.fixture
def probe(mini, monkeypatch):
    monkeypatch.setenv("MTLBENCH_PLUGINS", PROBE)
    for var in ("PROBE_STEP_SCALE", "PROBE_EXTRA_STEPS", "PROBE_SLEEP_S"):
        monkeypatch.delenv(var, raising=False)
    return mini


@pytest.fixture
def baseline(probe, tmp_path):
    path = tmp_path / "baseline.json"
    report = check(CheckOptions(baseline=str(path), suite=str(probe), attacks=["probe:gb-mta"], update=True))
    assert report.written == path
    return path


def test_the_baseline_holds_per_image_scores_passes_and_the_time_ratio(baseline):
    data = load_baseline(baseline)
    entry = data["attacks"]["probe:gb-mta"]
    assert data["reference"] == "pgd:total" and data["models"] == ["AS", "layout-9"] and data["eps"] == [4.0, 8.0]
    assert len(entry["cells"]) == 4 and all(len(c["score"]) == len(c["ids"]) == 4 for c in entry["cells"])
    assert entry["passes_per_image"] == 8  # 4 steps: 4 forward + 4 backward passes per image, counted
    timing = entry["timing"]  # the attack and the reference timed in alternation on one batch of one cell
    assert (timing["model"], timing["eps"], timing["rounds"]) == ("AS", 4.0, SPEED_ROUNDS)
    assert len(timing["ratios"]) == len(timing["attack_s"]) == len(timing["reference_s"]) == SPEED_ROUNDS
    assert entry["time_ratio"] == pytest.approx(statistics.median(timing["ratios"]), rel=1e-3)
    assert entry["time_ratio"] > 0


def test_the_unchanged_attack_passes_with_other_seeds_and_a_weakened_one_fails(baseline, monkeypatch, capsys):
    p_values = []
    for seed in (1, 2, 3):
        report = check(CheckOptions(baseline=str(baseline), seeds=[seed], speed_tolerance=10.0))
        (a,) = report.attacks
        assert a.ok, a.failures
        p_values.append(a.p)
    monkeypatch.setenv("PROBE_STEP_SCALE", "0.1")  # the step size scaled down: a weaker attack
    report = check(CheckOptions(baseline=str(baseline), speed_tolerance=10.0))
    (weak,) = report.attacks
    assert not weak.ok and weak.failures[0].startswith("weaker")
    assert weak.after < weak.before - 1 and weak.p < 0.05 and weak.high < 0
    print(f"unchanged, seeds 1-3: p = {p_values}; weakened: delta {weak.delta:.2f}, p = {weak.p:.4f}")


def test_exit_status_table_and_update(baseline, monkeypatch, capsys, wide_console):
    assert main(["check", "--baseline", str(baseline), "--speed-tolerance", "10", "-v"]) == 0
    out = capsys.readouterr().out
    assert "probe:gb-mta" in out and "layout-9" in out and "ok" in out
    monkeypatch.setenv("PROBE_STEP_SCALE", "0.1")
    assert main(["check", "--baseline", str(baseline), "--speed-tolerance", "10"]) == 1
    assert "FAIL: weaker" in capsys.readouterr().out
    before = load_baseline(baseline)["attacks"]["probe:gb-mta"]["arp"]
    assert main(["check", "--baseline", str(baseline), "--update"]) == 0
    assert load_baseline(baseline)["attacks"]["probe:gb-mta"]["arp"] < before - 1  # the weaker one is the new baseline


def test_more_passes_or_a_slower_attack_fail_the_speed_gate(baseline, monkeypatch):
    monkeypatch.setenv("PROBE_EXTRA_STEPS", "2")
    (a,) = check(CheckOptions(baseline=str(baseline), speed_tolerance=10.0)).attacks
    assert any(f.startswith("more passes: 8 -> 12") for f in a.failures), a.failures
    monkeypatch.delenv("PROBE_EXTRA_STEPS")
    monkeypatch.setenv("PROBE_SLEEP_S", "0.3")
    (a,) = check(CheckOptions(baseline=str(baseline))).attacks
    assert [f for f in a.failures if f.startswith("slower")], a.failures
    assert not [f for f in a.failures if f.startswith(("weaker", "more passes"))]


def test_cells_timed_under_different_loads_do_not_fail_an_unchanged_attack(baseline, monkeypatch):
    """The defect this guards against: cells are timed one after the other, minutes apart, so the
    machine's load can make an unchanged attack's cells look several times slower than the
    reference's (5.65x against a baseline of 3.05x was seen). The verdict reads the paired
    timing, in which both run in alternation, not the cells' times."""
    run = check_module._run

    def loaded_reference_cells_fast(*args, **kwargs):
        by_attack = run(*args, **kwargs)
        for cell in by_attack["pgd:total"]:  # as if the reference's cells had the machine to themselves
            cell.attack_s *= 0.2
        return by_attack

    monkeypatch.setattr(check_module, "_run", loaded_reference_cells_fast)
    (a,) = check(CheckOptions(baseline=str(baseline))).attacks
    assert not [f for f in a.failures if f.startswith("slower")], a.failures
    assert a.timing is not None and a.ratio_after == a.timing["time_ratio"]


def test_the_paired_timing_alternates_and_a_burst_of_load_in_one_round_does_not_move_it(baseline, monkeypatch):
    from benchmark.attacks import validate
    from benchmark.attacks.validate import AttackRun, Verdict

    calls = []

    def scripted(attack, *args, **kwargs):  # the attack takes 2 units, the reference 1; one burst
        which = "reference" if type(attack).__name__ == "PGD" else "attack"
        calls.append(which)
        took = 2.0 if which == "attack" else 1.0
        if len(calls) == 5:  # round 2's first run (its reference) hit by a burst of load
            took *= 10
        return AttackRun(kwargs.get("images", args[1]), Verdict("valid"), extra={"attack_s": took})

    monkeypatch.setattr(validate, "run_attack", scripted)
    data = load_baseline(baseline)
    by_attack = check_module._run(CheckOptions(baseline=str(baseline)), data["suite"], "quick", ["probe:gb-mta"],
                                  ["AS"], [8.0], [0], "pgd:total", None)
    timing = paired_time_ratio(data["suite"], by_attack["probe:gb-mta"][0], by_attack["pgd:total"][0], rounds=5)
    # warm-up (attack, reference), then rounds alternating which goes first
    assert calls == ["attack", "reference"] + ["attack", "reference", "reference", "attack"] * 2 + ["attack",
                                                                                                    "reference"]
    assert timing["ratios"] == [2.0, 0.2, 2.0, 2.0, 2.0] and timing["time_ratio"] == 2.0


def test_the_slower_test_is_exact_and_needs_the_rounds_to_agree():
    same = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98]
    assert slower_p(same, same, 0.5) > 0.5  # unchanged: far from significant
    slower = [x * 2 for x in same]  # every round twice the ratio, beyond +50%
    assert slower_p(same, slower, 0.5) == pytest.approx(1 / 3432)  # the smallest p of 7 + 7 rounds: C(14, 7)
    one_burst = [*same[:6], 10.0]  # one round of seven hit by load: not significant
    assert slower_p(same, one_burst, 0.5) > 0.05


def test_a_version_1_baseline_is_written_again_with_update(baseline, capsys, wide_console):
    data = json.loads(baseline.read_text())
    data["version"] = 1
    for entry in data["attacks"].values():
        entry.pop("timing")
    baseline.write_text(json.dumps(data))
    assert main(["check", "--baseline", str(baseline)]) == 2
    assert "has version 1" in capsys.readouterr().err
    assert main(["check", "--baseline", str(baseline), "--update"]) == 0
    again = load_baseline(baseline)
    assert again["version"] == 2 and again["attacks"]["probe:gb-mta"]["timing"]["rounds"] == SPEED_ROUNDS


def test_invalid_outputs_fail_with_the_validators_reason(baseline, monkeypatch):
    monkeypatch.setenv("PROBE_STEP_SCALE", "nan")
    (a,) = check(CheckOptions(baseline=str(baseline), speed_tolerance=10.0)).attacks
    assert not a.ok and "output on AS" in a.failures[0] and ("NaN" in a.failures[0] or "finite" in a.failures[0])


@pytest.mark.parametrize("content, words", [
    ("not json", "is not valid JSON"),
    (json.dumps({"format": "something"}), "is not an mtlbench baseline"),
    (json.dumps({"format": "mtlbench-baseline", "version": 1, "suite": "s"}), "'profile' is missing"),
])
def test_a_bad_baseline_is_a_message(tmp_path, capsys, wide_console, content, words):
    path = tmp_path / "b.json"
    path.write_text(content)
    assert main(["check", "--baseline", str(path)]) == 2
    assert words in capsys.readouterr().err


def test_a_missing_baseline_says_how_to_write_one(tmp_path, capsys, wide_console):
    assert main(["check", "--baseline", str(tmp_path / "none.json")]) == 2
    assert "--update --attacks" in capsys.readouterr().err


def test_the_example_ci_workflow_installs_a_cpu_torch_and_runs_the_check():
    yaml = pytest.importorskip("yaml")
    workflow = yaml.safe_load((Path(__file__).parents[1] / "examples" / "ci" / "mtlbench-check.yml").read_text())
    steps = workflow["jobs"]["mtlbench-check"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    assert "mtlbench check --baseline baseline.json" in runs
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs  # a CPU torch, not the CUDA build
    assert "zoo build" not in runs  # the tiny members ship with mtlbench: nothing to train or cache
