"""Cross-model transfer: images crafted white-box on one member and scored on another, the matrix
and its finding, the transfer attack of the gradient-masking checks (f), and `mtlbench transfer`."""

from pathlib import Path

import pytest
import torch

from benchmark.cli import main
from benchmark.defenses.checks import Observed, result_checks
from benchmark.errors import UserError
from benchmark.runner import ResultsStore, RunOptions, run
from benchmark.suites import load_suite
from leaderboard.aggregate import build_board
from leaderboard.crossmodel import model_transfer, shared_blocks

TRANSFER = """
[profiles.transfer]
eps = [8]
attacks = ["pgd:gb-mta", "fgsm:total"]
steps = { pgd = 2 }
eval_size = 4
batch_size = 2
transfer_from = ["*"]
"""


@pytest.fixture
def transfer_suite(mini, tmp_path):
    manifest = tmp_path / "mini-transfer.toml"
    manifest.write_text(Path(mini).read_text() + TRANSFER)
    return manifest


def test_transfer_cells_replay_the_sources_white_box_images_on_the_target(transfer_suite, tmp_path):
    kept = {}

    def keep(result):
        kept[(result.model, result.attack)] = result.adversarial_images

    db = tmp_path / "r.db"
    summary = run(RunOptions(suite=str(transfer_suite), profile="transfer", results=str(db), keep_images=True,
                             workers=1), on_result=keep)
    assert summary.done == {"valid": 8}  # 2 members x 2 attacks white-box, and each crafted on the other
    for attack in ("pgd:gb-mta", "fgsm:total"):
        # the images scored on AS are exactly those layout-9's own white-box cell made
        assert torch.equal(kept[("AS", f"{attack} from layout-9")], kept[("layout-9", attack)])
        assert torch.equal(kept[("layout-9", f"{attack} from AS")], kept[("AS", attack)])
    with ResultsStore(db, readonly=True) as store:
        cells = {(c.model, c.attack): c for c in store.cells()}
    crafted = cells[("AS", "pgd:gb-mta from layout-9")]
    assert crafted.config["crafted_on"] == "layout-9" and crafted.config["crafted_on_revision"]
    assert crafted.config["objective"] == "gb-mta"  # shown and coloured as the attack it replays
    assert crafted.key != cells[("AS", "pgd:gb-mta")].key
    # the transfer is weaker than the attack white-box on the target itself
    assert crafted.arp < cells[("AS", "pgd:gb-mta")].arp

    with ResultsStore(db, readonly=True) as store:
        view = build_board(store)["suites"]["mini-run"]["views"]["transfer"]
    assert view["attacks"] == ["fgsm:total", "pgd:gb-mta"]  # transfer cells are never ranked as attacks
    mt = view["by_eps"]["8"]["model_transfer"]
    assert mt["attacks"] == ["fgsm:total", "pgd:gb-mta"] and set(mt["sources"]) == {"AS", "layout-9"}
    gb = mt["by_attack"]["pgd:gb-mta"]
    assert gb["arp"]["layout-9"]["AS"] == pytest.approx(crafted.arp)
    assert gb["arp"]["AS"]["AS"] == pytest.approx(cells[("AS", "pgd:gb-mta")].arp)  # the diagonal: white-box
    assert gb["pairs"] == 2 and "too few pairs" in gb["finding"]["text"]
    checks = view["reliability"]["AS"]["checks"]["transfer_beats_white_box"]
    assert checks["flag"] is False and "crafted on layout-9" in checks["evidence"]


def test_transfer_command_runs_renders_and_states_the_finding(transfer_suite, tmp_path, capsys, wide_console):
    out = tmp_path / "site"
    assert main(["transfer", "--suite", str(transfer_suite), "--results", str(tmp_path / "r.db"), "--out", str(out),
                 "--workers", "1"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "relative transfer by shared blocks" in text and "transfer falls as layouts share fewer blocks?" in text
    page = (out / "crossmodel-mini-run--transfer.html")
    if not page.exists():  # the transfer profile is the headline when nothing else ran
        page = out / "crossmodel-mini-run.html"
    html = page.read_text()
    assert "crafted on \\ scored on" in html and "Does transfer fall as layouts share fewer blocks?" in html
    assert main(["transfer", "--suite", str(transfer_suite), "--profile", "quick", "--results",
                 str(tmp_path / "r.db")]) == 2


def test_a_transfer_source_must_be_a_member(mini, tmp_path):
    manifest = tmp_path / "bad.toml"
    manifest.write_text(Path(mini).read_text() + TRANSFER.replace('["*"]', '["nobody"]'))
    with pytest.raises(UserError, match="transfer_from.*no model 'nobody'"):
        load_suite(str(manifest))


def test_shared_blocks_count_the_blocks_split_alike():
    all_shared = [[[0, 1, 2]]] * 5
    independent = [[[0], [1], [2]]] * 5
    branch_at_3 = [[[0, 1, 2]]] * 3 + [[[0], [1, 2]]] * 2
    assert shared_blocks(all_shared, all_shared) == 5 and shared_blocks(all_shared, independent) == 0
    assert shared_blocks(all_shared, branch_at_3) == 3 and shared_blocks(branch_at_3, [[[2, 1], [0]]] * 5) == 2


def _entries(values):
    return {(t, a): {"arp": v, "status": "valid"} for (t, a), v in values.items()}


def test_the_finding_follows_the_data_both_ways():
    """Six layouts sharing 0-5 blocks with AS; transfer made to grow with the shared blocks is
    found (small Mantel p); transfer that falls with them is not."""
    layouts = {f"m{k}": [[[0, 1, 2]]] * k + [[[0], [1], [2]]] * (5 - k) for k in range(6)}
    models = list(layouts)
    info = {m: {"layout_sets": s, "shared_blocks": int(m[1:])} for m, s in layouts.items()}
    transfer = {f"pgd:gb-mta from {s}": ("pgd:gb-mta", s) for s in models}
    grows = {(t, "pgd:gb-mta"): 40.0 for t in models}
    falls = dict(grows)
    for s in models:
        for t in models:
            if s != t:
                k = shared_blocks(layouts[s], layouts[t])
                grows[(t, f"pgd:gb-mta from {s}")] = 4.0 + 6.0 * k + 0.01 * int(t[1])
                falls[(t, f"pgd:gb-mta from {s}")] = 14.0 - 1.5 * shared_blocks(layouts[s], layouts[t])
    found = model_transfer(_entries(grows), transfer, models, info)["by_attack"]["pgd:gb-mta"]
    assert found["finding"]["rho"] > 0.9 and found["finding"]["p"] < 0.05 and found["finding"]["text"].startswith("yes")
    assert [g["shared"] for g in found["by_shared"]] == sorted({g["shared"] for g in found["by_shared"]}, reverse=True)
    none = model_transfer(_entries(falls), transfer, models, info)["by_attack"]["pgd:gb-mta"]
    assert none["finding"]["text"].startswith("no clear evidence")


def test_check_f_flags_a_transfer_attack_that_beats_the_white_box_one():
    ids = tuple(str(i) for i in range(8))
    white = [Observed(10.0, 0, ids, tuple(10.0 + (i % 3) for i in range(8)))]
    strong = [Observed(20.0, 0, ids, tuple(20.0 + (i % 2) for i in range(8)))]
    weak = [Observed(5.0, 0, ids, tuple(5.0 + (i % 2) for i in range(8)))]
    flagged = result_checks({("pgd:gb-mta", 8.0): white}, set(), {("pgd:gb-mta", "AS", 8.0): strong})
    assert flagged["transfer_beats_white_box"]["flag"] is True
    assert "pgd:gb-mta crafted on AS 20.00 vs white-box 10.00" in flagged["transfer_beats_white_box"]["evidence"]
    passed = result_checks({("pgd:gb-mta", 8.0): white}, set(), {("pgd:gb-mta", "AS", 8.0): weak})
    assert passed["transfer_beats_white_box"]["flag"] is False
    assert result_checks({("pgd:gb-mta", 8.0): white}, set())["transfer_beats_white_box"]["flag"] is None
