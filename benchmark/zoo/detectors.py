"""The heads of learned detectors (:class:`benchmark.defenses.detectors.LearnedConsistency`): one per
member, trained on the member's clean predictions with the manifest's ``[detectors]`` recipe,
saved as float16 safetensors with a ``config.json`` (recipe, the member's weights, the final loss);
a tiny suite's ship with mtlbench under ``<weights>/<suite>/detectors/<detector>/<member>/``, their
sha256 pinned in ``[weights.detectors."<detector>"]``; others are trained into the zoo cache.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from benchmark.defenses.detectors import ConsistencyHead, head_inputs
from benchmark.errors import UserError
from benchmark.paths import zoo_root
from benchmark.suites import Suite
from benchmark.zoo.checkpoint import CheckpointError, file_sha256

__all__ = ["head_dir", "load_head", "train_head"]

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def head_dir(suite: Suite, detector: str, member: str, *, shipped: bool) -> Path:
    """Where ``member``'s head of ``detector`` is (shipped with mtlbench, or in the zoo cache)."""
    return zoo_root(suite.name, shipped=shipped) / "detectors" / detector / member


def _classes(suite: Suite) -> int:
    return next(t.channels for t in suite.tasks if t.kind == "segmentation")


def load_head(suite: Suite, detector: str, member: str, device: torch.device | str) -> ConsistencyHead:
    """``member``'s trained head: the shipped one when the manifest pins it (its sha256 checked),
    else the zoo cache's; none is a message naming the command that trains it."""
    from safetensors.torch import load_file

    pinned = suite.detector_sha256.get(detector, {}).get(member)
    shipped = head_dir(suite, detector, member, shipped=True) / WEIGHTS
    cached = head_dir(suite, detector, member, shipped=False) / WEIGHTS
    if pinned and shipped.is_file():
        actual = file_sha256(shipped)
        if actual != pinned:
            raise CheckpointError(f"{shipped}: sha256 {actual} is not the {pinned} pinned in {suite.path} "
                                  f"([weights.detectors.\"{detector}\"] {member}); the file was changed")
        path = shipped
    elif cached.is_file():
        path = cached
    else:
        raise UserError(f"{detector}: no trained head for {suite.name}/{member}; train it with `mtlbench defend "
                        f"{suite.ref} --defense {detector} --models {member}` (a few minutes on a CPU)")
    config = json.loads((path.parent / CONFIG).read_text())
    head = ConsistencyHead(_classes(suite), hidden=int(config["recipe"]["hidden"]))
    head.load_state_dict({k: v.float() for k, v in load_file(path).items()})
    return head.to(device).eval()


def train_head(suite: Suite, detector: str, member: str, *, out: Path | None = None, device: str = "cpu",
               data_root: str | None = None, console=None) -> Path:
    """Train ``member``'s head of ``detector`` on its clean predictions over the suite's training
    split (the ``[detectors]`` recipe): the head learns the model's log-depth from its segmentation
    and normals, so on clean images the two agree. Returns the head's folder."""
    from safetensors.torch import save_file

    from benchmark.data import make_loader
    from benchmark.zoo.locate import find_member, load_location

    recipe = suite.detector_recipe
    torch.manual_seed(recipe.seed)
    model, _ = load_location(find_member(suite, suite.member(member)), device)  # the member's weights, as pinned
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tasks = suite.tasks
    data = suite.data("train", size=recipe.train_size, data_root=data_root)
    head = ConsistencyHead(_classes(suite), hidden=recipe.hidden).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=recipe.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, recipe.steps)
    step, start, loss = 0, time.perf_counter(), float("nan")
    while step < recipe.steps:
        loader = make_loader(data, recipe.batch_size, shuffle=True, seed=recipe.seed + step, drop_last=True)
        for batch in loader:
            with torch.no_grad():
                seg, normal, depth = head_inputs(model(batch["image"].to(device)), tasks)
            value = (head(seg, normal) - depth).abs().mean()
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            sched.step()
            loss, step = float(value.detach()), step + 1
            if console is not None and step % 100 == 0:
                console.print(f"{detector} {member}: step {step}/{recipe.steps}, loss {loss:.4f}", highlight=False)
            if step >= recipe.steps:
                break
    folder = out / member if out is not None else head_dir(suite, detector, member, shipped=False)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().half().contiguous() for k, v in head.state_dict().items()}, folder / WEIGHTS)
    member_sha = suite.member(member).sha256
    (folder / CONFIG).write_text(json.dumps({
        "detector": detector, "suite": suite.name, "member": member, "member_sha256": member_sha,
        "recipe": recipe.to_dict(), "final_loss": loss, "seconds": round(time.perf_counter() - start, 1),
        "device": str(device), "torch": torch.__version__}, indent=1, sort_keys=True) + "\n")
    return folder
