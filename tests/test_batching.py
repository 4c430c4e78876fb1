"""Cells that differ only by eps attacked in one batch (benchmark.runner.batching)."""

import pytest
import torch

from benchmark.attacks import create_attack, run_attack
from benchmark.attacks.validate import validate_output
from benchmark.runner import RunOptions, run
from benchmark.runner.batching import BATCHED_ARP_TOLERANCE, MAX_CELLS, CellBatch, batch_cells, use_batching
from benchmark.runner.store import ResultsStore
from benchmark.suites import load_suite


def _cells(path) -> dict:
    with ResultsStore(str(path), readonly=True) as store:
        return {(c.model, c.attack, c.eps): c for c in store.cells()}


def test_batched_cells_agree_with_each_cell_alone(tmp_path, capsys):
    """The tiny suite's AS, eps 2, 4 and 8, each attack that declares independent images: every
    cell within BATCHED_ARP_TOLERANCE of the same cell alone, the same counted passes, and the
    batched cells say they were batched."""
    attacks = ["fgsm:gb-mta", "pgd:total", "mim:single-depth"]
    common = dict(suite="tiny-nyuv2-resnet34", profile="quick", attacks=attacks, models=["AS"], eps=[2.0, 4.0, 8.0],
                  images=8, workers=1, defenses=["none"])
    alone, together = tmp_path / "alone.db", tmp_path / "together.db"
    run(RunOptions(**common, results=str(alone), batch_cells="off"))
    run(RunOptions(**common, results=str(together), batch_cells="on"))
    a, b = _cells(alone), _cells(together)
    assert set(a) == set(b) and len(a) == 9
    gaps = {}
    for key, cell in a.items():
        other = b[key]
        assert cell.status == other.status == "valid", (key, other.reason)
        assert "batched" not in cell.config and other.config["batched"] == {"eps": [2.0, 4.0, 8.0], "cells": 3}
        assert (other.forward_passes, other.backward_passes) == (cell.forward_passes, cell.backward_passes)
        assert other.images == cell.images and other.max_perturbation <= key[2] + 1e-3
        gaps[key] = abs(other.arp - cell.arp)
    print("largest ARP gap, batched against alone:", max(gaps.values()), max(gaps, key=gaps.get))
    assert max(gaps.values()) <= BATCHED_ARP_TOLERANCE


def test_only_attacks_with_independent_images_are_batched():
    suite = load_suite("tiny-nyuv2-resnet34")
    from benchmark.runner.plan import Request, make_plan

    def units(attacks):
        plan = make_plan(Request(suite=suite.name, profile="quick", attacks=attacks, models=["AS", "IND"],
                                 eps=[2.0, 4.0, 8.0, 12.0, 16.0], defenses=["none"]))
        return batch_cells(plan.cells)

    batched = units(["pgd:gb-mta"])
    sizes = [len(u.cells) if isinstance(u, CellBatch) else 1 for u in batched]
    assert sizes == [MAX_CELLS, 1, MAX_CELLS, 1]  # per model: 5 eps, at most 4 a batch
    assert all(isinstance(u, CellBatch) or u.eps == 16.0 for u in batched)
    assert len({u.cells[0].target for u in batched if isinstance(u, CellBatch)}) == 2  # never across models
    # their step sizes or units depend on the batch; Square draws its randomness for the whole batch
    alone = units(["apgd:gb-mta", "autosaga:gb-mta", "square:gb-mta"])
    assert len(alone) == 30 and not any(isinstance(u, CellBatch) for u in alone)
    assert not create_attack("pgd:total", loss="batch").images_independent  # the authors' batch loss couples images
    assert not create_attack("pgd:total", preset="madry").images_independent  # a random start, drawn per batch
    assert use_batching("auto", "cpu") is False and use_batching("auto", "cuda:0") is True
    assert use_batching("on", "cpu") is True and use_batching("off", "cuda") is False


def test_a_per_image_eps_is_checked_image_by_image(tiny_nyu):
    model, tasks, batch = tiny_nyu
    images = batch["image"][:4]
    targets = {k: v[:4] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    eps = torch.tensor([2.0, 2.0, 8.0, 8.0])
    run_ = run_attack(create_attack("pgd:gb-mta", steps=2), model, images, targets, tasks=tasks, eps=eps, seed=0)
    delta = (run_.adversarial - images).abs().flatten(1).max(1).values * 255
    assert run_.verdict.valid and bool((delta <= eps + 1e-3).all()) and delta[2] > 2.5  # each image its own ball
    wide = images + 8 / 255 * torch.sign(torch.randn_like(images))
    verdict = validate_output(wide.clamp(0, 1), images, eps / 255)
    assert not verdict.valid and "image 0's max |delta|" in verdict.reason and "its eps = 2.0000/255" in verdict.reason
    with pytest.raises(ValueError, match="does not declare images_independent"):
        run_attack(create_attack("apgd:gb-mta", steps=2), model, images, targets, tasks=tasks, eps=eps, seed=0)


def test_a_batch_the_validator_refuses_runs_again_cell_by_cell(mini, monkeypatch, tmp_path):
    from pathlib import Path

    from benchmark.runner import batching

    monkeypatch.setenv("MTLBENCH_PLUGINS", str(Path(__file__).parent / "plugin_bad_attacks.py"))
    refused = []
    together = batching._attack_together

    def watched(cells, ctx, scorings):
        refused.append(together(cells, ctx, scorings))
        return refused[-1]

    monkeypatch.setattr(batching, "_attack_together", watched)
    results = tmp_path / "r.db"
    summary = run(RunOptions(suite=str(mini), profile="quick", attacks=["test-widest-eps", "test-nan"],
                             models=["AS"], results=str(results), batch_cells="on", workers=1))
    cells = _cells(results)
    widest = [c for k, c in cells.items() if k[1] == "test-widest-eps"]
    # batched, the eps-4 images left their ball; alone, each cell is valid and says nothing of a batch
    assert len(refused) == 1 and "left the eps-ball: image 0's" in refused[0] and "its eps = 4.0000/255" in refused[0]
    assert [c.status for c in widest] == ["valid", "valid"] and not any("batched" in c.config for c in widest)
    nan = [c for k, c in cells.items() if k[1] == "test-nan"]
    assert [c.status for c in nan] == ["invalid", "invalid"] and all("non-finite" in c.reason for c in nan)
    assert summary.done["valid"] == 2
