"""The reproduction page: verdicts computed from the store against the paper's numbers (data)."""

from results_factory import TASKS, make_cell, put_models

from benchmark.cli import main
from benchmark.runner.store import ResultsStore
from leaderboard import render_leaderboard
from leaderboard.aggregate import build_board
from leaderboard.reproduction import paper_findings, reproduction

MODELS = [f"m{i}" for i in range(6)]  # shared_blocks 0..5 (results_factory)
SINGLE = {"pgd:single-segment": "segment_semantic", "pgd:single-normal": "normal", "pgd:single-depth": "depth_zbuffer"}


def _store(path, gb_mta_bonus: float, transfer_rises: bool = True, images: int = 16):
    with ResultsStore(path) as store:
        put_models(store, "s", MODELS)
        for i, model in enumerate(MODELS):
            for eps in (2.0, 4.0, 8.0):
                base = 5 * eps + i
                for attack, arp in (("pgd:total", base), ("pgd:signtotal", base - 1),
                                    ("pgd:gb-mta", base + gb_mta_bonus)):
                    cell = make_cell("s", model, attack, eps, arp, images=images)
                    cell.per_image = {"ids": [str(k) for k in range(images)],
                                      "score": [arp + (k % 3) - 1 for k in range(images)]}
                    store.put(cell)
                for attack, target in SINGLE.items():
                    level = i if transfer_rises else 5 - i
                    task_arp = {t: (40.0 if t == target else 4.0 + 4.0 * level) for t in TASKS}
                    store.put(make_cell("s", model, attack, eps, base - 3, task_arp=task_arp, images=images))


def _findings(path):
    with ResultsStore(path, readonly=True) as store:
        board = build_board(store)
        return {f["id"]: f for f in reproduction(board, store.cells())["s"]["test"]["findings"]}


def test_findings_are_reproduced_from_the_numbers(tmp_path):
    _store(tmp_path / "r.db", gb_mta_bonus=2.0)
    f = _findings(tmp_path / "r.db")
    assert f["strongest-pgd"]["status"] == "reproduced" and f["strongest-pgd"]["ours"] == "6 of 6 models"
    paired = f["strongest-pgd"]["paired"]["total"]
    assert paired["pairs"] == 96 and abs(paired["delta"] - 2.0) < 1e-9 and paired["low"] > 0
    assert f["strongest-apgd"]["status"] == "not run"
    assert f["arp-vs-eps-pgd"]["status"] == "reproduced"
    for task in ("segment", "normal", "depth"):
        t = f[f"transferability-single-{task}"]
        assert t["status"] == "reproduced" and set(t["ours"]) == set(range(6))
        assert t["paper"] == dict(zip(range(6), paper_findings()["transferability"][f"single-{task}"], strict=True))
    assert f["fat"]["status"] == "not run"


def test_findings_that_do_not_hold_are_not_reproduced(tmp_path):
    _store(tmp_path / "r.db", gb_mta_bonus=-2.0, transfer_rises=False)
    f = _findings(tmp_path / "r.db")
    assert f["strongest-pgd"]["status"] == "not reproduced" and f["strongest-pgd"]["ours"] == "0 of 6 models"
    assert f["strongest-pgd"]["paired"]["total"]["high"] < 0
    assert f["arp-vs-eps-pgd"]["status"] == "not reproduced"  # GB-MTA not the highest over the grid
    assert f["transferability-single-depth"]["status"] == "not reproduced"


def test_the_page_and_the_report(tmp_path, capsys, wide_console):
    _store(tmp_path / "r.db", gb_mta_bonus=2.0)
    render_leaderboard(tmp_path / "r.db", tmp_path / "site")
    html = (tmp_path / "site" / "reproduction-s.html").read_text()
    assert 'data-finding="strongest-pgd" data-status="reproduced"' in html and "7 of 8 models" in html
    assert "the paper's findings" in (tmp_path / "site" / "index.html").read_text()
    assert (tmp_path / "site" / "plots" / "arp-vs-eps-pgd-s.svg").is_file()
    assert main(["report", "reproduction", "--results", str(tmp_path / "r.db")]) == 0
    out = capsys.readouterr().out
    assert "strongest-pgd" in out and "reproduced" in out and "GB-MTA - total +2.00" in out


def test_report_compare_holds_runs_side_by_side(mini, tmp_path, capsys, wide_console):
    """Two runs (here: two attack seeds) compared on the models they share: top 3, the paired
    GB-MTA - TOTAL, the transferability trend and Kendall's tau between the rankings."""
    from benchmark.cli import main
    from benchmark.runner import RunOptions, run
    from leaderboard.compare import compare_results

    paths = []
    for seed in (0, 1):
        db = tmp_path / f"s{seed}.db"
        run(RunOptions(suite=str(mini), results=str(db), attacks=["pgd:gb-mta", "pgd:total", "pgd:single-depth",
                                                                   "fgsm:total"], eps=[8], seeds=[seed]))
        paths.append(db)
    result = compare_results(paths)
    assert result["models"] == ["AS", "layout-9"] and result["eps"] == 8
    assert set(result["tau"]) == {(0, 1)} and -1 <= result["tau"][(0, 1)] <= 1
    for r in result["runs"]:
        assert len(r["top3"]) == 3 and r["paired"]["pairs"] == 8
        assert "pgd:single-depth" in r["transfer"]
    assert main(["report", "compare", *map(str, paths)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "Kendall's tau between the rankings of" in out and "GB-MTA - TOTAL" in out
