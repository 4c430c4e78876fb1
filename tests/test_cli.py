import json
import subprocess
import sys

import pytest

from benchmark.cli import main


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


def test_demo_renders_a_site(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "site"), "--steps", "3", "--resolution", "32",
                 "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    index = tmp_path / "site" / "index.html"
    assert index.is_file() and "index.html" in out.replace("\n", "")
    report = json.loads((tmp_path / "site" / "leaderboard.json").read_text())
    rows = report["sections"][0]["rows"]
    assert rows[0][0] == "AS" and rows[-1][0] == "constant predictor"
    html = index.read_text()
    assert f"{rows[0][4]:.3g}" in html  # the page shows the JSON's numbers
    assert (tmp_path / "site" / "scenes.png").is_file()


def test_python_dash_m():
    out = subprocess.run([sys.executable, "-m", "benchmark", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("mtlbench ")


def test_leaderboard_autoescapes(tmp_path):
    from leaderboard import render_site

    report = {"title": "<script>alert(1)</script>", "subtitle": "", "provenance": {},
              "sections": [{"title": "t", "columns": ["attack"], "rows": [["<script>x</script>"]]}]}
    html = render_site(report, tmp_path).read_text()
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_attacks_list(capsys):
    assert main(["attacks", "list"]) == 0
    out = capsys.readouterr().out
    assert "attacks (41)" in out and "pgd:gb-mta" in out and "autosaga:single-edge" in out
    assert main(["attacks", "list", "apgd:*"]) == 0
    assert "attacks (8)" in capsys.readouterr().out
    assert main(["attacks", "list", "nothing*"]) == 2
