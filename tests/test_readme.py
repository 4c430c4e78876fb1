"""The README's code examples run as written."""

import re
from pathlib import Path

import torch

from benchmark.attacks import create_attack, run_attack
from benchmark.attacks.registry import ATTACKS

README = Path(__file__).parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_add_an_attack_example_runs_and_is_valid(tiny_nyu):
    (block,) = [b for b in _python_blocks() if "@register_attack(" in b]
    model, tasks, batch = tiny_nyu
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
