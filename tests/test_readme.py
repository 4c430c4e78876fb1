"""The code examples of the README and of the documentation (docs/) run as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmark.attacks import create_attack, run_attack
from benchmark.attacks.registry import ATTACKS

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
#: every page a newcomer reads: the README and the documentation's pages
DOCUMENTS = [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _blocks(language: str) -> list[tuple[Path, str]]:
    return [(path, block) for path in DOCUMENTS
            for block in re.findall(rf"```{language}\n(.*?)```", path.read_text(), flags=re.S)]


def _python_blocks() -> list[str]:
    return [block for _, block in _blocks("python")]


def _bash_block(marker: str) -> list[str]:
    """The commands of the one bash block (README or docs) that contains ``marker``, without comments."""
    (block,) = [b for _, b in _blocks("bash") if marker in b]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.split("#")[0].strip()]


def _shell(command: str, cwd, env) -> subprocess.CompletedProcess:
    result = subprocess.run(command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result


def _as_test_commands(lines: list[str], manifest: Path, site: Path) -> list[str]:
    """The README's commands on the test-sized suite: `mtlbench` is this interpreter's, the suite
    the test suite, `pip install -e PKG` a wheel install into ``site`` (on PYTHONPATH), so that the
    test environment is not changed."""
    out = []
    for line in lines:
        line = line.replace("mtlbench ", f"{sys.executable} -m benchmark ", 1)
        if line.startswith("pip install -e "):
            package = line.removeprefix("pip install -e ").strip()
            line = (f"{sys.executable} -m pip install -q --no-deps --no-build-isolation --target {site} "
                    f"{Path(ROOT) / package}")
        for command in (" submit ", " verify ", " --update ", " leaderboard "):
            if command in line:
                line += f" --suite {manifest}"
        out.append(line.replace("AS,IND,layout-9", "AS,layout-9"))
    return out


def test_readme_submit_an_attack_and_gate_your_ci_run_as_written(mini_suite, tmp_path):
    manifest, home = mini_suite
    site = tmp_path / "site-packages"
    env = {**os.environ, "MTLBENCH_HOME": str(home), "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]),
           "COLUMNS": "250"}
    env.pop("MTLBENCH_PLUGINS", None)
    # the demo's results.db, on the test suite
    _shell(f"{sys.executable} -m benchmark run --suite {manifest} --results results.db", tmp_path, env)
    submit = _bash_block("mtlbench submit ")
    assert submit[0] == "pip install -e examples/my_attack"
    outputs = [_shell(c, tmp_path, env).stdout for c in _as_test_commands(submit, manifest, site)]
    assert "cospgd:gb-mta" in outputs[1] and "verified" in outputs[3]
    html = (tmp_path / "site" / "index.html").read_text()
    row = html[html.index('data-attack="cospgd:gb-mta"'):]
    assert "verified bundle" in row[: row.index("</tr>")]
    gate = _bash_block("mtlbench check ")
    outputs = [_shell(c, tmp_path, env).stdout for c in _as_test_commands(gate, manifest, site)]
    assert (tmp_path / "baseline.json").is_file() and "cospgd:gb-mta" in outputs[1] and "ok" in outputs[1]


def test_readme_add_an_attack_example_runs_and_is_valid(tiny_nyu):
    blocks = [b for b in _python_blocks() if "@register_attack(" in b]
    assert len(blocks) >= 2  # the README's and the tutorial's
    model, tasks, batch = tiny_nyu
    for block in blocks:
        try:
            exec(compile(block, str(README), "exec"), {})
            attack = create_attack("my-attack", steps=3)
            run = run_attack(attack, model, batch["image"], batch, tasks=tasks, eps=8, seed=0)
            assert run.verdict.valid, run.verdict
            assert run.forward_passes == 3 and run.backward_passes == 3
            assert 0 < run.verdict.max_perturbation <= 8 + 1e-3
            assert not torch.equal(run.adversarial, batch["image"])
        finally:
            ATTACKS.pop("my-attack", None)


def test_readme_bring_your_own_model_example_runs(mini_suite, tmp_path, monkeypatch, capsys):
    """The "Bring your own model" snippet, on the test suite instead of the demo's (same code)."""
    manifest, home = mini_suite
    monkeypatch.setenv("MTLBENCH_HOME", str(home))
    (block,) = [b for b in _python_blocks() if "benchmark.evaluate(" in b]
    code = (block.replace('"tiny-nyuv2-resnet34"', repr(str(manifest))).replace('"IND"', '"layout-9"')
            .replace('"results.db"', repr(str(tmp_path / "results.db"))))
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    frame = scope["frame"]
    assert list(frame["attack"]) == ["pgd:gb-mta", "fgsm:total"] and set(frame["status"]) == {"valid"}
    assert set(frame["model"]) == {"my-model"} and "pgd:gb-mta" in capsys.readouterr().out
    assert (tmp_path / "results.db").exists()


def test_readme_pytest_example_runs_with_the_plugin_fixtures(mini_suite, pytester, monkeypatch):
    """The README's pytest example, as a user's test file, with mtlbench's plugin found through its
    pytest11 entry point (the test suite is the test-sized one; the code is the README's)."""
    manifest, home = mini_suite
    monkeypatch.setenv("MTLBENCH_HOME", str(home))
    monkeypatch.setenv("MTLBENCH_WORKERS", "1")
    (block,) = [b for b in _python_blocks() if "attack_strength" in b]
    pytester.makepyfile(test_attack_strength=block, test_fixtures="""
        import torch

        def test_suite_and_model(mtl_suite, mtl_model):
            assert mtl_suite.name == "mini-run"
            out = mtl_model(torch.rand(1, 3, 32, 32))
            assert set(out) == {t.name for t in mtl_suite.tasks}
    """)
    pytester.makeini(f"[pytest]\nmtlbench_suite = {manifest}\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    # an attack whose output leaves the eps-ball fails the test with the validator's reason
    pytester.makepyfile(test_bad="""
        import torch
        from benchmark.attacks import Attack, register_attack

        @register_attack("too-far")
        class TooFar(Attack):
            def perturb(self, model, images, targets, *, tasks, eps, generator):
                return (images + 2 * eps).clamp(0, 1)

        def test_too_far(attack_strength):
            attack_strength("too-far")
    """)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_bad.py")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*too-far at eps 8 on AS: invalid*"])


def test_every_other_python_snippet_of_the_readme_runs_as_written(tmp_path, monkeypatch):
    """Every Python block not run by a test above (the pytest example is a test file; "Bring your
    own model" runs on the test suite) runs as written, in a fresh namespace: no name it uses is
    left undefined."""
    monkeypatch.chdir(tmp_path)
    special = ("attack_strength", "benchmark.evaluate(")
    blocks = [(path, b) for path, b in _blocks("python") if not any(s in b for s in special)]
    assert len(blocks) >= 5
    for path, block in blocks:
        try:
            exec(compile(block, str(path), "exec"), {"__name__": "readme"})
        finally:
            ATTACKS.pop("my-attack", None)  # the README and the tutorial both register it


def test_the_documentation_builds_strictly(tmp_path):
    """mkdocs --strict: a broken link, a missing page or an API reference that does not resolve
    fails the build; the command pages come from the parser."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    out = tmp_path / "docs-site"
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run_page = (out / "reference" / "cli" / "run" / "index.html").read_text()
    assert "--precision" in run_page and "--gpus-per-worker" in run_page  # the parser's own options
    assert "ARP" in (out / "concepts" / "arp" / "index.html").read_text()
    assert "Measured numbers" in (out / "reference" / "numbers" / "index.html").read_text()
