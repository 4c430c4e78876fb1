"""Defense evaluations you can trust: the worst case per image over every attack, the score-based
black-box attack, gradient-masking checks, randomised defenses scored over several draws, and
the cost of each defense."""

import sys
from pathlib import Path

import pytest

from benchmark.attacks import create_attack, run_attack
from benchmark.evaluation import evaluate
from benchmark.metric_base import decode_states
from benchmark.runner import ResultsStore, RunOptions, run
from benchmark.scoring import arp
from benchmark.suites import load_suite
from leaderboard.aggregate import build_board, headline_view

sys.path.insert(0, str(Path(__file__).parent))
import plugin_masking_defenses  # noqa: F401  (registers test-shatter and test-noisy)


@pytest.fixture(scope="module")
def defended_run(mini_suite, tmp_path_factory):
    """The mini suite's AS undefended, behind bit-depth reduction (declared, BPDA), random resizing
    (declared, EOT) and the two masking defenses, attacked by FGSM, PGD and Square at eps 4 and 8."""
    manifest, home = mini_suite
    mp = pytest.MonkeyPatch()
    mp.setenv("MTLBENCH_HOME", str(home))
    db = tmp_path_factory.mktemp("checks") / "r.db"
    run(RunOptions(suite=str(manifest), results=str(db), models=["AS"],
                   attacks=["fgsm:gb-mta", "pgd:gb-mta", "pgd:total", "square:gb-mta"],
                   defenses=["none", "bitdepth:4", "resize:0.15", "test-shatter", "test-noisy"], score_draws=4))
    with ResultsStore(db, readonly=True) as store:
        board = headline_view(build_board(store), "mini-run")
        cells = store.cells()
    yield board, cells
    mp.undo()


def test_the_worst_case_per_image_is_scored_exactly(defended_run, mini):
    """Each image from the attack with its highest per-image score; that set's ARP recomputed from
    the images' metric statistics equals the board's, and is at least every attack's own ARP."""
    board, cells = defended_run
    tasks = load_suite(mini).tasks
    for target in ("AS", "AS+bitdepth:4"):
        mine = [c for c in cells if c.model == target and c.eps == 8]
        worst = board["by_eps"]["8"]["worst"][target]
        mine.sort(key=lambda c: (c.attack, c.seed))
        states = [decode_states(c.per_image["state"], {t.name: t.new_metric for t in tasks}) for c in mine]
        merged = {t.name: t.new_metric() for t in tasks}
        supplied = {}
        for i in range(mine[0].images):
            k = max(range(len(mine)), key=lambda j: (mine[j].per_image["score"][i], -j))
            supplied[mine[k].attack] = supplied.get(mine[k].attack, 0) + 1
            for name, metric in states[k][i].items():
                merged[name].merge(metric)
        expected = arp(mine[0].clean, {n: m.compute() for n, m in merged.items()}, tasks)
        assert worst["arp"] == pytest.approx(expected, abs=1e-9) and worst["supplied"] == supplied
        assert worst["arp"] >= max(c.arp for c in mine) - 1e-9
        assert sum(worst["supplied"].values()) == worst["images"] == mine[0].images


def test_square_is_a_query_only_attack_that_hurts_but_less_than_pgd():
    """On a trained model (the shipped tiny AS), Square with GB-MTA's score causes a clearly positive
    ARP within 100 queries, below white-box PGD's, and uses forward passes only."""
    from benchmark.zoo import load_model

    suite = load_suite("tiny-nyuv2-resnet34")
    model, _ = load_model(suite, "AS")
    batch = suite.data(size=8).materialize()
    clean = evaluate(model, suite.tasks, [batch])
    found = {}
    for name, options in (("square:gb-mta", {"queries": 100}), ("pgd:gb-mta", {"steps": 5})):
        done = run_attack(create_attack(name, **options), model, batch["image"], batch, tasks=suite.tasks, eps=8,
                          seed=0)
        assert done.verdict.valid
        found[name] = (arp(clean, evaluate(model, suite.tasks, [{**batch, "image": done.adversarial}]), suite.tasks),
                       done.forward_passes, done.backward_passes)
    square, pgd = found["square:gb-mta"], found["pgd:gb-mta"]
    assert square[0] > 2.0 and square[0] < pgd[0], found
    assert square[1:] == (101, 0)  # the clean images, then one forward pass per query


def test_masking_defenses_are_flagged_by_the_right_check(defended_run):
    board, _ = defended_run
    flags = {t: board["reliability"][t]["flags"] for t in board["reliability"]}
    assert any(f.startswith("(a) vanishing gradients") for f in flags["AS+test-shatter"]), flags
    assert any(f.startswith("(b) undeclared randomness") for f in flags["AS+test-noisy"]), flags
    for honest in ("AS", "AS+bitdepth:4", "AS+resize:0.15"):
        assert flags[honest] == [], (honest, flags[honest])
    checks = board["reliability"]["AS+bitdepth:4"]["checks"]
    assert set(checks) >= {"vanishing_gradients", "undeclared_randomness", "black_box_beats_white_box",
                           "one_step_beats_multi_step", "arp_not_rising_with_eps"}
    rows = {r["defense"]: r for r in board["by_eps"]["8"]["defenses"]["rows"]}
    assert rows["test-shatter"]["flags"] and not rows["bitdepth:4"]["flags"]


def test_result_checks_flag_what_they_see():
    """Without per-image scores to pair (here: bare ARPs), a difference counts above the stated
    margin of 1 ARP point."""
    from benchmark.defenses.checks import Observed, evaluation_flags, result_checks

    arps = {("square:gb-mta", 8.0): 9.0, ("pgd:gb-mta", 8.0): 5.0, ("fgsm:gb-mta", 8.0): 7.0,
            ("pgd:gb-mta", 4.0): 5.5, ("fgsm:gb-mta", 4.0): 3.0, ("square:gb-mta", 4.0): 2.0}
    flags = evaluation_flags(result_checks({k: [Observed(v)] for k, v in arps.items()}, {"square:gb-mta"}))
    assert any("(c) black box beats white box: eps 8: square:gb-mta 9.00 vs fgsm:gb-mta 7.00: +2.00" in f
               for f in flags), flags
    assert any("(d) one-step FGSM beats PGD: eps 8: fgsm:gb-mta 7.00 vs pgd:gb-mta 5.00: +2.00" in f for f in flags)
    assert not any(f.startswith("(e)") for f in flags)  # the strongest attack rises: 5.50 -> 9.00
    flat = {("pgd:gb-mta", 4.0): 5.5, ("pgd:gb-mta", 8.0): 5.0, ("fgsm:gb-mta", 4.0): 3.0, ("fgsm:gb-mta", 8.0): 4.0}
    (line,) = [f for f in evaluation_flags(result_checks({k: [Observed(v)] for k, v in flat.items()}, set()))
               if f.startswith("(e)")]
    assert "the strongest attack: pgd:gb-mta 5.50 at eps 4, pgd:gb-mta 5.00 at eps 8" in line


def test_a_randomised_defense_is_scored_over_draws(mini, tmp_path):
    """The same adversarial images of a randomised defense score differently on one draw and on
    eight (their metrics pooled): the cell says how it was scored."""
    results = {}
    for draws in (1, 8):
        db = tmp_path / f"d{draws}.db"
        run(RunOptions(suite=str(mini), results=str(db), models=["AS"], attacks=["fgsm:gb-mta"], eps=[8],
                       defenses=["resize:0.15"], score_draws=draws))
        with ResultsStore(db, readonly=True) as store:
            (cell,) = store.cells()
            info = next(row for row in store.models() if row["model"] == "AS+resize:0.15")
        results[draws] = cell
        assert cell.config.get("score_draws", 1) == draws and info["score_draws"] == draws
    assert results[1].arp != pytest.approx(results[8].arp, abs=1e-6)
    assert results[1].clean != results[8].clean


def test_each_defense_carries_its_inference_cost(defended_run):
    board, _ = defended_run
    cost = board["inference"]
    assert cost["AS+bitdepth:4"]["passes_per_prediction"] == 1 and cost["AS+resize:0.15"]["passes_per_prediction"] == 1
    assert all(c["time_ratio"] is not None and c["time_ratio"] > 0 for c in cost.values())
