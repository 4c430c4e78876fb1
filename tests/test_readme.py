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
