"""The GPU paths: device placement, the CUDA memory column, the determinism check on CUDA,
``--device cuda`` for run, zoo build/train and defend, and Ray's GPUs per cell. Skipped without
CUDA (the rest of the suite runs every path on the CPU)."""

import json

import pytest
import torch

from benchmark.cli import main
from benchmark.runner import ResultsStore, RunOptions, run

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_a_run_on_cuda_places_everything_there_and_measures_cuda_memory(mini, tmp_path):
    db = tmp_path / "r.db"
    run(RunOptions(suite=str(mini), results=str(db), device="cuda", attacks=["pgd:gb-mta", "fgsm:total"], eps=[8]))
    with ResultsStore(db, readonly=True) as store:
        cells = store.cells()
    assert cells and {c.status for c in cells} == {"valid"}
    for c in cells:
        assert c.device == torch.cuda.get_device_name(0)
        assert c.peak_memory_kind == "cuda-allocated-added" and c.peak_memory_bytes is not None
        # built-in attacks are re-run on a GPU to check their determinism (kernels may not be)
        assert c.config["check_determinism"] is (c.eps == 8)


def test_cpu_and_cuda_scores_of_the_same_images_agree(mini, tmp_path):
    """The same cells on the CPU and on CUDA: the same clean metrics to float rounding."""
    found = {}
    for device in ("cpu", "cuda"):
        db = tmp_path / f"{device}.db"
        run(RunOptions(suite=str(mini), results=str(db), device=device, attacks=["fgsm:total"], eps=[8],
                       models=["AS"]))
        with ResultsStore(db, readonly=True) as store:
            (found[device],) = store.cells()
    for task, metrics in found["cpu"].clean.items():
        for key, value in metrics.items():
            assert found["cuda"].clean[task][key] == pytest.approx(value, rel=1e-3, abs=1e-3), (task, key)


def test_zoo_build_and_defend_on_cuda(mini, tmp_path):
    out = tmp_path / "weights"
    assert main(["zoo", "build", str(mini), "--model", "AS", "--device", "cuda", "--out", str(out),
                 "--steps", "3", "--workers", "1"]) == 0
    assert json.loads((out / "AS" / "config.json").read_text())["training"]["device"] == "cuda"
    assert main(["defend", str(mini), "--models", "AS", "--device", "cuda", "--steps", "2",
                 "--out", str(tmp_path / "fat")]) == 0
    assert json.loads((tmp_path / "fat" / "AS" / "config.json").read_text())["training"]["device"] == "cuda"


def test_ray_cells_share_a_gpu(mini, tmp_path):
    pytest.importorskip("ray")
    db = tmp_path / "r.db"
    run(RunOptions(suite=str(mini), results=str(db), device="cuda", executor="ray", gpus_per_worker=0.5,
                   attacks=["fgsm:total"], eps=[8]))
    with ResultsStore(db, readonly=True) as store:
        cells = store.cells()
    assert cells and {c.status for c in cells} == {"valid"}
    assert {c.device for c in cells} == {torch.cuda.get_device_name(0)}


def test_the_built_in_attacks_repeat_bit_for_bit_on_cuda(tiny_nyu):
    """The same seed gives the same adversarial images on a GPU (the runner's determinism check
    passes for every optimizer and objective), with the deterministic kernels run_attack asks for."""
    from benchmark.attacks import create_attack, run_attack

    model, tasks, batch = tiny_nyu
    model = model.cuda()
    gpu = {k: v.cuda() for k, v in batch.items()}
    try:
        specs = [f"pgd:{o}" for o in ("single-segment", "single-normal", "single-depth", "total", "signtotal",
                                      "gb-mta")] + ["mim:gb-mta", "apgd:gb-mta", "autosaga:total"]
        for spec in specs:
            for seed in range(3):
                run = run_attack(create_attack(spec, steps=5), model, gpu["image"], gpu, tasks=tasks, eps=8, seed=seed,
                                 check_determinism=True)
                assert run.verdict.valid, (spec, seed, run.verdict.reason)
    finally:
        model.cpu()


def test_batched_cells_on_cuda_agree_with_each_cell_alone_on_the_cpu(tmp_path):
    """--batch-cells auto batches on a GPU: the tiny AS's cells, batched across eps on CUDA, within
    a point of ARP of the same cells alone on the CPU (the spread of CPU against GPU, 0.85 at most
    over the quick profile), with the same counted passes."""
    found = {}
    for device in ("cpu", "cuda"):
        db = tmp_path / f"{device}.db"
        run(RunOptions(suite="tiny-nyuv2-resnet34", results=str(db), device=device, models=["AS"], images=16,
                       attacks=["fgsm:gb-mta", "pgd:gb-mta", "mim:total"], eps=[2, 4, 8], defenses=["none"]))
        with ResultsStore(db, readonly=True) as store:
            found[device] = {(c.attack, c.eps): c for c in store.cells()}
    assert set(found["cpu"]) == set(found["cuda"]) and len(found["cpu"]) == 9
    for key, alone in found["cpu"].items():
        batched = found["cuda"][key]
        assert "batched" not in alone.config and batched.config["batched"]["cells"] == 3
        assert (batched.forward_passes, batched.backward_passes) == (alone.forward_passes, alone.backward_passes)
        assert batched.arp == pytest.approx(alone.arp, abs=1.0), key
