"""Detectors: a defense kind with a per-image rejection score and a threshold set on clean held-out
images; detection-aware scoring (rejected images count as unharmed, the plain ARP beside it); the
adaptive evade-pgd attack; a detector added in one file; the learned head trained by a recipe."""

import json
from pathlib import Path

import pytest
import torch

from benchmark.attacks import create_attack
from benchmark.cli import main
from benchmark.defenses import DetectorModel, create_defense
from benchmark.defenses.checks import Observed, result_checks
from benchmark.errors import UserError
from benchmark.runner import ResultsStore, RunOptions, run
from benchmark.suites import load_suite
from leaderboard.aggregate import build_board

ROOT = Path(__file__).parents[1]
PLUGIN = str(ROOT / "examples" / "my_detector" / "my_detector.py")

DETECT = """
[profiles.detect]
eps = [8]
attacks = ["pgd:gb-mta", "evade-pgd:gb-mta"]
steps = { pgd = 3, evade-pgd = 3 }
eval_size = 8
batch_size = 4
models = ["AS"]
defenses = ["none", "consistency:5"]

[detectors]
steps = 20
batch_size = 8
train_size = 64
hidden = 8
"""


@pytest.fixture
def detect_suite(mini, tmp_path):
    manifest = tmp_path / "detect.toml"
    manifest.write_text(Path(mini).read_text() + DETECT)
    return manifest


def test_a_threshold_rejects_the_asked_share_of_clean_held_out_images(tiny_nyu):
    model, tasks, _ = tiny_nyu
    detector = DetectorModel(model, create_defense("consistency:10"), tasks).eval()
    images = torch.rand(40, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    threshold = detector.calibrate([images[:20], images[20:]])
    assert detector.threshold == threshold
    assert 2 <= int(detector.rejected(images).sum()) <= 5  # 10 % of 40, the quantile's rounding aside
    with pytest.raises(UserError, match="too few"):
        detector.calibrate([images[:5]])
    with pytest.raises(UserError, match="false-positive rate"):
        create_defense("consistency:80")


def test_detector_cells_score_the_attackers_view_beside_the_plain_arp(detect_suite, tmp_path):
    db = tmp_path / "r.db"
    summary = run(RunOptions(suite=str(detect_suite), profile="detect", results=str(db), workers=1))
    assert summary.done == {"valid": 4}
    with ResultsStore(db, readonly=True) as store:
        cells = {(c.model, c.attack): c for c in store.cells()}
        info = {row["model"]: row for row in store.models()}
    plain = cells[("AS", "pgd:gb-mta")]
    behind = cells[("AS+consistency:5", "pgd:gb-mta")]
    assert "detection" not in plain.config
    found = behind.config["detection"]
    assert found["images"] == 8 and 0 <= found["rejected"] <= 8 and len(behind.per_image["rejected"]) == 8
    assert found["rate"] == pytest.approx(100 * found["rejected"] / 8)
    # the plain ARP is the undefended model's under the same attack (a detector leaves predictions as they are)
    assert found["plain_arp"] == pytest.approx(plain.arp, abs=1e-6)
    if found["rejected"]:
        assert behind.arp < found["plain_arp"]  # rejected images count as unharmed
    else:
        assert behind.arp == pytest.approx(found["plain_arp"], abs=1e-6)
    calibration = info["AS+consistency:5"]["detector"]
    assert calibration["fpr_asked"] == 5 and 0 <= calibration["fpr_eval"] <= 100
    assert "256 clean images of the val split" in calibration["calibration"]
    with ResultsStore(db, readonly=True) as store:
        view = build_board(store)["suites"]["mini-run"]["views"]["detect"]
    rows = {r["defense"]: r for r in view["by_eps"]["8"]["defenses"]["rows"]}
    detected = rows["consistency:5"]
    assert detected["detector"]["fpr_eval"] == pytest.approx(calibration["fpr_eval"])
    assert detected["cells"]["pgd:gb-mta"]["detection"]["rate"] == pytest.approx(found["rate"])
    assert rows["none"]["detector"] is None
    checks = view["reliability"]["AS+consistency:5"]["checks"]["non_adaptive_beats_adaptive"]
    assert checks["flag"] is not None and "evade-pgd:gb-mta" in checks["evidence"]


def test_evade_pgd_is_pgd_without_a_detector_and_descends_its_score_with_one(tiny_nyu):
    model, tasks, batch = tiny_nyu
    images = batch["image"]
    gen = torch.Generator().manual_seed(0)
    pgd = create_attack("pgd:gb-mta", steps=5)(model, images, batch, tasks=tasks, eps=8 / 255, generator=gen)
    evade = create_attack("evade-pgd:gb-mta", steps=5)(model, images, batch, tasks=tasks, eps=8 / 255, generator=gen)
    assert torch.equal(pgd, evade)
    detector = DetectorModel(model, create_defense("consistency:5"), tasks).eval()
    pgd = create_attack("pgd:gb-mta", steps=5)(detector, images, batch, tasks=tasks, eps=8 / 255, generator=gen)
    evade = create_attack("evade-pgd:gb-mta", steps=5, weight=3)(detector, images, batch, tasks=tasks, eps=8 / 255,
                                                                   generator=gen)
    with torch.no_grad():
        assert detector.rejection_score(evade).mean() < detector.rejection_score(pgd).mean()
    with pytest.raises(UserError, match="weight must be in"):
        create_attack("evade-pgd:gb-mta", weight=-1)


def test_a_detector_in_one_file_is_evaluated_like_any_defense(mini, tmp_path, monkeypatch, capsys, wide_console):
    monkeypatch.setenv("MTLBENCH_PLUGINS", PLUGIN)
    db = tmp_path / "r.db"
    assert main(["run", "--suite", str(mini), "--models", "AS", "--attacks", "pgd:gb-mta,evade-pgd:gb-mta",
                 "--eps", "8", "--defenses", "none,rough-depth:5", "--results", str(db), "--workers", "1"]) == 0
    with ResultsStore(db, readonly=True) as store:
        cells = {(c.model, c.attack): c for c in store.cells()}
    assert cells[("AS+rough-depth:5", "evade-pgd:gb-mta")].config["detection"]["images"] == 4
    assert main(["defenses", "list"]) == 0
    assert "rough-depth" in capsys.readouterr().out


def test_the_learned_head_is_trained_by_the_manifests_recipe_and_pinned_when_shipped(detect_suite, tmp_path,
                                                                                       capsys):
    out = tmp_path / "heads"
    assert main(["defend", str(detect_suite), "--defense", "learned-consistency", "--models", "AS", "--out",
                 str(out)]) == 0
    config = json.loads((out / "AS" / "config.json").read_text())
    assert config["recipe"]["steps"] == 20 and config["recipe"]["hidden"] == 8 and config["final_loss"] > 0
    assert main(["defend", str(detect_suite), "--defense", "consistency", "--models", "AS"]) == 2
    assert "needs no training" in " ".join(capsys.readouterr().err.split())
    assert main(["defend", str(detect_suite), "--defense", "learned-consistency", "--steps", "5"]) == 2
    assert main(["run", "--suite", str(detect_suite), "--models", "AS", "--attacks", "pgd:gb-mta", "--eps", "8",
                 "--defenses", "learned-consistency:5", "--results", str(tmp_path / "r.db")]) == 2
    assert "no trained head for mini-run/AS" in " ".join(capsys.readouterr().err.split())


def test_the_default_suite_ships_pinned_heads_for_its_detect_profile():
    from benchmark.zoo.detectors import load_head

    suite = load_suite("tiny-nyuv2-resnet34")
    profile = suite.profile("detect")
    assert set(profile.models) == {"AS", "layout-41", "IND"}
    assert set(suite.detector_sha256["learned-consistency"]) == set(profile.models)
    for member in profile.models:
        head = load_head(suite, "learned-consistency", member, "cpu")
        assert sum(p.numel() for p in head.parameters()) < 100_000


def test_check_g_flags_a_broken_adaptive_attack():
    ids = tuple(str(i) for i in range(8))
    strong = [Observed(20.0, 0, ids, tuple(20.0 + (i % 2) for i in range(8)))]
    weak = [Observed(10.0, 0, ids, tuple(10.0 + (i % 3) for i in range(8)))]
    flagged = result_checks({("pgd:gb-mta", 8.0): strong, ("evade-pgd:gb-mta", 8.0): weak}, set())
    assert flagged["non_adaptive_beats_adaptive"]["flag"] is True
    passed = result_checks({("pgd:gb-mta", 8.0): weak, ("evade-pgd:gb-mta", 8.0): strong}, set())
    assert passed["non_adaptive_beats_adaptive"]["flag"] is False
    assert result_checks({("pgd:gb-mta", 8.0): weak}, set())["non_adaptive_beats_adaptive"]["flag"] is None
