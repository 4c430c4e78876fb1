"""Inference-time defenses: BPDA through non-differentiable ones, EOT on randomised ones, the
determinism check with seeded randomness, `run --defenses`, and the defenses page."""

import json

import pytest
import torch

from benchmark.attacks import create_attack, run_attack
from benchmark.attacks.objectives import per_task_losses
from benchmark.cli import main
from benchmark.defenses import DefendedModel, create_defense
from benchmark.runner import ResultsStore, RunOptions, run
from leaderboard import render_leaderboard
from leaderboard.aggregate import headline_view


def test_bpda_gives_a_gradient_where_the_plain_one_is_zero(tiny_nyu):
    model, tasks, batch = tiny_nyu
    defense = create_defense("bitdepth:4")
    x = batch["image"].clone().requires_grad_(True)
    plain = per_task_losses(model, defense.transform(x, None), batch, tasks).sum()
    (g_plain,) = torch.autograd.grad(plain, x)
    assert torch.count_nonzero(g_plain) == 0  # rounding has a zero gradient: a plain attack would not move
    defended = DefendedModel(model, defense)
    x = batch["image"].clone().requires_grad_(True)
    (g_bpda,) = torch.autograd.grad(per_task_losses(defended, x, batch, tasks).sum(), x)
    assert torch.count_nonzero(g_bpda) > 0.9 * g_bpda.numel()
    result = run_attack(create_attack("pgd:total", steps=3), defended, batch["image"], batch, tasks=tasks, eps=8,
                        seed=0)
    assert result.verdict.valid
    with torch.no_grad():
        clean = per_task_losses(defended, batch["image"], batch, tasks).sum()
        adv = per_task_losses(defended, result.adversarial, batch, tasks).sum()
    assert adv > clean * 1.05


def test_defense_names_are_checked():
    assert create_defense("resize").canonical_name == "resize:0.15"
    assert create_defense("gaussian:2").canonical_name == "gaussian:2"
    with pytest.warns(DeprecationWarning, match="canonical_name"):  # the name plugins used before
        assert create_defense("resize").spec == "resize:0.15"
    for bad, message in (("bitdepth:0", "bits must be in"), ("median:4", "odd"), ("blur", "unknown defense")):
        with pytest.raises(Exception, match=message):
            create_defense(bad)


def test_run_with_defenses_eot_and_the_defenses_page(mini, tmp_path, capsys):
    common = {"suite": str(mini), "attacks": ["pgd:gb-mta", "fgsm:total"], "eps": [8],
              "defenses": ["none", "bitdepth:4", "resize:0.15"]}
    db1, db4 = tmp_path / "eot1.db", tmp_path / "eot4.db"
    run(RunOptions(results=str(db1), eot_samples=1, **common))
    summary = run(RunOptions(results=str(db4), eot_samples=4, **common))
    # the determinism check holds for the randomised defense: same seed, same draws
    assert summary.done == {"valid": 2 * 3 * 2}
    with ResultsStore(db1, readonly=True) as a, ResultsStore(db4, readonly=True) as b:
        one = {(c.model, c.attack): c for c in a.cells()}
        four = {(c.model, c.attack): c for c in b.cells()}
    for model in ("AS", "layout-9"):
        # EOT is at least as strong as a single draw, and its passes are the counted ones (4 draws per call)
        assert four[(f"{model}+resize:0.15", "pgd:gb-mta")].arp >= one[(f"{model}+resize:0.15", "pgd:gb-mta")].arp
        eot_passes = four[(f"{model}+resize:0.15", "pgd:gb-mta")].forward_passes
        assert eot_passes == 4 * one[(model, "pgd:gb-mta")].forward_passes
        # deterministic defenses and undefended models do not depend on EOT
        assert four[(f"{model}+bitdepth:4", "pgd:gb-mta")].arp == one[(f"{model}+bitdepth:4", "pgd:gb-mta")].arp
        assert four[(model, "fgsm:total")].arp == one[(model, "fgsm:total")].arp
        assert four[(f"{model}+resize:0.15", "fgsm:total")].config["eot"] == 4

    index = render_leaderboard(db4, tmp_path / "site")
    board = json.loads((index.parent / "leaderboard.json").read_text())
    suite = headline_view(board, "mini-run")
    assert set(suite["models"]) == {"AS", "layout-9"}
    assert len(suite["defended"]) == 4  # ranked attacks are judged on undefended models only
    rows = {r["defense"]: r for r in suite["by_eps"]["8"]["defenses"]["rows"]}
    assert set(rows) == {"none", "bitdepth:4", "resize:0.15"}
    expected = (four[("AS+resize:0.15", "pgd:gb-mta")].arp + four[("layout-9+resize:0.15", "pgd:gb-mta")].arp) / 2
    assert rows["resize:0.15"]["cells"]["pgd:gb-mta"]["arp"] == pytest.approx(expected)
    assert rows["resize:0.15"]["gradient"] == "EOT over 4 draws" and "BPDA" in rows["bitdepth:4"]["gradient"]
    assert rows["none"]["clean_cost"] == 0.0 and rows["bitdepth:4"]["clean_cost"] is not None
    page = (index.parent / "defenses-mini-run.html").read_text()
    assert 'data-defense="resize:0.15"' in page and "defenses-mini-run.html" in index.read_text()

    assert main(["run", "--suite", str(mini), "--defenses", "nope", "--results", str(tmp_path / "x.db")]) == 2
    assert "unknown defense" in capsys.readouterr().err
    assert main(["defenses", "list"]) == 0
    assert "bitdepth" in capsys.readouterr().out
