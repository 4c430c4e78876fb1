"""What the inspection pages show, kept compactly when a cell runs: for the first few images of
the evaluation set (a profile's ``inspect_images``), the adversarial image and every task's
prediction on it; and once per target, the clean image, each task's ground truth and its clean
prediction with the image's clean metrics.

Each image is one ``numpy.savez_compressed`` blob of small arrays (about 10 KB at 48x48): the
clean ``image`` uint8 (3, H, W), or an adversarial image's ``delta`` from it (int8, 0-255 units),
and per task ``pred:<task>`` / ``gt:<task>``: a segmentation's class
ids (uint8, 255 = unlabelled), a normal map as a unit vector in RGB (uint8; 0 where the ground
truth is missing), any other map as float16 (its values as predicted: depth, keypoints, edges).
"""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import torch

from benchmark.tasks import IGNORE_INDEX, Task

__all__ = ["decode", "encode_adversarial", "encode_clean"]


def _task_array(task: Task, value: torch.Tensor, *, truth: bool) -> np.ndarray:
    """One image's map of ``task`` (a prediction, or the ground truth with ``truth``) for display."""
    value = value.detach().float().cpu()
    if task.kind == "segmentation":
        ids = value.long() if truth else value.argmax(0)
        ids = torch.where((ids < 0) | (ids > 254), torch.full_like(ids, IGNORE_INDEX), ids)
        return ids.to(torch.uint8).numpy()
    if task.kind == "normal":
        norm = value.norm(dim=0, keepdim=True)
        unit = (value / norm.clamp_min(1e-8)).clamp(0, 1)
        if truth:  # a missing ground truth (any channel at 255 in the PNG scale, or a zero vector) shows black
            unit = unit * ((norm > 0) & (value.amax(0, keepdim=True) < 255)).float()
        return (unit * 255).round().to(torch.uint8).numpy()
    return value[0].numpy().astype(np.float16) if value.dim() == 3 else value.numpy().astype(np.float16)


def _blob(arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, meta=np.frombuffer(json.dumps(meta, sort_keys=True).encode(), dtype=np.uint8),
                        **arrays)
    return buffer.getvalue()


def _image(x: torch.Tensor) -> np.ndarray:
    return (x.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def encode_adversarial(clean: torch.Tensor, adversarial: torch.Tensor, outputs: dict[str, torch.Tensor],
                       tasks: list[Task], n: int) -> list[bytes]:
    """The first ``n`` images of a batch: each adversarial image (as its 8-bit difference from the
    8-bit clean image, which compresses to a third) and every task's prediction on it."""
    out = []
    for i in range(min(n, adversarial.shape[0])):
        delta = _image(adversarial[i]).astype(np.int16) - _image(clean[i]).astype(np.int16)
        arrays = {"delta": delta.astype(np.int8)}
        arrays.update({f"pred:{t.name}": _task_array(t, outputs[t.name][i], truth=False) for t in tasks})
        out.append(_blob(arrays, {}))
    return out


def encode_clean(batch: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor], tasks: list[Task], n: int,
                 metrics: list[dict[str, dict[str, float]]], ids: list[str]) -> list[bytes]:
    """The first ``n`` images of a clean batch: the image, each task's ground truth and clean
    prediction, and the image's own clean metrics (``metrics``: per image, task -> metric -> value)."""
    out = []
    for i in range(min(n, batch["image"].shape[0])):
        arrays = {"image": _image(batch["image"][i])}
        for t in tasks:
            arrays[f"gt:{t.name}"] = _task_array(t, batch[t.name][i], truth=True)
            arrays[f"pred:{t.name}"] = _task_array(t, outputs[t.name][i], truth=False)
        out.append(_blob(arrays, {"metrics": metrics[i], "id": ids[i] if i < len(ids) else str(i)}))
    return out


def decode(blob: bytes) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The arrays and the metadata of one stored image."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files if k != "meta"}
        meta = json.loads(bytes(data["meta"]).decode()) if "meta" in data.files else {}
    return arrays, meta
