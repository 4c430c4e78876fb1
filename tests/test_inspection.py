"""Per-image inspection: cells keep their first images' adversarial versions and predictions,
the leaderboard draws them before and after each attack, linked from the model and defenses pages."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmark.runner import ResultsStore, RunOptions, run
from benchmark.runner.inspection import decode
from leaderboard import render_leaderboard

INSPECTED = """
[profiles.look]
eps = [4, 8]
attacks = ["fgsm:total", "pgd:gb-mta"]
steps = { pgd = 2 }
eval_size = 4
batch_size = 2
inspect_images = 3
"""


@pytest.fixture
def inspected(mini, tmp_path):
    manifest = tmp_path / "look.toml"
    manifest.write_text(Path(mini).read_text() + INSPECTED)
    db = tmp_path / "r.db"
    kept = {}

    def keep(result):
        kept[(result.model, result.attack, result.eps)] = result.adversarial_images

    run(RunOptions(suite=str(manifest), profile="look", results=str(db), models=["AS"], keep_images=True, workers=1),
        on_result=keep)
    return db, kept


def test_cells_keep_their_first_images_and_the_target_its_clean_ones(inspected):
    db, kept = inspected
    with ResultsStore(db, readonly=True) as store:
        cells = store.cells()
        assert len(cells) == 4
        clean_key = cells[0].config["inspection"]["clean"]
        clean = [decode(b) for b in store.inspection(clean_key)]
        for c in cells:
            assert c.config["inspection"] == {"images": 3, "clean": clean_key}  # 3 images over 2 batches
            blobs = [decode(b)[0] for b in store.inspection(c.key)]
            assert len(blobs) == 3
            for i, (arrays, (c_arrays, _)) in enumerate(zip(blobs, clean, strict=True)):
                # the stored difference rebuilds the 8-bit adversarial image the cell scored
                adv = (kept[(c.model, c.attack, c.eps)][i].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
                rebuilt = np.clip(c_arrays["image"].astype(np.int16) + arrays["delta"], 0, 255)
                assert np.array_equal(rebuilt, adv)
                assert np.abs(arrays["delta"]).max() <= c.eps + 1  # within the ball, 8-bit rounding aside
                assert arrays["pred:segment_semantic"].shape == (32, 32)
                assert arrays["pred:normal"].shape == (3, 32, 32) and arrays["pred:depth_zbuffer"].dtype == np.float16
            assert set(clean[0][1]["metrics"]) == {"segment_semantic", "normal", "depth_zbuffer"}
        sizes = [len(b) for c in cells for b in store.inspection(c.key)]
    assert max(sizes) < 12_000  # at 32x32; about 11 KB at the tiny suites' 48x48


def test_the_inspection_page_draws_each_attack_before_and_after(inspected, tmp_path):
    db, _ = inspected
    out = tmp_path / "site"
    render_leaderboard(db, out)
    page = next(out.glob("inspect-*-AS.html"))
    html = page.read_text()
    from leaderboard.names import slug

    for attack in ("fgsm:total", "pgd:gb-mta"):
        for eps in ("4", "8"):
            assert f'id="i0-{slug(attack)}-{eps}"' in html
    pictures = re.findall(r'src="(inspect/[^"]+\.png)"', html)
    assert len(pictures) >= 3 * (1 + 2 * 3 + 4 * (2 + 3))  # clean image, gt and clean per task; per row 5
    assert all((out / p).is_file() for p in pictures)
    assert "drop " in html and "× 15.9" in html  # the eps-8 perturbation's stated amplification (127.5 / 8)
    model_page = next(out.glob("model-*-AS.html")).read_text()
    assert page.name in model_page and f"{page.name}#i0-" in model_page
    size = sum(p.stat().st_size for p in (out / "inspect").rglob("*.png"))
    assert size < 400_000  # 3 images x 4 cells at 32x32


CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (CI installs it)")
def test_the_inspection_page_in_a_browser(inspected, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    db, _ = inspected
    out = tmp_path / "site"
    render_leaderboard(db, out)
    page_file = next(out.glob("inspect-*-AS.html"))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(page_file.as_uri())
        visible = page.locator("section.inspect:not([hidden]) img")
        assert visible.count() > 20
        page.wait_for_load_state("load")
        page.evaluate("document.querySelectorAll('img').forEach(i => i.loading = 'eager')")
        page.wait_for_function("[...document.querySelectorAll('section.inspect:not([hidden]) img')]"
                               ".every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("section.inspect:not([hidden]) h2").inner_text().startswith("Image 1")
        page.select_option("select.choice", "1")
        assert page.locator("section.inspect:not([hidden]) h2").inner_text().startswith("Image 2")
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280
        browser.close()


def test_a_verified_bundles_images_are_inspected_too(mini, tmp_path):
    """A bundle's stored adversarial images, re-scored by the verifier, get their rows on the
    inspection pages beside the host's cells."""
    from benchmark.cli import main

    manifest = tmp_path / "look.toml"
    manifest.write_text(Path(mini).read_text() + INSPECTED)
    bundles = tmp_path / "bundles"
    assert main(["submit", "fgsm:gb-mta", "--suite", str(manifest), "--profile", "look", "--models", "AS",
                 "--out", str(bundles / "mine")]) == 0
    host = tmp_path / "host.db"
    run(RunOptions(suite=str(manifest), profile="look", results=str(host), models=["AS"], attacks=["pgd:gb-mta"],
                   workers=1))
    out = tmp_path / "site"
    assert main(["leaderboard", "--results", str(host), "--bundles", str(bundles), "--suite", str(manifest),
                 "--out", str(out)]) == 0
    html = next(out.glob("inspect-*-AS.html")).read_text()
    from leaderboard.names import slug

    assert f'id="i0-{slug("pgd:gb-mta")}-8"' in html and f'id="i0-{slug("fgsm:gb-mta")}-8"' in html
