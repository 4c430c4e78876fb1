"""The leaderboard: aggregation on a hand-built results database, escaping, the rendered site,
and a browser test in headless Chromium."""

import json
import shutil
import sys
from pathlib import Path

import pytest
from results_factory import make_cell, put_models

from benchmark.defenses.checks import CHECK_NAMES
from benchmark.runner import ResultsStore, RunOptions, run
from benchmark.scoring import bootstrap_ci
from leaderboard import build_board, render_leaderboard
from leaderboard.aggregate import choose_eps, headline_view

# ARP of each attack on each model at eps 8
ARPS = {
    "m1": {"pgd:gb-mta": 30.0, "pgd:total": 25.0, "fgsm:total": 10.0, "pgd:single-depth": 20.0},
    "m2": {"pgd:gb-mta": 28.0, "pgd:total": 28.0, "fgsm:total": 12.0, "pgd:single-depth": 22.0},
    "m3": {"pgd:gb-mta": 26.0, "pgd:total": 27.0, "fgsm:total": 11.0, "pgd:single-depth": 21.0},
}


@pytest.fixture
def board_db(tmp_path):
    db = tmp_path / "hand.db"
    with ResultsStore(db) as store:
        put_models(store, "s", ["m1", "m2", "m3"])
        for model, row in ARPS.items():
            for attack, value in row.items():
                task_arp = ({"segment_semantic": value / 4, "normal": value / 2, "depth_zbuffer": value}
                            if attack == "pgd:single-depth" else None)
                store.put(make_cell("s", model, attack, 8.0, value, task_arp=task_arp))
                store.put(make_cell("s", model, attack, 4.0, value / 2))
        # a second seed of m1 pgd:gb-mta at eps 8: the entry is the mean over seeds
        store.put(make_cell("s", "m1", "pgd:gb-mta", 8.0, 32.0, seed=1))
        # an attack that is invalid on one model is never ranked
        store.put(make_cell("s", "m1", "<script>alert(1)</script>", 8.0, 99.0))
        store.put(make_cell("s", "m2", "<script>alert(1)</script>", 8.0, None, status="invalid",
                            reason="left the eps-ball: max |delta| = 9/255"))
        store.put(make_cell("s", "m3", "<script>alert(1)</script>", 8.0, None, status="failed", reason="boom"))
    return db


def test_rankings_cis_and_wins(board_db):
    with ResultsStore(board_db, readonly=True) as store:
        board = build_board(store)
    suite = headline_view(board, "s")
    assert suite["default_eps"] == 8.0 and suite["eps"] == [4.0, 8.0]
    block = suite["by_eps"]["8"]
    ranking = {r["attack"]: r for r in block["ranking"]}
    assert [r["attack"] for r in block["ranking"]] == ["pgd:gb-mta", "pgd:total", "pgd:single-depth", "fgsm:total"]
    gb = ranking["pgd:gb-mta"]
    values = [31.0, 28.0, 26.0]  # m1 averages its two seeds
    assert gb["mean_arp"] == pytest.approx(sum(values) / 3)
    assert (gb["mean_arp"], gb["ci_low"], gb["ci_high"]) == pytest.approx(bootstrap_ci(values, seed=0))
    assert gb["ci_low"] <= gb["mean_arp"] <= gb["ci_high"]
    # wins: m1 -> gb-mta, m2 -> tie gb-mta/total (both count), m3 -> total
    assert gb["wins"] == 2 and ranking["pgd:total"]["wins"] == 2 and ranking["fgsm:total"]["wins"] == 0
    assert gb["rank"] == 1 and gb["passes_per_image"] == 20 and gb["models"] == 3
    unranked = {u["attack"]: u for u in block["unranked"]}
    bad = unranked["<script>alert(1)</script>"]
    assert ((bad["invalid"], bad["failed"]) == (1, 1) and "boom" in bad["reason"]) or "eps-ball" in bad["reason"]
    assert "<script>alert(1)</script>" not in ranking
    assert block["table"]["m2"]["<script>alert(1)</script>"]["status"] == "invalid"
    # transferability of SINGLE-depth: mean(ARP-seg, ARP-normal) / ARP-depth = (1/4 + 1/2) / 2
    t = block["transfer"]
    assert t["attacks"] == ["pgd:single-depth"]
    assert t["per_model"]["pgd:single-depth"]["m1"] == pytest.approx(0.375)
    assert t["matrix"]["pgd:single-depth"]["depth_zbuffer"] == pytest.approx(21.0)
    assert set(t["by_level"]["pgd:single-depth"]) == {0, 1, 2}
    assert choose_eps([2.0, 4.0, 16.0]) == 4.0 and choose_eps([2.0, 8.0]) == 8.0


def test_site_escapes_names_and_matches_its_json(board_db, tmp_path):
    index = render_leaderboard(board_db, tmp_path / "site")
    site = index.parent
    pages = [p.read_text() for p in site.glob("*.html")]
    assert len(pages) == 1 + 3 + 3  # index, suite + transfer + reproduction, one per model
    for html in pages:
        assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in index.read_text()
    board = json.loads((site / "leaderboard.json").read_text())
    top = headline_view(board, "s")["by_eps"]["8"]["ranking"][0]
    assert f"{top['mean_arp']:.2f}" in index.read_text()
    assert "abc1234" in index.read_text() and "local-sha256:m1" in (site / "model-s-m1.html").read_text()
    assert "local-sha256:m3" in index.read_text() and "local-sha256:m2" in (site / "suite-s.html").read_text()
    assert (site / "static" / "leaderboard.js").is_file() and list((site / "plots").glob("*.svg"))
    assert "http://" not in index.read_text().replace("http://www.w3.org", "")


def test_empty_database_renders(tmp_path):
    ResultsStore(tmp_path / "empty.db").close()
    index = render_leaderboard(tmp_path / "empty.db", tmp_path / "site")
    assert "No results yet" in index.read_text()


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it)")
def test_browser(mini_suite, tmp_path, monkeypatch):
    sync_api = pytest.importorskip("playwright.sync_api")
    manifest, home = mini_suite
    monkeypatch.setenv("MTLBENCH_HOME", str(home))
    db = tmp_path / "r.db"
    sys.path.insert(0, str(Path(__file__).parent))
    import plugin_masking_defenses  # noqa: F401  (registers test-shatter, a defense that masks gradients)

    run(RunOptions(suite=str(manifest), results=str(db), attacks=["fgsm:total", "pgd:gb-mta", "pgd:single-depth"],
                   defenses=["none", "bitdepth:4", "test-shatter"]))
    index = render_leaderboard(db, tmp_path / "site")
    with ResultsStore(db, readonly=True) as store:
        block = headline_view(build_board(store), "mini-run")["by_eps"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(index.resolve().as_uri())
        table = page.locator('table.ranking[data-eps="8"]')
        assert table.is_visible() and not page.locator('table.ranking[data-eps="4"]').is_visible()

        def rows(t):
            return [[c.strip() for c in r.locator("td").all_inner_texts()] for r in t.locator("tbody tr").all()]

        expected = [[str(r["rank"]), r["attack"], f"{r['mean_arp']:.2f}"] for r in block["8"]["ranking"]]
        assert [[r[0], r[3], r[4]] for r in rows(table)] == expected  # rank, (its interval, P(first)), attack, ARP
        # sort by clicking: "time / image" ascending, then descending
        header = table.locator("th", has_text="time / image")
        header.click()
        times = [float(r[8]) for r in rows(table)]
        assert times == sorted(times)
        header.click()
        assert [float(r[8]) for r in rows(table)] == sorted(times, reverse=True)
        # switch eps
        page.select_option("select.eps", "4")
        table4 = page.locator('table.ranking[data-eps="4"]')
        assert table4.is_visible() and not table.is_visible()
        assert [r[3] for r in rows(table4)] == [r["attack"] for r in block["4"]["ranking"]]
        page.screenshot(path=str(tmp_path / "index.png"), full_page=True)
        # the suite page: per-task breakdown on demand
        page.goto((index.parent / "suite-mini-run.html").resolve().as_uri())
        shown = page.locator('div[data-eps="8"] span.task').first
        assert not shown.is_visible()
        page.check("#show-tasks")
        assert shown.is_visible()
        page.screenshot(path=str(tmp_path / "suite.png"), full_page=True)
        # the defenses page: its table is the store's numbers
        page.goto((index.parent / "defenses-mini-run.html").resolve().as_uri())
        defenses = page.locator("table#defenses-8")
        assert defenses.is_visible()
        per_attack = page.locator("table#defense-attacks-8")
        for row in block["8"]["defenses"]["rows"]:
            for attack, cell in row["cells"].items():
                cell_td = per_attack.locator(f'tr[data-defense="{row["defense"]}"] td[data-attack="{attack}"]')
                text = cell_td.inner_text()
                assert text.startswith(f"{cell['arp']:.2f}"), (row["defense"], attack, text)
        assert defenses.locator("tbody tr").count() == 3
        # the reference row says it is one; every target's checks are listed with their status
        assert "reference" in defenses.locator('tr[data-defense="none"]').inner_text()
        checks = page.locator("table.checks-table tbody tr")
        # AS and layout-9, each undefended and behind the two defenses, each with every check
        assert checks.count() == 6 * len(CHECK_NAMES)
        assert page.locator('table.checks-table tr[data-target="AS+test-shatter"][data-check="a"]').get_attribute(
            "data-status") == "flagged"
        assert page.locator('table.checks-table tr[data-target="AS"][data-check="a"]').get_attribute(
            "data-status") == "passed"
        # the best known column (worst case per image) and the masking flag are the store's
        for row in block["8"]["defenses"]["rows"]:
            tr = defenses.locator(f'tr[data-defense="{row["defense"]}"]')
            assert tr.locator("td.worst b").inner_text() == f"{row['best_known']['arp']:.2f}", row["defense"]
            flagged = tr.locator("div.flag")
            assert flagged.count() == (1 if row["flags"] else 0), row["defense"]
        shatter = defenses.locator('tr[data-defense="test-shatter"] div.flag').inner_text()
        assert shatter.startswith("evaluation unreliable: AS+test-shatter: (a) vanishing gradients: 2 of 2 images")
        # a wide table scrolls inside its own box: nothing of the page is cut off at 1280 px
        box = defenses.locator("xpath=..").bounding_box()
        assert box["x"] + box["width"] <= 1280
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        page.screenshot(path=str(tmp_path / "defenses.png"), full_page=True)
        browser.close()
    assert (tmp_path / "index.png").stat().st_size > 10_000
