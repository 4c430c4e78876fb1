import json
import subprocess
import sys

import pytest

from benchmark.cli import main
from leaderboard.aggregate import headline_view


def test_layouts_list(capsys):
    assert main(["layouts", "list", "--tasks", "3", "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "51 in all" in out and "AS" in out


def test_model_info_by_index(capsys):
    assert main(["models", "info", "9"]) == 0
    out = capsys.readouterr().out
    assert "63.62M" in out and "[[{0,2},{1}], [{0,2},{1}], [{0},{1},{2}]" in out


@pytest.mark.parametrize(("argv", "message"), [
    (["models", "info", "[[{0,1,2}], [{0,1}]]"], "task 2 is missing in block 1"),
    (["models", "info", "99"], "layout index 99 is out of range"),
    (["models", "info", "AS", "--dataset", "kitti"], "unknown dataset 'kitti'"),
    (["models", "info", "AS", "--backbone", "vgg"], "unknown backbone 'vgg'"),
    (["data", "preview", "--dataset", "nyuv2"], "needs its directory"),
])
def test_user_errors_are_messages_not_tracebacks(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err


def test_data_preview(tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert main(["data", "preview", "--dataset", "synthetic-taskonomy", "--rows", "2", "--resolution", "32",
                 "--out", str(out)]) == 0
    assert out.stat().st_size > 5000


def test_demo_builds_runs_and_renders(mini_suite, tmp_path, capsys, monkeypatch):
    manifest, home = mini_suite
    monkeypatch.setenv("MTLBENCH_HOME", str(home))
    db = tmp_path / "results.db"
    assert main(["demo", "--suite", str(manifest), "--out", str(tmp_path / "site"), "--results", str(db),
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    index = tmp_path / "site" / "index.html"
    assert index.is_file() and str(index.resolve()) in out.replace("\n", "")
    board = json.loads((tmp_path / "site" / "leaderboard.json").read_text())
    assert headline_view(board, "mini-run")["models"] and db.is_file()
    assert (tmp_path / "site" / "plots" / "scenes.png").is_file()


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "benchmark", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("mtlbench ")


def test_attacks_list(capsys, wide_console):
    from benchmark.attacks import list_attacks
    from benchmark.attacks.registry import ATTACKS

    assert main(["attacks", "list"]) == 0
    out = capsys.readouterr().out
    # 57 built-in (7 optimizers x 8 objectives + the AutoAttack ensemble); test plugins add theirs
    builtin = [a for a in list_attacks() if ATTACKS[a.partition(":")[0]].__module__.startswith("benchmark.")]
    assert len(builtin) == 57
    assert f"attacks ({len(list_attacks())})" in out and "pgd:gb-mta" in out and "autosaga:single-edge" in out
    assert main(["attacks", "list", "apgd:*"]) == 0
    assert "attacks (8)" in capsys.readouterr().out
    assert main(["attacks", "list", "nothing*"]) == 2
