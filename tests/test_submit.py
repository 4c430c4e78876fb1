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
from benchmark.runner.bundle import submit
from benchmark.runner.verify import verify_bundle

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
                  "--suite", str(mini), "--out", str(tmp_path / "site")], env_without, tmp_path)
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


def _json(path: Path):
    return json.loads(path.read_text())


def _write(path: Path, data) -> None:
    path.write_text(json.dumps(data))


def _cells(bundle: Path, change) -> None:
    cells = _json(bundle / "cells.json")
    change(cells)
    _write(bundle / "cells.json", cells)


def _manifest(bundle: Path, change) -> None:
    manifest = _json(bundle / "manifest.json")
    change(manifest)
    _write(bundle / "manifest.json", manifest)


def _outside_the_ball(bundle: Path) -> None:
    cells = _json(bundle / "cells.json")
    f = bundle / cells[2]["images_file"]
    images = load_file(str(f))["adversarial"]
    images[3] = (images[3] + 0.1).clamp(0, 1)
    save_file({"adversarial": images}, str(f))
    cells[2]["images_sha256"] = __import__("hashlib").sha256(f.read_bytes()).hexdigest()
    _write(bundle / "cells.json", cells)


def _revision(bundle: Path) -> None:
    """A bundle made honestly on other weights (another build of the model): consistent in itself."""
    from benchmark.runner.store import cell_key

    other = "local-sha256:0123456789abcdef"
    _manifest(bundle, lambda m: m["suite"]["members"]["AS"].update(scored_revision=other))

    def change(cells):
        for c in cells:
            if c["model"] == "AS":
                c["model_revision"] = c["config"]["model_revision"] = other
                c["key"] = cell_key({k: v for k, v in c["config"].items() if k != "budget"})

    _cells(bundle, change)


def _renamed(cells) -> None:
    cells[0]["attack"] = "apgd:gb-mta"
    cells[0]["config"]["attack"] = "apgd:gb-mta"


def _extra(cells) -> None:
    cells.append({**cells[0], "eps": 16.0})


def _big_image(bundle: Path) -> None:
    f = bundle / _json(bundle / "cells.json")[0]["images_file"]
    f.write_bytes(b"\0" * (4 * 3 * 32 * 32 * 4 + 200_000))


def _link(bundle: Path) -> None:
    (bundle / "images" / "elsewhere").symlink_to("/etc")


def _scores(cells) -> None:
    cells[1]["per_image"]["score"] = [v + 50 for v in cells[1]["per_image"]["score"]]


def _image_metric(cells) -> None:
    cells[3]["per_image"]["metrics"]["depth_zbuffer"]["abs_err"][0] *= 0.5


def _shifted(cells) -> None:
    for c in cells:
        c["per_image"]["score"] = [v + 0.30 for v in c["per_image"]["score"]]


def _rekey(c: dict) -> None:
    from benchmark.runner.store import cell_key

    c["key"] = cell_key({k: v for k, v in c["config"].items() if k not in ("budget", "data_root")})


def _eps_off(bundle: Path) -> None:
    _manifest(bundle, lambda m: m.update(eps=[4.0, 8.0000001]))

    def change(cells):
        for c in cells:
            if c["eps"] == 8.0:
                c["eps"] = c["config"]["eps"] = 8.0000001
                _rekey(c)

    _cells(bundle, change)


def _other_steps(bundle: Path) -> None:
    """Cells of another configuration (PGD-50), consistent in themselves, under the profile's name."""
    _manifest(bundle, lambda m: m["attack"]["options"]["pgd:gb-mta"].update(steps=50))

    def change(cells):
        for c in cells:
            c["config"]["options"]["steps"] = 50
            _rekey(c)

    _cells(bundle, change)


def _changed_source(bundle: Path) -> None:
    def change(m):
        m["mtlbench"]["version"] = "0.0.9"
        first = next(iter(m["attack"]["sources"]))
        m["attack"]["sources"][first] = "0" * 64

    _manifest(bundle, change)


#: (what is tampered with, the change, words of the rejection)
TAMPERING = [
    ("claimed ARP", lambda b: _cells(b, lambda c: c[1].update(arp=c[1]["arp"] + 0.5)), "ARP is"),
    ("image outside the ball", _outside_the_ball, "image 3 (synthetic-nyuv2/test/seed0/3) leaves the eps-ball"),
    ("weights revision", _revision, "scored on weights revision local-sha256:0123456789abcdef"),
    ("attack renamed", lambda b: _cells(b, _renamed), "its attack is not in the grid the manifest declares"),
    ("cell dropped", lambda b: _cells(b, lambda c: c.pop(2)), "missing cell: "),
    ("cell duplicated", lambda b: _cells(b, lambda c: c.append(c[0])), "appears twice"),
    ("cell added", lambda b: _cells(b, _extra), "its eps is not in the grid"),
    ("per-image scores", lambda b: _cells(b, _scores), "score is"),
    ("per-image metric", lambda b: _cells(b, _image_metric), "depth_zbuffer abs_err is"),
    ("per-image statistics", lambda b: _cells(b, lambda c: c[0]["per_image"].update(state=c[1]["per_image"]["state"])),
     "the statistics of"),
    ("scores shifted by a third of a point", lambda b: _cells(b, _shifted), "score is"),
    ("eps off the profile's", _eps_off, "eps 8.0000001 is not an eps of the profile quick"),
    ("a profile the suite has not", lambda b: _manifest(b, lambda m: m["profile"].update(name="nosuch")),
     "profile 'nosuch' is not a profile of mini-run"),
    ("other steps, consistently", _other_steps, "ran with options {'steps': 50}; under the profile quick it runs with"),
    ("a changed built-in attack under another version", _changed_source, "is mtlbench's own attack, but the bundle's"),
    ("JSON nested 100,000 deep", lambda b: (b / "cells.json").write_text("[" * 100_000 + "]" * 100_000),
     "nests its values too deeply"),
    ("options", lambda b: _cells(b, lambda c: c[0]["config"]["options"].update(steps=50)), "config.options is"),
    ("key", lambda b: _cells(b, lambda c: c[0].update(key="0" * 64)), "key is not the hash"),
    ("absurd images", lambda b: _cells(b, lambda c: c[0].update(images=10**30)), "images: expected an integer in"),
    ("absurd seed", lambda b: _cells(b, lambda c: c[0].update(seed=10**30)), "seed: expected an integer in"),
    ("absurd data.images", lambda b: _manifest(b, lambda m: m["data"].update(images=10**30)),
     "data.images: expected an integer in"),
    ("eps as a string", lambda b: _cells(b, lambda c: c[0].update(eps="8")), "eps: expected a number"),
    ("a status no cell has", lambda b: _cells(b, lambda c: c[0].update(status="verified")),
     "status: expected one of valid, invalid, failed"),
    ("a metric as text", lambda b: _cells(b, lambda c: c[0]["clean"]["normal"].update(mean="1")),
     "clean.normal.mean: expected a number"),
    ("a key the manifest does not declare", lambda b: _manifest(b, lambda m: m.update(extra=1)),
     "extra: unknown key"),
    ("a member pin without its revision", lambda b: _manifest(b, lambda m: next(iter(m["suite"]["members"].values()))
                                                       .pop("revision")),
     ".revision: missing"),
    ("suite named by a path", lambda b: _manifest(b, lambda m: m["suite"].update(name="../../../etc/passwd")),
     "suite.name: '../../../etc/passwd' is not valid here"),
    ("no cells", lambda b: _write(b / "cells.json", []), "no cells"),
    ("manifest not JSON", lambda b: (b / "manifest.json").write_text("{"), "manifest.json is not valid JSON"),
    ("a stranger file", lambda b: (b / "notes.txt").write_text("hi"), "notes.txt is not a file of this bundle"),
    ("an oversized images file", _big_image, "more than the"),
    ("a link", _link, "is a link"),
]


@pytest.mark.parametrize("kind, change, words", TAMPERING, ids=[t[0] for t in TAMPERING])
def test_tampered_bundles_are_rejected_naming_the_cell_or_field(bundle, mini, kind, change, words, capsys,
                                                                 wide_console):
    change(bundle)
    assert main(["verify", str(bundle), "--suite", str(mini)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "rejected" in out and words in out, out


def test_cost_claims_are_self_reported_unless_recounted(bundle, mini, capsys, wide_console):
    """Passes, time and memory cannot be re-scored from images: a verified bundle says they are its
    own claims; --recount runs the attack again and refuses a false pass count."""
    assert main(["verify", str(bundle), "--suite", str(mini)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "self-reported (not verified): time per image, memory, passes per image" in out
    assert main(["verify", str(bundle), "--suite", str(mini), "--recount"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "self-reported (not verified): time per image, memory" in out
    assert ("pgd:gb-mta: recounted: 4 of its 4 cells run again (every cell) gave the same passes and the same "
            "images") in out
    _cells(bundle, lambda cells: [c.update(forward_passes=1, time_per_image_s=1e-9) for c in cells])
    assert main(["verify", str(bundle), "--suite", str(mini)]) == 0  # re-scoring alone cannot tell
    assert main(["verify", str(bundle), "--suite", str(mini), "--recount"]) == 1
    assert "the bundle claims 1 forward" in " ".join(capsys.readouterr().out.split())


def test_a_rejected_bundle_is_self_reported_and_never_ranked(bundle, mini, tmp_path):
    from leaderboard import render_leaderboard

    folder = tmp_path / "bundles"
    folder.mkdir()
    bundle.rename(folder / "edited")
    TAMPERING[0][1](folder / "edited")
    index = render_leaderboard(tmp_path / "none.db", tmp_path / "site", bundles=folder, plots_enabled=False,
                               suites=[str(mini)])
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
    assert main(["verify", str(evil)]) == 1
    assert "points outside the bundle" in " ".join(capsys.readouterr().out.split())


def test_a_zip_bomb_is_refused_before_anything_is_read(mini, tmp_path, capsys, wide_console):
    """A zip's members are bounded by what its manifest's grid needs before a byte of them is
    decompressed: a small zip with a large member is rejected."""
    result = submit(["fgsm:total"], suite=str(mini), out=tmp_path / "z", as_zip=True, eps=[8], models=["AS"])
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(result.bundle) as src, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.startswith("images/"):
                data = bytes(200 * 2**20)  # 200 MB of zeros: a few hundred kB compressed
            dst.writestr(info.filename, data)
    assert bomb.stat().st_size < 2**20
    assert main(["verify", str(bomb), "--suite", str(mini)]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "209,715,200 bytes, more than the" in out


def test_one_malformed_bundle_does_not_stop_the_leaderboard(bundle, mini, tmp_path):
    """Bundles that are not JSON, not a zip, hold a `../` member or name a suite by a path are
    listed as rejected with their reasons; the site renders with the rest."""
    from leaderboard import render_leaderboard

    folder = tmp_path / "bundles"
    folder.mkdir()
    for name, content in (("not-json", "{"), ("path-suite", None)):
        (folder / name).mkdir()
        if content is not None:
            (folder / name / "manifest.json").write_text(content)
    (folder / "bad.zip").write_bytes(b"PK\x03\x04 not a zip")
    with zipfile.ZipFile(folder / "slip.zip", "w") as zf:
        zf.writestr("../x", "x")
    manifest = _json(bundle / "manifest.json")
    manifest["suite"]["name"] = "../../../etc/passwd"
    _write(folder / "path-suite" / "manifest.json", manifest)
    index = render_leaderboard(tmp_path / "none.db", tmp_path / "site", bundles=folder, plots_enabled=False,
                               suites=[str(mini)])
    board = json.loads((tmp_path / "site" / "leaderboard.json").read_text())
    reasons = {b["name"]: b["reason"] for b in board["bundles"]}
    assert set(reasons) == {"not-json", "path-suite", "bad.zip", "slip.zip"} and not any(
        b["verified"] for b in board["bundles"])
    assert "not valid JSON" in reasons["not-json"] and "not valid here" in reasons["path-suite"]
    assert "not a readable zip" in reasons["bad.zip"] or "neither" in reasons["bad.zip"]
    assert "points outside" in reasons["slip.zip"]
    assert index.exists()


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


@pytest.mark.parametrize("images", [3, 5])
def test_an_honest_bundle_verifies_at_every_thread_count(mini, tmp_path, images):
    """Made with one thread, on image counts that are not a multiple of the batch (2), verified in
    fresh processes with 1, 2 and 4 torch threads: the re-scoring's rounding differs, the verdict not."""
    made = submit(["pgd:gb-mta", "fgsm:total"], suite=str(mini), out=tmp_path / "b", images=images)
    assert made.bundle is not None, made.failures
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for threads in ("1", "2", "4"):
        checked = _cli(["verify", str(made.bundle), "--suite", str(mini), "--threads", threads], env, tmp_path)
        assert checked.returncode == 0 and "verified" in checked.stdout, (threads, checked.stdout, checked.stderr)


def _relabel(bundle: Path, old: str, new: str, options: dict) -> None:
    """Rename an honest bundle's attack everywhere (manifest, cells, keys, file names): consistent in
    itself, so only running the attack again can tell."""
    from benchmark.runner.bundle import attack_sources, images_file

    def manifest(m):
        m["attack"]["names"] = [new]
        m["attack"]["options"] = {new: options}
        m["attack"]["sources"] = attack_sources([new])

    _manifest(bundle, manifest)

    def change(cells):
        for c in cells:
            c["attack"] = c["config"]["attack"] = new
            c["config"]["options"] = dict(options)
            c["config"]["budget"] = {"option": "steps", "value": options["steps"], "extra": False}
            c["config"]["objective"] = new.partition(":")[2]
            rel = images_file(c["model"], new, c["eps"], c["seed"])
            (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
            (bundle / c["images_file"]).rename(bundle / rel)
            c["images_file"] = rel
            _rekey(c)

    _cells(bundle, change)
    for d in sorted((bundle / "images").rglob("*"), reverse=True):
        if d.is_dir() and not any(d.iterdir()):
            d.rmdir()


def test_a_relabelled_attack_is_re_scored_only_and_recount_refuses_it(mini, tmp_path, capsys, wide_console):
    """APGD's images under PGD's name: the numbers follow from the images (re-scored), and verify
    says the attack was not run again; --recount runs PGD and refuses them."""
    made = submit(["apgd:gb-mta"], suite=str(mini), out=tmp_path / "b")
    _relabel(made.bundle, "apgd:gb-mta", "pgd:gb-mta", {"steps": 2})
    assert main(["verify", str(made.bundle), "--suite", str(mini)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "pgd:gb-mta: re-scored" in out and "--recount runs it again" in out
    args = ["verify", str(made.bundle), "--suite", str(mini), "--recount-sample", "2", "--recount-seed", "1"]
    assert main(args) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert "running pgd:gb-mta again gives other images" in out and "the bundle's images are not this attack's" in out


def test_the_verifiers_own_options_are_usage_errors(bundle, mini, tmp_path, capsys):
    assert main(["verify", str(bundle), "--suite", "/etc/passwd"]) == 2
    assert "/etc/passwd: not valid TOML" in capsys.readouterr().err
    assert main(["verify", str(bundle), "--suite", str(mini), "--data-root", str(tmp_path)]) == 2
    assert "reads built-in synthetic scenes; --data-root is for the full suites" in " ".join(
        capsys.readouterr().err.split())


def test_bundles_never_override_the_host_and_twins_are_refused(bundle, mini, tmp_path):
    """A bundle of an attack the host database also ran joins under its own name (the host's numbers
    stay the host's); two bundles of the same experiment are both refused, each naming the other; the
    page's provenance is the host's."""
    import shutil

    from benchmark.runner import ResultsStore, RunOptions, run
    from leaderboard import render_leaderboard

    db = tmp_path / "host.db"
    run(RunOptions(suite=str(mini), results=str(db), attacks=["pgd:gb-mta"]))
    with ResultsStore(db, readonly=True) as store:
        host = {(c.model, c.eps): c.arp for c in store.cells()}
    folder = tmp_path / "bundles"
    folder.mkdir()
    shutil.copytree(bundle, folder / "one")
    _cells(folder / "one", lambda cells: [c.update(forward_passes=999) for c in cells])  # a self-report of its own
    index = render_leaderboard(db, tmp_path / "site", bundles=folder, suites=[str(mini)])
    board = json.loads((index.parent / "leaderboard.json").read_text())
    view = board["suites"]["mini-run"]["views"]["quick"]
    assert set(view["attacks"]) == {"pgd:gb-mta", "pgd:gb-mta (bundle one)"}
    table = view["by_eps"]["8"]["table"]
    assert {m: table[m]["pgd:gb-mta"]["arp"] for m in table} == {m: a for (m, e), a in host.items() if e == 8.0}
    assert all(table[m]["pgd:gb-mta"]["forward_passes"] != 999 for m in table)
    assert "cells of submitted bundles" in board["provenance"]
    shutil.copytree(bundle, folder / "two")
    index = render_leaderboard(db, tmp_path / "site2", bundles=folder, suites=[str(mini)])
    board = json.loads((index.parent / "leaderboard.json").read_text())
    rows = {b["name"]: b for b in board["bundles"]}
    assert not rows["one"]["verified"] and not rows["two"]["verified"]
    assert "the key of a cell of the bundle two" in rows["one"]["reason"]
    assert "the key of a cell of the bundle one" in rows["two"]["reason"]
