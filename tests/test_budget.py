"""ARP at equal compute: step budgets of a profile, their curves and the ranking at a budget."""

import json

import pytest

from benchmark.errors import UserError
from benchmark.runner import RunOptions, run
from benchmark.runner.store import ResultsStore
from benchmark.suites import load_suite
from leaderboard import plots, render_leaderboard
from leaderboard.aggregate import headline_view

BUDGET_PROFILE = """
[profiles.budget]
eps = [8]
attacks = ["fgsm:total", "pgd:gb-mta", "mim:total"]
steps = { pgd = 2, mim = 2 }
eval_size = 4
batch_size = 2
budgets = { pgd = [1, 3], mim = [1] }
budget_models = ["AS"]
"""


@pytest.fixture
def budget_suite(mini, tmp_path):
    manifest = tmp_path / "mini-run.toml"  # the mini suite (same name: its built models) with a budget profile
    manifest.write_text(mini.read_text() + BUDGET_PROFILE)
    return manifest


def test_budgets_add_curve_points_on_the_budget_models_only(budget_suite, tmp_path):
    db = tmp_path / "r.db"
    summary = run(RunOptions(suite=str(budget_suite), profile="budget", results=str(db)))
    # protocol: 2 models x 3 attacks; curve points on AS: pgd at 1 and 3 steps, mim at 1 step
    assert summary.total == 6 + 3 and summary.bad == 0
    with ResultsStore(db) as store:
        cells = store.cells()
    extra = [c for c in cells if c.config.get("budget", {}).get("extra")]
    assert sorted((c.attack, c.config["options"]["steps"]) for c in extra) == [
        ("mim:total", 1), ("pgd:gb-mta", 1), ("pgd:gb-mta", 3)]
    assert {c.model for c in extra} == {"AS"}
    assert all("budget" not in c.config for c in cells if c.attack == "fgsm:total")  # FGSM has no step budget


def test_plotted_passes_are_the_stored_counted_passes(budget_suite, tmp_path):
    db = tmp_path / "r.db"
    run(RunOptions(suite=str(budget_suite), profile="budget", results=str(db)))
    site = tmp_path / "site"
    render_leaderboard(db, site)
    board = json.loads((site / "leaderboard.json").read_text())
    block = headline_view(board, "mini-run")["by_eps"]["8"]
    budget = block["budget"]
    assert budget["models"] == ["AS"]  # only AS ran every budget point
    with ResultsStore(db) as store:
        stored = {}
        for c in store.cells(model="AS"):
            steps = c.config.get("budget", {}).get("value")
            stored[(c.attack, steps)] = ((c.forward_passes + c.backward_passes) / c.batches, c.arp)
    drawn = plots.budget_curves(budget["series"], "t", tmp_path / "b.svg")
    for attack, points in drawn.items():
        series = budget["series"][attack]
        assert [p for p, _ in points] == sorted(p["passes_per_image"] for p in series)
        for point in series:
            passes, arp = stored[(attack, point["budget"])]
            assert point["passes_per_image"] == passes and point["mean_arp"] == pytest.approx(arp)
            assert (passes, pytest.approx(arp)) in [(x, pytest.approx(y)) for x, y in points]
    assert drawn["pgd:gb-mta"] == sorted(drawn["pgd:gb-mta"]) and len(drawn["pgd:gb-mta"]) == 3
    assert len(drawn["fgsm:total"]) == 1 and drawn["fgsm:total"][0][0] == 2.0  # one forward, one backward
    # the ranking at a budget takes each attack's largest point within it
    at2 = {r["attack"]: r for r in budget["rankings"]["2"]}
    assert at2["pgd:gb-mta"]["budget"] == 1 and at2["mim:total"]["budget"] == 1 and "fgsm:total" in at2
    # the protocol's tables hold the profile's steps only (the extra points are not averaged in)
    assert block["table"]["AS"]["pgd:gb-mta"]["arp"] == pytest.approx(stored[("pgd:gb-mta", 2)][1])
    html = (site / "index.html").read_text()
    assert "ARP at equal compute" in html and (site / "plots" / "budget-mini-run-8.svg").is_file()


def test_bad_budgets_are_refused_naming_the_key(mini, tmp_path):
    bad = tmp_path / "mini-run.toml"
    bad.write_text(mini.read_text() + BUDGET_PROFILE.replace("pgd = [1, 3]", "pgd = [0, 3]"))
    with pytest.raises(UserError, match=r"profiles\.budget\.budgets\.pgd"):
        load_suite(str(bad))


def test_an_attack_run_on_some_budget_models_only_leaves_the_curves_not_their_models(budget_suite, tmp_path):
    """The curves average every budget model; an attack that ran on some of them only (a defense's
    black-box attack on the defended member) is left out of the curves instead of dropping models."""
    manifest = tmp_path / "two.toml"
    text = budget_suite.read_text().replace('budget_models = ["AS"]', 'budget_models = ["AS", "layout-9"]')
    manifest.write_text(text)
    db = tmp_path / "r.db"
    run(RunOptions(suite=str(manifest), profile="budget", results=str(db)))
    run(RunOptions(suite=str(manifest), profile="budget", attacks=["pgd:total"], models=["AS"], results=str(db)))
    site = tmp_path / "site"
    render_leaderboard(db, site)
    budget = headline_view(json.loads((site / "leaderboard.json").read_text()), "mini-run")["by_eps"]["8"]["budget"]
    assert sorted(budget["models"]) == ["AS", "layout-9"]
    assert "pgd:total" not in budget["series"] and "pgd:gb-mta" in budget["series"]
