"""Numbers that cannot mislead: a profile is part of a result's identity, task labels follow the
models' own order, masking checks that hold inside the noise and are always shown, costs measured
in one process, and verdicts that need evidence."""

import json

import pytest
import torch
from results_factory import TASKS, make_cell, put_models

from benchmark.defenses.checks import Observed, check_rows, result_checks
from benchmark.runner import RunOptions, run
from benchmark.runner.store import ResultsStore
from leaderboard import build_board, render_leaderboard
from leaderboard.aggregate import headline_view
from leaderboard.plots import attack_style, layout_tree_svg
from leaderboard.reproduction import reproduction

MODELS = [f"m{i}" for i in range(6)]


def _cell(model, attack, eps, arp, *, profile, images, steps, seed=0, shift=0.0):
    cell = make_cell("s", model, attack, eps, arp, images=images, profile=profile, seed=seed)
    cell.config.update({"profile": profile, "images": images, "batch_size": min(16, images),
                        "budget": {"option": "steps", "value": steps, "extra": False}})
    from benchmark.runner.store import cell_key

    cell.key = cell_key({**cell.config, "options": {"steps": steps}})
    cell.per_image = {"ids": [str(k) for k in range(images)],
                      "score": [arp + shift + (k % 3) - 1 for k in range(images)]}
    return cell


def _quick(store, gb=2.0):
    for i, m in enumerate(MODELS):
        for eps in (4.0, 8.0):
            base = 4 * eps + i
            for attack, arp in (("pgd:total", base), ("pgd:gb-mta", base + gb), ("fgsm:gb-mta", base - 5)):
                store.put(_cell(m, attack, eps, arp, profile="quick", images=32, steps=5))


def test_profiles_are_never_pooled(tmp_path):
    """Another profile's results in the same store (PGD-10 on one model) leave the first profile's
    rankings, paired differences and verdicts as they were, and appear as a view of their own."""
    one, both = tmp_path / "one.db", tmp_path / "both.db"
    for path in (one, both):
        with ResultsStore(path) as store:
            put_models(store, "s", MODELS)
            _quick(store)
    with ResultsStore(both) as store:
        for attack, arp in (("pgd:total", 50.0), ("pgd:gb-mta", 40.0)):  # TOTAL first under table3
            store.put(_cell("m0", attack, 8.0, arp, profile="table3", images=32, steps=10))
    boards = {}
    for path in (one, both):
        with ResultsStore(path, readonly=True) as store:
            board = build_board(store)
            boards[path.stem] = (board, reproduction(board, store.cells()))
    (b1, r1), (b2, r2) = boards["one"], boards["both"]
    assert list(b2["suites"]["s"]["views"]) == ["quick", "table3"] and b2["suites"]["s"]["headline"] == "quick"
    q1, q2 = headline_view(b1, "s"), headline_view(b2, "s")
    assert json.dumps(q1["by_eps"], sort_keys=True) == json.dumps(q2["by_eps"], sort_keys=True)
    assert [r["attack"] for r in q2["by_eps"]["8"]["ranking"]] == ["pgd:gb-mta", "pgd:total", "fgsm:gb-mta"]
    assert not any("[" in a for a in q2["attacks"])  # no "[quick]"/"[table3]" labels: views, not suffixes
    assert json.dumps(r1["s"]["quick"], sort_keys=True) == json.dumps(r2["s"]["quick"], sort_keys=True)
    paired = next(f for f in r2["s"]["quick"]["findings"] if f["id"] == "strongest-pgd")["paired"]["total"]
    assert paired["pairs"] == 6 * 32  # only PGD-5 cells paired with PGD-5 cells
    t3 = b2["suites"]["s"]["views"]["table3"]
    assert t3["settings"]["profile"] == "table3" and t3["settings"]["steps"] == {"pgd (steps)": [10]}
    assert [r["attack"] for r in t3["by_eps"]["8"]["ranking"]] == ["pgd:total", "pgd:gb-mta"]
    # the site: the headline view's pages keep their names, the other view has its own, and every
    # table says which profile, images and seeds its numbers come from
    index = render_leaderboard(both, tmp_path / "site")
    site = index.parent
    assert (site / "suite-s.html").is_file() and (site / "suite-s--table3.html").is_file()
    html = index.read_text()
    assert 'data-choice="s--table3"' in html and "Profile <b>quick</b>" in html and "32 images per cell" in html
    assert "Profile <b>table3</b>" in (site / "suite-s--table3.html").read_text()
    assert 'href="suite-s--table3.html"' in (site / "suite-s.html").read_text()
    assert json.loads((site / "leaderboard.json").read_text())["suites"]["s"]["views"]["quick"]["settings"][
        "profile"] == "quick"


def test_the_same_profile_on_other_image_counts_is_another_view(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        put_models(store, "s", MODELS[:2])
        for images in (32, 2):
            for m in MODELS[:2]:
                store.put(_cell(m, "pgd:gb-mta", 8.0, 30.0 + images, profile="quick", images=images, steps=5))
        board = build_board(store)
    assert set(board["suites"]["s"]["views"]) == {"quick, 32 images", "quick, 2 images"}
    assert board["suites"]["s"]["headline"] == "quick, 32 images"  # the view with the most cells


def test_layout_tree_labels_tasks_in_the_models_order():
    """Layout 4 of NYUv2 splits task 0 off first: in the models' order that is segmentation."""
    order = ["segment_semantic", "normal", "depth_zbuffer"]
    svg = layout_tree_svg([[[0], [1, 2]], [[0], [1, 2]], [[0], [1], [2]], [[0], [1], [2]], [[0], [1], [2]]], order)
    assert "0: segment_semantic" in svg and "2: depth_zbuffer" in svg


def test_model_page_uses_the_models_task_order(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        put_models(store, "s", ["m0"])
        info = dict(next(r for r in store.models() if r["model"] == "m0"))
        for k in ("suite", "model", "model_revision"):
            info.pop(k, None)
        info["layout_sets"] = [[[0], [1, 2]]] * 2 + [[[0], [1], [2]]] * 3
        store.put_model("s", "m0", "local-sha256:m0", info)
        store.put(make_cell("s", "m0", "pgd:gb-mta", 8.0, 30.0))
    render_leaderboard(tmp_path / "r.db", tmp_path / "site")
    page = (tmp_path / "site" / "model-s-m0.html").read_text()
    # results_factory's models list their tasks as segment_semantic, normal, depth_zbuffer (TASKS),
    # while the suite's task list on the board is sorted
    assert TASKS[0] == "segment_semantic"
    assert "0: segment_semantic" in page and "<b>0</b> = segment_semantic" in page


def _observed(arp, noise, n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = (arp + noise * torch.randn(n, generator=g, dtype=torch.float64)).tolist()
    return Observed(arp=sum(scores) / n, seed=0, ids=tuple(str(i) for i in range(n)), scores=tuple(scores))


def test_a_check_does_not_fire_on_a_difference_inside_the_noise():
    """FGSM 0.02 points above PGD over 32 noisy images (the AVX2 case: -1.54 vs -1.56) passes; 5
    points above with little noise is flagged, with its paired interval in the evidence."""
    pgd = _observed(-1.56, 3.0, seed=2)
    wobble = tuple(v + 0.02 + (0.5 if i % 2 else -0.5) for i, v in enumerate(pgd.scores))
    close = {("pgd:gb-mta", 8.0): [pgd], ("fgsm:gb-mta", 8.0): [Observed(-1.54, 0, pgd.ids, wobble)]}
    check = result_checks(close, set())["one_step_beats_multi_step"]
    assert check["flag"] is False and "paired over 32 images" in check["evidence"]
    pgd = _observed(10.0, 0.5, seed=3)
    clear = {("pgd:gb-mta", 8.0): [pgd],
             ("fgsm:gb-mta", 8.0): [Observed(15.0, 0, pgd.ids, tuple(v + 5.0 for v in pgd.scores))]}
    check = result_checks(clear, set())["one_step_beats_multi_step"]
    assert check["flag"] is True and "+5.00 [" in check["evidence"]
    # without per-image scores a stated margin decides
    bare = {("fgsm:gb-mta", 8.0): [Observed(6.0)], ("pgd:gb-mta", 8.0): [Observed(5.5)]}
    check = result_checks(bare, set())["one_step_beats_multi_step"]
    assert check["flag"] is False and "margin is 1" in check["evidence"]


def test_every_check_says_whether_it_ran():
    rows = check_rows(result_checks({("pgd:gb-mta", 8.0): [Observed(5.0)]}, set()))
    assert [r["check"][:3] for r in rows] == ["(a)", "(b)", "(c)", "(d)", "(e)", "(f)", "(g)"]
    status = {r["check"][:3]: r for r in rows}
    assert status["(c)"]["status"] == "not run" and "no black-box attack" in status["(c)"]["evidence"]
    assert status["(d)"]["status"] == "not run" and status["(e)"]["status"] == "not run"
    assert status["(f)"]["status"] == "not run" and "no transfer attack" in status["(f)"]["evidence"]
    assert status["(a)"]["status"] == "not run"


def test_the_clean_time_ratio_is_measured_in_one_process():
    from benchmark.defenses import DefendedModel, create_defense
    from benchmark.models import BranchedModel
    from benchmark.runner.context import inference_cost

    model = BranchedModel("AS", {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}, width=0.125,
                          head_hidden=8, head_rates=(1, 2)).eval()
    images = torch.rand(2, 3, 32, 32)
    own = inference_cost(model, images)
    assert own["time_ratio"] == 1.0 and "by construction" in own["time_ratio_how"]
    wrapped = DefendedModel(model, create_defense("bitdepth:4"))
    cost = inference_cost(wrapped, images)
    assert cost["passes_per_prediction"] == 1 and cost["time_ratio"] > 0
    assert "interleaved" in cost["time_ratio_how"]


def test_a_degenerate_member_is_left_out_of_the_ranking_not_the_others(tmp_path):
    with ResultsStore(tmp_path / "r.db") as store:
        put_models(store, "s", MODELS[:3])
        for m in MODELS[:2]:
            for attack, arp in (("pgd:gb-mta", 30.0), ("pgd:total", 25.0)):
                store.put(make_cell("s", m, attack, 8.0, arp))
        for attack in ("pgd:gb-mta", "pgd:total"):
            store.put(make_cell("s", "m2", attack, 8.0, None, status="invalid",
                                reason="the model is degenerate on these images: its clean normal mean is 0"))
        board = build_board(store)
    block = headline_view(board, "s")["by_eps"]["8"]
    assert [r["attack"] for r in block["ranking"]] == ["pgd:gb-mta", "pgd:total"]
    assert block["ranking"][0]["models"] == 2 and block["unranked"] == []
    assert block["left_out"] == [{"model": "m2", "reason": "the model is degenerate on these images: its clean "
                                                           "normal mean is 0"}]


def test_a_verdict_needs_evidence(tmp_path):
    """Two images of one model never give a verdict."""
    with ResultsStore(tmp_path / "r.db") as store:
        put_models(store, "s", ["m0"])
        for attack, arp in (("pgd:total", 20.0), ("pgd:gb-mta", 25.0), ("pgd:signtotal", 18.0)):
            store.put(_cell("m0", attack, 8.0, arp, profile="quick", images=2, steps=5))
        board = build_board(store)
        rep = reproduction(board, store.cells())["s"]["quick"]
    strongest = next(f for f in rep["findings"] if f["id"] == "strongest-pgd")
    assert strongest["status"] == "too little evidence" and "2 images per cell" in strongest["ours"]
    assert rep["counts"]["reproduced"] == 0


def test_an_attack_has_one_look_everywhere():
    a, b = attack_style("pgd:gb-mta"), attack_style("pgd:gb-mta [table3]")
    assert a == b and a["color"] != attack_style("pgd:total")["color"]
    assert attack_style("fgsm:gb-mta")["color"] == a["color"] and attack_style("fgsm:gb-mta")["marker"] != a["marker"]


def test_a_run_records_its_batches_and_data_root(mini):
    from benchmark.runner.cells import expand_grid
    from benchmark.suites import load_suite

    suite = load_suite(mini)
    cells = expand_grid(suite, suite.profile("quick"), images=1, models=["AS"], eps=[8])
    assert {c.batch_size for c in cells} == {1}


@pytest.mark.parametrize(("value", "text"), [(152_340, "0.152"), (1_004_000, "1.004"), (21_280_000, "21.28")])
def test_parameter_counts_keep_their_digits(value, text):
    from leaderboard.render import _params

    assert _params(value) == text


def test_a_run_with_members_missing_names_them_first_and_is_not_done(mini_suite, tmp_path, capsys, monkeypatch,
                                                                       wide_console):
    """A real-data suite with weights for one of its two members: the other is named in one table
    before any cell runs, its cells are not counted as done, and the run exits 3 (0 once the
    request is narrowed to the member that has weights)."""
    import shutil

    from test_data import _write_nyuv2

    from benchmark.cli import main

    manifest, home = mini_suite
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "empty-home"))  # no local zoo: --weights-dir only
    real = tmp_path / "real.toml"
    real.write_text(manifest.read_text().replace('data = "synthetic-nyuv2"', 'data = "nyuv2"'))
    _write_nyuv2(tmp_path / "data", n=4, h=32, w=32)
    shutil.copytree(home / "zoo" / "mini-run" / "AS", tmp_path / "w" / "AS")
    args = ["run", "--suite", str(real), "--weights-dir", str(tmp_path / "w"), "--data-root", str(tmp_path / "data"),
            "--attacks", "fgsm:total", "--eps", "8", "--results", str(tmp_path / "r.db"), "--device", "cpu"]
    assert main(args) == 3
    captured = capsys.readouterr()
    err = " ".join(captured.err.split())
    assert err.index("1 model(s) have no weights here") < err.index("mini-run [quick]: 1 cells")
    assert "layout-9" in err and "incomplete: 1 model(s) were not run" in err
    assert "1 cells: 0 already in" in captured.out and "1 valid" in captured.out
    assert main([*args, "--models", "AS"]) == 0
    # a data root or weights folder that is not there is named as such
    nowhere = [a if a != str(tmp_path / "data") else str(tmp_path / "nowhere") for a in args]
    assert main(nowhere) == 2
    assert f"--data-root {tmp_path / 'nowhere'}: no such directory" in " ".join(capsys.readouterr().err.split())
    nowhere = [a if a != str(tmp_path / "w") else str(tmp_path / "nowhere") for a in args]
    assert main(nowhere) == 2
    assert f"--weights-dir {tmp_path / 'nowhere'}: no such directory" in " ".join(capsys.readouterr().err.split())


def test_the_best_known_does_not_depend_on_the_order_of_the_cells(mini, tmp_path):
    """Each image's metric statistics belong to its own cell whatever order the cells come in (two
    seeds and several attacks: the cells arrive neither by attack nor by seed)."""
    from leaderboard.aggregate import _worst_case

    db = tmp_path / "r.db"
    run(RunOptions(suite=str(mini), results=str(db), models=["AS"], eps=[8], seeds=[0, 1], workers=1))
    with ResultsStore(db, readonly=True) as store:
        cells = [c for c in store.cells() if c.model == "AS"]
    assert len(cells) == 4
    forward = _worst_case(cells, "nyuv2")
    for order in (cells[::-1], [cells[1], cells[2], cells[0], cells[3]]):
        again = _worst_case(order, "nyuv2")
        assert again["arp"] == pytest.approx(forward["arp"], abs=1e-9) and again["supplied"] == forward["supplied"]
    assert forward["arp"] >= max(c.arp for c in cells) - 1e-9  # never below one attack's own images
    # and it is the exact ARP of the images picked by score, each with its own cell's statistics
    from benchmark.metric_base import decode_states
    from benchmark.scoring import arp
    from benchmark.tasks import get_tasks

    tasks = get_tasks("nyuv2")
    ordered = sorted(cells, key=lambda c: (c.attack, c.seed))  # ties go to the first in this order
    states = [decode_states(c.per_image["state"], {t.name: t.new_metric for t in tasks}) for c in ordered]
    merged = {t.name: t.new_metric() for t in tasks}
    for i in range(len(ordered[0].per_image["ids"])):
        k = max(range(len(ordered)), key=lambda k: (ordered[k].per_image["score"][i], -k))
        for name, metric in states[k][i].items():
            merged[name].merge(metric)
    picked = arp(ordered[0].clean, {name: m.compute() for name, m in merged.items()}, tasks)
    for order in (cells, cells[::-1], [cells[1], cells[2], cells[0], cells[3]]):
        assert _worst_case(order, "nyuv2")["picked_arp"] == pytest.approx(picked, abs=1e-9)
    assert forward["arp"] == pytest.approx(max(picked, *(c.arp for c in cells)), abs=1e-9)
