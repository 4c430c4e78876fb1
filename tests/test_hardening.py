"""Bad input from a careless or hostile user: a message (never a traceback, a hang or a silent
default), honest aggregation, and two runs on one store splitting the work. One test per class."""

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from results_factory import make_cell, put_models
from safetensors.torch import load_file, save_file
from test_data import _write_nyuv2

from benchmark.cli import main
from benchmark.data.real import NYUv2
from benchmark.errors import UserError
from benchmark.runner import ResultsStore, RunOptions, run
from benchmark.runner.store import Owner
from benchmark.suites import load_suite
from benchmark.zoo.checkpoint import CONFIG_FILE, WEIGHTS_FILE, load_checkpoint
from leaderboard import render_leaderboard
from leaderboard.aggregate import headline_view

TESTS = Path(__file__).parent
PLUGIN = str(TESTS / "plugin_bad_attacks.py")


# ---------------------------------------------------------------- 2. honest aggregation
def test_the_leaderboard_never_averages_two_experiments(tmp_path):
    db = tmp_path / "r.db"
    with ResultsStore(db) as store:
        put_models(store, "s", ["A", "B"])
        for model in ("A", "B"):
            for profile, arp, steps in (("quick", 29.74, 5), ("paper", 31.76, 20)):
                cell = make_cell("s", model, "pgd:gb-mta", 8.0, arp)
                cell.profile = profile
                cell.config = {**cell.config, "profile": profile, "options": {"steps": steps}, "images": 8}
                cell.key = f"{model}-{profile}"
                store.put(cell)
    index = render_leaderboard(db, tmp_path / "site")
    views = json.loads((index.parent / "leaderboard.json").read_text())["suites"]["s"]["views"]
    for profile, value in (("quick", 29.74), ("paper", 31.76)):  # each profile is a view of its own
        board = views[profile]
        ranking = {r["attack"]: r["mean_arp"] for r in board["by_eps"]["8"]["ranking"]}
        assert ranking == {"pgd:gb-mta": pytest.approx(value)}
        assert all(e["seeds"] == 1 for row in board["by_eps"]["8"]["table"].values() for e in row.values())


def test_a_request_that_repeats_itself_asks_once(mini, tmp_path):
    db = tmp_path / "r.db"
    summary = run(RunOptions(suite=str(mini), results=str(db), attacks=["fgsm:total", "fgsm:total"],
                             eps=[8, 8, 8.0], seeds=[0, 0], models=["AS", "AS"]))
    assert summary.total == 1 and summary.done == {"valid": 1}
    with pytest.raises(UserError, match=r"seed 99999999999999999999 is outside"):
        run(RunOptions(suite=str(mini), results=str(db), attacks=["fgsm:total"], seeds=[99999999999999999999]))


def test_damaged_rows_render_as_invalid_and_the_rest_renders(tmp_path):
    db = tmp_path / "r.db"
    with ResultsStore(db) as store:
        put_models(store, "s", ["A", "B"])
        for model in ("A", "B"):
            store.put(make_cell("s", model, "pgd:total", 8.0, 20.0))
            store.put(make_cell("s", model, "pgd:gb-mta", 8.0, 25.0))
    conn = sqlite3.connect(db)
    conn.execute("UPDATE cells SET arp = 9e999 WHERE model = 'A' AND attack = 'pgd:gb-mta'")  # inf
    conn.execute("UPDATE cells SET task_arp = '{broken' WHERE model = 'B' AND attack = 'pgd:gb-mta'")
    conn.commit()
    conn.close()
    index = render_leaderboard(db, tmp_path / "site")
    board = headline_view(json.loads((index.parent / "leaderboard.json").read_text()), "s")["by_eps"]["8"]
    assert [r["attack"] for r in board["ranking"]] == ["pgd:total"]
    (bad,) = board["unranked"]
    assert bad["attack"] == "pgd:gb-mta" and bad["invalid"] == 2 and "damaged row" in bad["reason"]
    assert "ARP is not a finite number" in board["table"]["A"]["pgd:gb-mta"]["reason"]
    assert "column task_arp is not valid JSON" in board["table"]["B"]["pgd:gb-mta"]["reason"]
    # the published page names the database file, not where it lives
    assert str(tmp_path) not in index.read_text() and "r.db" in index.read_text()


# ---------------------------------------------------------------- 3. messages, never tracebacks
def test_user_text_is_printed_literally(mini, tmp_path, capsys, wide_console):
    assert main(["run", "--suite", str(mini), "--models", "[/x]", "--results", str(tmp_path / "r.db")]) == 2
    assert "no model '[/x]'" in capsys.readouterr().err
    assert main(["run", "--suite", "[bold red]x", "--results", str(tmp_path / "r.db")]) == 2
    assert "unknown suite '[bold red]x'" in capsys.readouterr().err
    bad = tmp_path / "bad.toml"
    bad.write_text(mini.read_text().replace('name = "mini-run"', 'name = "[/]"'))
    assert main(["suites", "show", str(bad)]) == 2
    assert "'[/]' is not a valid name" in capsys.readouterr().err


def test_paths_are_refused_or_verified(mini, tmp_path, monkeypatch, capsys):
    assert main(["suites", "show", "/etc"]) == 2
    assert "is a directory, not a suite" in capsys.readouterr().err
    # a folder named like a standard suite in the working directory does not shadow it
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-nyuv2-resnet34").mkdir()
    assert load_suite("tiny-nyuv2-resnet34").name == "tiny-nyuv2-resnet34"
    mirror = tmp_path / "m.toml"
    mirror.write_text('[suite]\nname = "m"\ndataset = "nyuv2"\nmirror = "../../../etc/passwd"\n'
                      '[profiles.q]\neps = [8]\nattacks = ["fgsm:total"]\n')
    assert main(["suites", "show", str(mirror)]) == 2
    err = capsys.readouterr().err
    assert "suite.mirror" in err and "is not a suite name" in err and str(mirror) in err
    # a data-root index may not point outside the data root
    root = tmp_path / "nyu"
    _write_nyuv2(root)
    (root / "nyu_v2_3task.json").write_text(json.dumps({"test": [["../../etc/passwd", "s.png", "n.png", "d.npy"]]}))
    with pytest.raises(UserError, match=r"'\.\./\.\./etc/passwd' is not a path inside the data directory"):
        NYUv2(root)


def test_a_local_copy_does_not_shadow_a_pinned_member(mini, tmp_path, monkeypatch, capsys):
    home = Path(os.environ["MTLBENCH_HOME"])
    manifest = tmp_path / "pinned.toml"
    text = mini.read_text().replace('name = "mini-run"', 'name = "pinned-run"')
    # a full (non-mirror, real-data) suite whose AS member is published at a pinned revision
    text = text.replace('data = "synthetic-nyuv2"\n', "").replace(
        'name = "AS"\nlayout = "AS"', f'name = "AS"\nlayout = "AS"\nrepo_id = "o/r"\nrevision = "{"a" * 40}"\n'
                                      f'sha256 = "{"b" * 64}"')
    manifest.write_text(text)
    local = home / "zoo" / "pinned-run" / "AS"
    local.parent.mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.copytree(home / "zoo" / "mini-run" / "AS", local)
    from benchmark.zoo.build import load_model

    with pytest.raises(UserError, match=r"does not match the pinned b{12}"):
        load_model(load_suite(manifest), "AS")


def test_numbers_are_checked_at_the_edge(mini, tmp_path, capsys):
    for argv in (["layouts", "list", "--offset", "-5"], ["layouts", "list", "--limit", "-1"],
                 ["data", "preview", "--rows", "0", "--out", str(tmp_path / "p.png")]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        assert "out of range: expected" in capsys.readouterr().err
    started = time.perf_counter()
    assert main(["layouts", "list", "--tasks", "7"]) == 2
    assert time.perf_counter() - started < 5
    assert "2,201,856 layouts" in capsys.readouterr().err
    base = mini.read_text()
    for old, new, key in (("steps = 40", "steps = -40", "training.steps"),
                          ("input_size = 32", "input_size = 0", "suite.input_size"),
                          ("width = 0.125", "width = 0", "suite.width"),
                          ("batch_size = 2", "batch_size = 0", "profiles.quick.batch_size"),
                          ("eval_size = 4", "eval_size = 100000000", "profiles.quick.eval_size")):
        bad = tmp_path / "bad.toml"
        bad.write_text(base.replace(old, new, 1))
        assert new in bad.read_text(), new
        assert main(["suites", "show", str(bad)]) == 2, key
        err = capsys.readouterr().err
        assert key in err and "expected" in err, (key, err)


def test_bad_data_files_are_named(tmp_path):
    root = tmp_path / "nyu"
    _write_nyuv2(root, n=1)
    index = root / "nyu_v2_3task.json"
    for split in ({"test": "img/0.png"}, {"test": []}):
        index.write_text(json.dumps(split))
        with pytest.raises(UserError, match="must be a non-empty list"):
            NYUv2(root)
    index.write_text(json.dumps({"test": [["img/0.png", "seg/0.png", "normal/0.png", "depth/0.npy"]]}))
    np.save(root / "depth/0.npy", np.ones((12, 16, 3), np.float32))
    with pytest.raises(UserError, match=r"depth .*0\.npy must be an \(H, W\)"):
        NYUv2(root)[0]
    depth = np.ones((12, 16), np.float32)
    depth[3, 4] = np.nan
    np.save(root / "depth/0.npy", depth)
    with pytest.raises(UserError, match=r"depth .*0\.npy holds NaN"):
        NYUv2(root)[0]
    np.save(root / "depth/0.npy", np.ones((12, 16), np.float32))
    seg = np.zeros((12, 16), np.uint8)
    seg[0, 0] = 77
    Image.fromarray(seg).save(root / "seg/0.png")
    with pytest.raises(UserError, match=r"seg/0\.png has label\(s\) \[77\] outside the 40 classes"):
        NYUv2(root)[0]
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(root / "seg/0.png")
    NYUv2(root)[0]
    # a PNG that claims 200 million pixels is refused before it is decoded
    Image.MAX_IMAGE_PIXELS, limit = 1000, Image.MAX_IMAGE_PIXELS
    try:
        Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(root / "img/0.png")
        with pytest.raises(UserError, match=r"img/0\.png is too large"):
            NYUv2(root)[0]
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def test_checkpoints_that_do_not_fit_are_messages(mini, tmp_path):
    import shutil

    src = Path(os.environ["MTLBENCH_HOME"]) / "zoo" / "mini-run" / "AS"

    def copy(name):
        d = tmp_path / name
        shutil.copytree(src, d)
        return d

    d = copy("shape")
    state = load_file(str(d / WEIGHTS_FILE))
    name = next(k for k, v in state.items() if v.dim() == 4)
    state[name] = state[name][:, :1].contiguous()
    save_file(state, str(d / WEIGHTS_FILE))
    with pytest.raises(UserError, match=rf"tensor {name} has shape"):
        load_checkpoint(d)
    d = copy("dtype")
    state = load_file(str(d / WEIGHTS_FILE))
    state = {k: (v.to(torch.int32) if v.is_floating_point() else v) for k, v in state.items()}
    save_file(state, str(d / WEIGHTS_FILE))
    with pytest.raises(UserError, match=r"is torch.int32, the model's is torch.float32"):
        load_checkpoint(d)
    d = copy("width")
    cfg = json.loads((d / CONFIG_FILE).read_text())
    cfg["model"]["width"] = "0.125"
    (d / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"model\.width must be a number in \[0\.01, 8\], got '0\.125'"):
        load_checkpoint(d)
    d = copy("channels")
    cfg = json.loads((d / CONFIG_FILE).read_text())
    cfg["model"]["tasks"] = [[name, 4 if name == "normal" else ch] for name, ch in cfg["model"]["tasks"]]
    (d / CONFIG_FILE).write_text(json.dumps(cfg))
    suite = load_suite(mini)
    from benchmark.zoo.locate import expected_config

    with pytest.raises(UserError, match=r"model\.tasks is .*'normal': 4.*the suite manifest says"):
        load_checkpoint(d, expect=expected_config(suite.member("AS"), suite))


def test_the_store_refuses_what_it_cannot_use(tmp_path, capsys, wide_console):
    other = tmp_path / "other.sqlite"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE invoices (id INTEGER)")
    conn.commit()
    conn.close()
    before = other.read_bytes()
    with pytest.raises(UserError, match="SQLite database of something else .*invoices"):
        ResultsStore(other)
    assert other.read_bytes() == before and not Path(str(other) + "-wal").exists()
    with pytest.raises(UserError, match="is a directory"):
        ResultsStore(tmp_path)
    # a full disk and a read-only database say so (simulated with SQLite's own limits)
    db = tmp_path / "r.db"
    with ResultsStore(db) as store:
        store.put(make_cell("s", "A", "pgd:total", 8.0, 1.0))
        store.conn.execute("PRAGMA max_page_count = 1")
        with pytest.raises(UserError, match="the disk is full; .*the results stored before are kept"):
            for i in range(50):
                cell = make_cell("s", "A", "pgd:total", float(i + 9), 1.0)
                cell.key = f"k{i}"
                cell.reason = "x" * 4000
                store.put(cell)
    with ResultsStore(db) as store:
        assert len(store.cells()) >= 1
        store.conn.execute("PRAGMA query_only = 1")
        with pytest.raises(UserError, match="is read-only"):
            store.put(make_cell("s", "B", "pgd:total", 8.0, 1.0))
    assert main(["results", "export", str(db), str(tmp_path / "nowhere" / "x.csv")]) == 2
    assert "the folder" in capsys.readouterr().err
    (tmp_path / "site-file").write_text("")
    assert main(["leaderboard", "--results", str(db), "--out", str(tmp_path / "site-file")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


# ---------------------------------------------------------------- claims: two runs split the work
def test_claimed_cells_are_left_to_the_live_run_that_holds_them(mini, tmp_path):
    db = tmp_path / "r.db"
    options = RunOptions(suite=str(mini), results=str(db), attacks=["fgsm:total"], eps=[4, 8])
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # another run (the sleeper's process, on this host) holds every cell of layout-9
        other = Owner(f"other:{sleeper.pid}", Owner.this_process().host, sleeper.pid)
        with ResultsStore(db) as store:
            summary = run(RunOptions(**{**options.__dict__, "models": ["layout-9"]}))  # learn the keys
            keys = summary.keys
            store.conn.execute("DELETE FROM cells")
            assert store.claim(keys, other, stale_after_s=600) == keys
        summary = run(options)
        assert summary.elsewhere == 2 and summary.done == {"valid": 2}
    finally:
        sleeper.kill()
        sleeper.wait()
    # its process is gone: the claims are stale and the cells are taken
    summary = run(options)
    assert summary.elsewhere == 0 and summary.done == {"valid": 2} and summary.skipped == 2


def test_two_concurrent_runs_compute_each_cell_once(mini, tmp_path):
    db = tmp_path / "r.db"
    env = {**os.environ, "MTLBENCH_PLUGINS": PLUGIN, "MTLBENCH_TEST_SLEEP": "0.2", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmark", "run", "--suite", str(mini), "--results", str(db), "--attacks",
           "test-slow", "--eps", "1,2,3,4,5,6", "--device", "cpu"]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    second = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outs = [p.communicate(timeout=300) for p in (first, second)]
    assert first.returncode == 0 and second.returncode == 0, outs
    with ResultsStore(db, readonly=True) as store:
        assert len(store.cells()) == 12
    computed = [int(o.split(" valid")[0].rsplit(" ", 1)[-1]) if " valid" in o else 0 for o, _ in outs]
    assert sum(computed) == 12, outs  # nobody computed a cell twice
    # plain progress lines, not a live bar, when the output is not a terminal
    assert "cells in" in outs[0][1] and "elapsed" in outs[0][1]
