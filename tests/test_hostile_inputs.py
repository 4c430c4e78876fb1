"""The last hostile inputs: bounded cost for submit and check, messages that blame the right party,
and no traceback or silent success for inputs a user can get wrong."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import benchmark
from benchmark.cli import main
from benchmark.suites import load_suite

HOSTILE = str(Path(__file__).parent / "plugin_hostile_attacks.py")


def _err(capsys) -> str:
    return " ".join(capsys.readouterr().err.split())


# ---------------------------------------------------------------------- bounded cost
def test_submit_and_check_honour_the_cell_time_limit(mini, tmp_path, capsys, wide_console):
    """A sleeping plugin attack fails its cells after --cell-timeout instead of hanging submit or
    check."""
    args = ["--suite", str(mini), "--models", "AS", "--eps", "8", "--plugins", HOSTILE, "--cell-timeout", "1"]
    assert main(["submit", "hostile-sleep", *args, "--out", str(tmp_path / "b")]) == 1
    report = json.loads((tmp_path / "b-report.json").read_text())
    assert "time limit" in report["failures"][0] and not (tmp_path / "b").exists()
    assert main(["check", "--baseline", str(tmp_path / "base.json"), "--update", "--attacks", "hostile-sleep",
                 *args]) == 2
    assert "time limit" in _err(capsys)


def test_a_killed_submission_leaves_nothing_behind(mini, tmp_path):
    """The staging folder of a submission killed with -9 is removed by the next submission to the
    same place; a live one's is left alone."""
    dead = tmp_path / ".b.partial-999999999-abc"
    dead.mkdir()
    (dead / "cells.db").write_bytes(b"x" * 1000)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        alive = tmp_path / f".b.partial-{live.pid}-def"
        alive.mkdir()
        assert main(["submit", "fgsm:total", "--suite", str(mini), "--models", "AS", "--eps", "8",
                     "--out", str(tmp_path / "b")]) == 0
        assert not dead.exists() and alive.exists()
    finally:
        live.kill()


# ---------------------------------------------------------------------- the right party blamed
class _Net(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3, padding=1)
        self.heads = nn.ModuleDict({t: nn.Conv2d(8, c, 1) for t, c in channels.items()})
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        h = torch.relu(self.body(x))
        return {t: head(h) for t, head in self.heads.items()}


class _CountsCalls(_Net):
    def forward(self, x):
        self.calls += 1
        return super().forward(x)


class _NoGrad(_Net):
    def forward(self, x):
        with torch.no_grad():
            return super().forward(x)


class _Noisy(_Net):
    def forward(self, x):
        return super().forward(x + 0.01 * torch.randn_like(x))


@pytest.mark.parametrize("cls, words", [
    (_CountsCalls, "changes its own weights or buffers when it runs (calls"),
    (_NoGrad, "passes no gradient to its input"),
    (_Noisy, "is not deterministic: two forwards of the same images differ"),
])
def test_a_faulty_model_is_blamed_not_the_attack(mini, cls, words):
    suite = load_suite(mini)
    model = cls({t.name: t.channels for t in suite.tasks})
    frame = benchmark.evaluate(model, suite=str(mini), attacks=["pgd:gb-mta", "fgsm:total"], eps=[8], name="faulty")
    assert set(frame["status"]) == {"invalid"}
    for reason in frame["reason"]:
        assert reason.startswith("the model 'faulty' ") and words in reason and "attack" not in reason.split(":")[0]


def test_a_sound_external_model_is_not_blamed(mini):
    from benchmark.zoo import load_model

    model, _ = load_model(mini, "AS")  # a trained member, evaluated as a module of this process
    frame = benchmark.evaluate(model, suite=str(mini), attacks=["fgsm:total"], eps=[8], name="sound")
    assert set(frame["status"]) == {"valid"}, list(frame["reason"])


# ---------------------------------------------------------------------- no tracebacks
def test_inputs_that_used_to_be_tracebacks_are_messages(mini, tmp_path, capsys):
    assert main(["models", "info", "[" * 5000 + "]" * 5000]) == 2
    assert "nested 5000 deep" in _err(capsys)
    assert main(["data", "preview", "--out", str(tmp_path / "x.txt")]) == 2
    assert "the preview is an image; give a .png" in _err(capsys)
    base = mini.read_text()
    for old, new, words in (
        ('head_rates = [1, 2]', 'head_rates = [1, 2]\noutput_stride = 3', "suite.output_stride: expected one of 8"),
        ('layout = "AS"', 'layout = "AS"\nbackbone = "vgg"', "models[0].backbone: unknown backbone 'vgg'"),
        ('layout = "AS"', 'layout = "' + "[" * 400 + "]" * 400 + '"', "nested 400 deep"),
    ):
        bad = tmp_path / "bad.toml"
        bad.write_text(base.replace(old, new, 1))
        assert main(["suites", "show", str(bad)]) == 2, words
        assert words in _err(capsys)
    own = tmp_path / "loop.toml"
    own.write_text('[suite]\nname = "loop"\ndataset = "nyuv2"\nmirror = "loop"\n'
                   '[profiles.quick]\neps = [8]\nattacks = ["fgsm:total"]\n')
    assert main(["suites", "show", str(own)]) == 2
    assert "mirrors back to this suite (loop -> loop)" in _err(capsys)
    empty = tmp_path / "weights" / "0"
    empty.mkdir(parents=True)
    (empty / "segment_semantic_normal_depth_zbuffer.model").write_bytes(b"")
    assert main(["zoo", "import", str(mini), str(tmp_path / "weights"), "--out", str(tmp_path / "imported")]) == 2
    assert "cannot be read as a weights-only torch checkpoint (EOFError" in _err(capsys)


def test_a_baseline_cut_short_is_a_message(mini, tmp_path, capsys):
    baseline = tmp_path / "b.json"
    assert main(["check", "--baseline", str(baseline), "--update", "--attacks", "fgsm:total", "--suite", str(mini),
                 "--models", "AS", "--eps", "8"]) == 0
    data = json.loads(baseline.read_text())
    data["attacks"]["fgsm:total"]["cells"][0]["score"].pop()
    baseline.write_text(json.dumps(data))
    capsys.readouterr()
    assert main(["check", "--baseline", str(baseline)]) == 2
    assert "3 scores for 4 images" in _err(capsys)


# ---------------------------------------------------------------------- nothing silent
def test_inputs_that_used_to_pass_silently_are_refused(mini, tmp_path, capsys):
    tiny = ["--suite", "tiny-nyuv2-resnet34", "--models", "AS", "--attacks", "fgsm:total", "--eps", "8"]
    assert main(["run", *tiny, "--data-root", str(tmp_path), "--results", str(tmp_path / "r.db")]) == 2
    assert "reads no data directory" in _err(capsys)
    for value in ("", ","):
        assert main(["run", "--suite", str(mini), "--attacks", value, "--results", str(tmp_path / "r.db")]) == 2
        assert f"--attacks {value!r} names nothing" in _err(capsys)
    assert main(["run", "--suite", str(mini), "--eps", "255.0000001", "--results", str(tmp_path / "r.db")]) == 2
    assert "eps 255.0000001 is outside (0, 255]" in _err(capsys)
    assert main(["defend", str(mini), "--defense", "fat:", "--models", "AS"]) == 2
    assert "'fat:' has nothing after ':'; write 'fat' for its default (fat:pgd:gb-mta)" in _err(capsys)
    nine = tmp_path / "nine.toml"
    nine.write_text(mini.read_text() + '\n[[models]]\nname = "9"\nlayout = "IND"\n')
    assert main(["suites", "show", str(nine)]) == 2
    assert "a model name of digits only would read as a paper index" in _err(capsys)


def _read_only_mount(source: Path, target: Path) -> bool:
    target.mkdir()
    for argv in (["mount", "--bind", str(source), str(target)], ["mount", "-o", "remount,bind,ro", str(target)]):
        if subprocess.run(argv, capture_output=True).returncode != 0:
            subprocess.run(["umount", str(target)], capture_output=True)
            return False
    return True


def test_a_results_database_on_read_only_media_is_read(mini, tmp_path, capsys):
    from benchmark.runner import RunOptions, run

    source = tmp_path / "src"
    run(RunOptions(suite=str(mini), attacks=["fgsm:total"], models=["AS"], eps=[8], results=str(source / "r.db")))
    mounted = tmp_path / "ro"
    if not _read_only_mount(source, mounted):
        pytest.skip("needs a read-only bind mount (root in a mount namespace that allows it)")
    try:
        assert main(["results", "show", str(mounted / "r.db")]) == 0
        assert main(["leaderboard", "--results", str(mounted / "r.db"), "--out", str(tmp_path / "site")]) == 0
        assert main(["results", "export", str(mounted / "r.db"), str(mounted / "x.csv")]) == 2
        assert "cannot write it" in _err(capsys)
    finally:
        subprocess.run(["umount", str(mounted)], capture_output=True)
