"""The results of record: entries recomputed from the code, committed as text, checked against a
recomputation, made stale by a change of their inputs; a contributed attack joins with its
records; the site of record renders from them."""

import json
import shutil
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.runner.records import check_records, entries, read_entry, recompute, record_status
from benchmark.suites import load_suite

RECORD = """
[profiles.record]
eps = [8]
attacks = ["fgsm:total", "pgd:gb-mta"]
steps = { pgd = 2 }
eval_size = 4
batch_size = 2
defenses = ["none", "bitdepth:4"]
defended_models = ["AS"]
defense_attacks = ["pgd:gb-mta"]
"""

CONTRIBUTION = '''"""A contributed attack: PGD with a step twice as long (clipped to the ball)."""
import torch

from benchmark.attacks import OptimizerAttack, clip_to_ball, register_attack

RECORD_ATTACKS = ["longstep:gb-mta"]


@register_attack("longstep")
class LongStep(OptimizerAttack):
    budget_option = "steps"

    def __init__(self, objective="gb-mta", *, steps: int = 2):
        super().__init__(objective)
        self.steps = steps

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        x = images.detach().clone()
        objective = self.objective(tasks)
        for _ in range(self.steps):
            direction, _ = objective.direction(model, self._start(x), targets)
            x = clip_to_ball(x + 2 * eps / self.steps * direction.sign(), images, eps)
        return x.detach()
'''


@pytest.fixture
def record_suite(mini, tmp_path):
    manifest = tmp_path / "mini-run.toml"
    manifest.write_text(mini.read_text() + RECORD)
    return manifest


def test_entries_are_computed_committed_and_checked(record_suite, tmp_path, capsys, wide_console):
    suite = load_suite(record_suite)
    assert [(e.kind, e.name) for e in entries(suite)] == [("attack", "fgsm:total"), ("attack", "pgd:gb-mta"),
                                                          ("defense", "bitdepth:4")]
    records = tmp_path / "records"
    assert {s.state for s in record_status(suite, records)} == {"missing"}
    written = recompute([str(record_suite)], records)
    assert [e.path for e in written] == ["mini-run/attacks/fgsm_total.jsonl", "mini-run/attacks/pgd_gb-mta.jsonl",
                                         "mini-run/defenses/bitdepth_4.jsonl"]
    header, cells = read_entry(records / "mini-run/attacks/pgd_gb-mta.jsonl")
    assert header["provenance"]["threads"] == 1 and header["inputs"]["recipe"] == suite.training_id
    assert sorted(c.model for c in cells) == ["AS", "layout-9"] and all(c.status == "valid" for c in cells)
    lines = (records / "mini-run/attacks/pgd_gb-mta.jsonl").read_text().splitlines()
    assert len(lines) == 3  # the header and one line per cell
    assert "state" in json.loads(lines[1])["per_image"] and "state" not in json.loads(lines[2])["per_image"]
    targets = json.loads((records / "mini-run" / "targets.json").read_text())
    assert set(targets) == {"AS", "layout-9", "AS+bitdepth:4"} and "clean" in targets["AS"]
    assert {s.state for s in record_status(suite, records)} == {"current"}
    diffs = check_records([str(record_suite)], records)
    assert all(d.ok and d.exact for d in diffs), [d.problems for d in diffs]
    # a committed number edited: the check names the cell and how much it differs by
    path = records / "mini-run/attacks/fgsm_total.jsonl"
    raw = path.read_text().splitlines()
    cell = json.loads(raw[1])
    cell["arp"] = cell["arp"] + 0.5
    path.write_text("\n".join([raw[0], json.dumps(cell, sort_keys=True), *raw[2:]]) + "\n")
    code = main(["records", "check", "--records", str(records), "--suite", str(record_suite), "--entries",
                 "fgsm:total"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 1 and "mini-run/attacks/fgsm_total.jsonl: AS fgsm:total eps 8 seed 0: ARP is" in out
    assert "differs by 0.5" in out
    # PGD's steps changed: the entries that run PGD are stale and say why; FGSM's is not
    edited = record_suite.read_text().replace("steps = { pgd = 2 }", "steps = { pgd = 3 }")
    (tmp_path / "edited.toml").write_text(edited)
    states = {s.entry.name: s for s in record_status(load_suite(tmp_path / "edited.toml"), records)}
    assert {n: s.state for n, s in states.items()} == {"fgsm:total": "current", "pgd:gb-mta": "stale",
                                                       "bitdepth:4": "stale"}
    assert "the record profile" in states["pgd:gb-mta"].why
    # the eps changed: every entry is stale
    (tmp_path / "eps.toml").write_text(record_suite.read_text().replace("eps = [8]", "eps = [4]"))
    assert {s.state for s in record_status(load_suite(tmp_path / "eps.toml"), records)} == {"stale"}
    # an attack and a defense added to the record: two missing entries, the others still current
    grown = record_suite.read_text().replace('"pgd:gb-mta"]\nsteps', '"pgd:gb-mta", "mim:total"]\nsteps')
    grown = grown.replace('defenses = ["none", "bitdepth:4"]', 'defenses = ["none", "bitdepth:4", "median:3"]')
    (tmp_path / "grown.toml").write_text(grown)
    states = {s.entry.name: s.state for s in record_status(load_suite(tmp_path / "grown.toml"), records)}
    assert states == {"fgsm:total": "current", "pgd:gb-mta": "current", "mim:total": "missing",
                      "bitdepth:4": "current", "median:3": "missing"}


def test_a_contribution_joins_with_its_records_and_every_tampering_fails(record_suite, tmp_path, capsys,
                                                                         wide_console):
    """The fixture contribution: a plugin attack in contrib/ with its records passes the check; its
    records edited fail naming the cell; its code changed after recording is stale; a hostile one is
    refused with the validator's reason and nothing is written."""
    contrib = tmp_path / "contrib"
    contrib.mkdir()
    (contrib / "longstep.py").write_text(CONTRIBUTION)
    records = tmp_path / "records"
    args = ["--records", str(records), "--suite", str(record_suite), "--contrib", str(contrib)]
    assert main(["records", "recompute", *args, "--entries", "longstep:gb-mta"]) == 0
    assert (records / "mini-run/attacks/longstep_gb-mta.jsonl").is_file()
    assert main(["records", "check", *args, "--entries", "longstep:gb-mta"]) == 0
    capsys.readouterr()
    path = records / "mini-run/attacks/longstep_gb-mta.jsonl"
    kept = path.read_text()
    path.write_text(kept.replace('"forward_passes":', '"forward_passes":1', 1) if '"forward_passes":4' in kept
                    else kept.replace('"status":"valid"', '"status":"invalid"', 1))
    assert main(["records", "check", *args, "--entries", "longstep:gb-mta"]) == 1
    assert "mini-run/attacks/longstep_gb-mta.jsonl: AS longstep:gb-mta eps 8 seed 0:" in capsys.readouterr().out
    path.write_text(kept)
    (contrib / "longstep.py").write_text(CONTRIBUTION.replace("2 * eps", "1.5 * eps"))
    assert main(["records", "check", *args, "--entries", "longstep:gb-mta"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "stale: changed since it was recorded: the source longstep.py" in out
    hostile = CONTRIBUTION.replace('RECORD_ATTACKS = ["longstep:gb-mta"]', 'RECORD_ATTACKS = ["farstep:gb-mta"]')
    hostile = hostile.replace('"longstep"', '"farstep"')
    hostile = hostile.replace("return x.detach()", "return (x + 3 * eps).clamp(0, 1)")
    (contrib / "longstep.py").unlink()
    (contrib / "farstep.py").write_text(hostile)
    assert main(["records", "recompute", *args, "--entries", "farstep:gb-mta"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "not recorded" in err and "eps-ball" in err
    assert not (records / "mini-run/attacks/farstep_gb-mta.jsonl").exists()


def test_the_site_of_record_renders_from_the_records(record_suite, tmp_path):
    records = tmp_path / "records"
    recompute([str(record_suite)], records)
    from leaderboard.render import render_records

    index = render_records(records, tmp_path / "site")
    html = index.read_text()
    assert "The leaderboard of record" in html and "recomputed" in html and "DGBA" in html
    board = json.loads((index.parent / "leaderboard.json").read_text())
    ranking = board["suites"]["mini-run"]["views"]["record"]["by_eps"]["8"]["ranking"]
    assert {r["attack"] for r in ranking} == {"fgsm:total", "pgd:gb-mta"}
    assert all({"rank_low", "rank_high", "p_first", "optimality"} <= set(r) for r in ranking)
    assert abs(sum(r["p_first"] for r in ranking) - 1) < 1e-9
    assert (index.parent / "defenses-mini-run.html").is_file()
    shutil.rmtree(records / "mini-run" / "defenses")
    assert render_records(records, tmp_path / "site2").is_file()


def test_the_workflows_run_the_commands_a_contributor_runs():
    """CI's records job runs the check the tests above run; the Pages job renders the site the same
    way as locally; CONTRIBUTING.md and the templates are there."""
    root = Path(__file__).parents[1]
    records = (root / ".github" / "workflows" / "records.yml").read_text()
    assert "mtlbench records check --changed-since" in records and "fetch-depth: 0" in records
    pages = (root / ".github" / "workflows" / "pages.yml").read_text()
    assert "mtlbench records site --out site" in pages and "deploy-pages" in pages
    contributing = (root / "CONTRIBUTING.md").read_text()
    assert "RECORD_ATTACKS" in contributing and "mtlbench records check" in contributing
    for template in ("new-attack.yml", "new-defense.yml", "external-evaluation.yml"):
        assert (root / ".github" / "ISSUE_TEMPLATE" / template).is_file()
    assert "Licence of the code" in (root / ".github" / "PULL_REQUEST_TEMPLATE.md").read_text()


def test_changed_since_picks_the_entries_a_change_touches(record_suite, tmp_path, capsys, wide_console):
    """`records check --changed-since REF` (CI's command): nothing changed, nothing recomputed; an
    entry's file changed, that entry checked."""
    import subprocess

    root = tmp_path
    records = root / "records"
    recompute([str(record_suite)], records, only=["fgsm:total"])
    for cmd in (["git", "init", "-q"], ["git", "add", "records"],
                ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "records"]):
        subprocess.run(cmd, cwd=root, check=True)
    args = ["records", "check", "--records", str(records), "--suite", str(record_suite), "--changed-since", "HEAD"]
    assert main(args) == 0 and "nothing to recompute" in capsys.readouterr().out
    recompute([str(record_suite)], records, only=["pgd:gb-mta"])  # a new entry, not committed yet
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pgd_gb-mta.jsonl: ok" in out and "fgsm_total" not in out


def test_the_site_of_record_in_a_browser(tmp_path):
    """Every page loads without a script error; the suite switcher shows one suite at a time; the
    tables filter by text, by optimizer and by objective."""
    import sys

    from test_leaderboard import CHROMIUM

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (CI installs it)")
    sync_api = pytest.importorskip("playwright.sync_api")
    sys.path.insert(0, str(Path(__file__).parent))
    from results_factory import make_cell, put_models

    from benchmark.runner.store import ResultsStore
    from leaderboard import render_leaderboard

    db = tmp_path / "r.db"
    with ResultsStore(db) as store:
        for suite in ("tiny-a", "tiny-b"):
            put_models(store, suite, ["m1", "m2", "m3"])
            for i, model in enumerate(("m1", "m2", "m3")):
                for attack, arp in (("pgd:gb-mta", 30.0), ("pgd:total", 25.0), ("fgsm:gb-mta", 12.0),
                                    ("fgsm:total", 10.0)):
                    store.put(make_cell(suite, model, attack, 8.0, arp + i))
    index = render_leaderboard(db, tmp_path / "site", of_record=True)
    errors = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.on("pageerror", lambda e: errors.append(str(e)))
        for html in sorted(index.parent.glob("*.html")):
            page.goto(html.resolve().as_uri())
        page.goto(index.resolve().as_uri())
        a, b = page.locator('section[data-choice="tiny-a"]'), page.locator('section[data-choice="tiny-b"]')
        assert a.is_visible() and not b.is_visible()
        page.select_option("#suite-switch", "tiny-b")
        assert b.is_visible() and not a.is_visible()
        table = b.locator("table.ranking").first
        rows = table.locator("tbody tr")
        assert rows.count() == 4
        b.locator("div.filters input").first.fill("total")
        assert [r for r in rows.all() if r.is_visible()].__len__() == 2
        b.locator("div.filters input").first.fill("")
        b.locator("select.filter-optimizer").first.select_option("fgsm")
        visible = [r.get_attribute("data-attack") for r in rows.all() if r.is_visible()]
        assert sorted(visible) == ["fgsm:gb-mta", "fgsm:total"]
        b.locator("select.filter-objective").first.select_option("gb-mta")
        assert [r.get_attribute("data-attack") for r in rows.all() if r.is_visible()] == ["fgsm:gb-mta"]
        page.screenshot(path=str(tmp_path / "record.png"), full_page=True)
        browser.close()
    assert errors == []


def test_the_committed_records_are_not_stale():
    """Every entry committed in records/ was computed from the code and weights of this checkout:
    a change to an attack's source, a suite's pins, its recipe or its record profile without
    recomputing the entries it touches fails here, naming them (`mtlbench records recompute
    --stale` computes them again)."""
    root = Path(__file__).resolve().parents[1] / "records"
    suites = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not suites:
        pytest.skip("no records committed")
    stale = [f"{s.entry.path}: {s.why}" for name in suites for s in record_status(load_suite(name), root)
             if s.state == "stale"]
    assert not stale, "stale records:\n" + "\n".join(stale)
