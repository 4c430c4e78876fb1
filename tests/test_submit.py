"""Submitting an attack: the example package end to end, result bundles, verification and tampering."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from benchmark.cli import main
from benchmark.runner.bundle import submit, verify_bundle

ROOT = Path(__file__).resolve().parent.parent
PROBE = str(Path(__file__).parent / "plugin_probe.py")


def _cli(args, env, cwd):
    return subprocess.run([sys.executable, "-m", "benchmark", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_the_example_package_is_found_submitted_verified_and_ranked(example_package, mini, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(example_package), str(ROOT)]), "COLUMNS": "250"}
    env.pop("MTLBENCH_PLUGINS", None)
    listed = _cli(["attacks", "list", "cospgd:*"], env, tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "cospgd:gb-mta" in listed.stdout and "cospgd:single-depth" in listed.stdout
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    made = _cli(["submit", "cospgd:gb-mta", "--suite", str(mini), "--out", str(bundles / "cospgd")], env, tmp_path)
    assert made.returncode == 0, made.stderr
    manifest = json.loads((bundles / "cospgd" / "manifest.json").read_text())
    assert manifest["attack"]["names"] == ["cospgd:gb-mta"]
    assert set(manifest["attack"]["sources"]) == {"my_attack/__init__.py"}
    assert manifest["data"]["image_ids"] == [f"synthetic-nyuv2/test/seed0/{i}" for i in range(4)]
    assert set(manifest["suite"]["members"]) == {"AS", "layout-9"} and manifest["eps"] == [4.0, 8.0]
    assert len(list((bundles / "cospgd" / "images").rglob("*.safetensors"))) == 4
    checked = _cli(["verify", str(bundles / "cospgd"), "--suite", str(mini)], env, tmp_path)
    assert checked.returncode == 0 and "verified" in checked.stdout, checked.stdout + checked.stderr
    # the verifier does not need the attack's package: it re-scores images
    env_without = {**env, "PYTHONPATH": str(ROOT)}
    board = _cli(["leaderboard", "--results", str(tmp_path / "none.db"), "--bundles", str(bundles),
                  "--out", str(tmp_path / "site")], env_without, tmp_path)
    assert board.returncode == 0, board.stderr
    html = (tmp_path / "site" / "index.html").read_text()
    row = html[html.index('data-attack="cospgd:gb-mta"'):]
    assert "verified bundle" in row[: row.index("</tr>")]
    assert 'data-status="verified"' in html


@pytest.fixture
def bundle(mini, tmp_path):
    result = submit(["pgd:gb-mta"], suite=str(mini), out=tmp_path / "b")
    assert result.bundle is not None and not result.failures
    return result.bundle


def _edit(bundle: Path, kind: str) -> None:
    cells = json.loads((bundle / "cells.json").read_text())
    if kind == "claimed ARP":
        cells[1]["arp"] += 0.5
    elif kind == "image outside the ball":
        f = bundle / cells[2]["images_file"]
        images = load_file(str(f))["adversarial"]
        images[3] = (images[3] + 0.1).clamp(0, 1)
        save_file({"adversarial": images}, str(f))
    elif kind == "weights revision":
        manifest = json.loads((bundle / "manifest.json").read_text())
        manifest["suite"]["members"]["AS"]["scored_revision"] = "local-sha256:0123456789abcdef"
        (bundle / "manifest.json").write_text(json.dumps(manifest))
        for c in cells:
            if c["model"] == "AS":
                c["model_revision"] = "local-sha256:0123456789abcdef"
    (bundle / "cells.json").write_text(json.dumps(cells))


@pytest.mark.parametrize("kind, words", [
    ("claimed ARP", "ARP is"),
    ("image outside the ball", "image 3 (synthetic-nyuv2/test/seed0/3) leaves the eps-ball"),
    ("weights revision", "scored on weights revision local-sha256:0123456789abcdef"),
])
def test_tampered_bundles_are_rejected_naming_the_cell(bundle, mini, kind, words, capsys, wide_console):
    assert main(["verify", str(bundle), "--suite", str(mini)]) == 0
    _edit(bundle, kind)
    assert main(["verify", str(bundle), "--suite", str(mini)]) == 1
    out = capsys.readouterr().out
    assert "rejected" in out and words in out
    assert any(f"{m} pgd:gb-mta eps" in out for m in ("AS", "layout-9")), out


def test_a_rejected_bundle_is_self_reported_and_never_ranked(bundle, mini, tmp_path):
    from leaderboard import render_leaderboard

    folder = tmp_path / "bundles"
    folder.mkdir()
    bundle.rename(folder / "edited")
    _edit(folder / "edited", "claimed ARP")
    index = render_leaderboard(tmp_path / "none.db", tmp_path / "site", bundles=folder, plots_enabled=False)
    html = index.read_text()
    assert 'data-status="self-reported"' in html and 'data-attack="pgd:gb-mta"' not in html
    board = json.loads((tmp_path / "site" / "leaderboard.json").read_text())
    assert board["suites"] == {} and board["bundles"][0]["verified"] is False


def test_a_zipped_bundle_verifies_and_a_zip_slip_is_refused(mini, tmp_path, capsys, wide_console):
    result = submit(["fgsm:total"], suite=str(mini), out=tmp_path / "z", as_zip=True, eps=[8])
    assert result.bundle == tmp_path / "z.zip" and result.bundle.is_file()
    assert verify_bundle(result.bundle, suite=str(mini)).verified
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    assert main(["verify", str(evil)]) == 2
    assert "points outside the bundle" in capsys.readouterr().err


def test_a_failing_submission_gets_a_report_and_no_bundle(mini, tmp_path, monkeypatch, capsys, wide_console):
    monkeypatch.setenv("MTLBENCH_PLUGINS", PROBE)
    monkeypatch.setenv("PROBE_STEP_SCALE", "nan")
    assert main(["submit", "probe:gb-mta", "--suite", str(mini), "--out", str(tmp_path / "p")]) == 1
    assert not (tmp_path / "p").exists() and not list(tmp_path.glob(".p.*"))
    report = json.loads((tmp_path / "p-report.json").read_text())
    assert "probe:gb-mta" in report["failures"][0] and "invalid" in report["failures"][0]
    assert "submission failed" in capsys.readouterr().err


def test_a_bundle_is_never_overwritten(bundle, mini, capsys, wide_console):
    assert main(["submit", "pgd:gb-mta", "--suite", str(mini), "--out", str(bundle)]) == 2
    assert "never overwritten" in capsys.readouterr().err


def test_images_in_a_bundle_are_the_scored_ones(bundle, mini):
    """The bundle's images re-scored give the cell's exact numbers (same device)."""
    verdict = verify_bundle(bundle, suite=str(mini))
    assert verdict.verified and verdict.checked == 4
    cells = json.loads((bundle / "cells.json").read_text())
    images = load_file(str(bundle / cells[0]["images_file"]))["adversarial"]
    assert images.dtype == torch.float32 and images.shape == (4, 3, 32, 32)
