"""Hand-built results databases for the leaderboard tests and benchmarks."""

from benchmark.runner.store import CellResult, ResultsStore, cell_key

TASKS = ["segment_semantic", "normal", "depth_zbuffer"]
CLEAN = {"segment_semantic": {"mIoU": 0.2, "pixel_acc": 0.7}, "normal": {"mean": 30.0},
         "depth_zbuffer": {"abs_err": 0.9}}


def make_cell(suite, model, attack, eps, arp, *, seed=0, status="valid", reason="", task_arp=None, seconds=0.01,
              images=8, profile="test"):
    task_arp = task_arp if task_arp is not None else {t: arp for t in TASKS}
    target = {"single-depth": "depth_zbuffer", "single-normal": "normal", "single-segment": "segment_semantic"}
    config = {"suite": suite, "model": model, "attack": attack, "eps": eps, "seed": seed,
              "task": target.get(attack.partition(":")[2])}
    return CellResult(key=cell_key(config), suite=suite, model=model, attack=attack, eps=eps, seed=seed,
                      profile=profile, status=status, reason=reason, arp=arp if status == "valid" else None,
                      task_arp=task_arp if status == "valid" else {}, clean=CLEAN, adversarial=CLEAN,
                      images=images, batches=1, wall_s=seconds * 9, attack_s=seconds * 8, time_per_image_s=seconds,
                      forward_passes=10, backward_passes=10, peak_memory_bytes=300 * 2**20,
                      peak_memory_kind="cpu-peak-rss", device="cpu (test)", torch_version="2.x",
                      mtlbench_version="0.1.0", git_commit="abc1234", model_revision=f"local-sha256:{model}",
                      config=config, created="2026-11-25T00:00:00+00:00")


def put_models(store: ResultsStore, suite: str, models: list[str]) -> None:
    for i, m in enumerate(models):
        store.put_model(suite, m, f"local-sha256:{m}", {
            "layout": "AS", "paper_index": i, "backbone": "resnet34", "width": 0.125, "input_size": 48,
            "backbone_params": 1_000_000 - i * 1000, "shared_blocks": i % 6, "block_copies": 5,
            "layout_sets": [[[0, 1, 2]]] * 5, "tasks": TASKS, "dataset": "nyuv2", "data": "synthetic-nyuv2",
            "clean": CLEAN, "repo_id": "", "mean_branch_block": 5.0})
