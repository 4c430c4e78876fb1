"""One ``Dataset`` interface for synthetic and real data.

Every sample is a dict: ``image`` (3, H, W) RGB in [0, 1], one target per task under the task's
name, and optionally ``mask`` (1, H, W) marking valid pixels for normal and depth. Batches from
:func:`make_loader` are the same dicts with a leading batch dimension.

Data sets by name (:func:`load_dataset`):

* ``synthetic-nyuv2`` / ``synthetic-taskonomy``: procedural indoor scenes (:mod:`.synthetic`)
  with the NYUv2 tasks (40-class segmentation, normal, depth) or the Tiny-Taskonomy tasks
  (17-class segmentation, normal, depth, keypoints, edges). Splits ``train``/``val``/``test``
  draw disjoint scenes.
* ``nyuv2`` / ``taskonomy``: the real data sets in the directory formats of the paper's code
  (:mod:`.real`), from ``root``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from benchmark.data.synthetic import render_scenes, sample_scene
from benchmark.errors import UserError

__all__ = ["SPLITS", "SyntheticScenes", "image_ids", "list_datasets", "load_dataset", "make_loader", "to_device"]

SPLITS = {"train": 0, "val": 1, "test": 2}
_CHUNK_PIXELS = 64 * 64 * 64  # scenes rendered together: 64 at 64x64, 2 at 321x321


class SyntheticScenes(Dataset):
    """Procedural indoor scenes with the tasks of ``dataset`` (``nyuv2`` or ``taskonomy``).

    Scenes are rendered in vectorised chunks on first access and kept in memory when ``cache`` is
    true (the default; 2,000 scenes at 64x64 take about 100 MB)."""

    def __init__(self, dataset: str = "nyuv2", split: str = "train", *, size: int = 1000,
                 resolution: int = 64, seed: int = 0, cache: bool = True) -> None:
        if dataset not in ("nyuv2", "taskonomy"):
            raise UserError(f"synthetic scenes come with the 'nyuv2' or 'taskonomy' tasks, not {dataset!r}")
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if size < 1 or resolution < 16:
            raise UserError(f"need size >= 1 and resolution >= 16, got size={size}, resolution={resolution}")
        self.dataset, self.split, self.size, self.resolution, self.seed = dataset, split, size, resolution, seed
        self.cache = cache
        self._data: dict[str, torch.Tensor] | None = None

    @property
    def name(self) -> str:
        return f"synthetic-{self.dataset}"

    def __len__(self) -> int:
        return self.size

    def _convert(self, raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {"image": raw["image"], "normal": raw["normal"], "depth_zbuffer": raw["depth"]}
        if self.dataset == "nyuv2":
            out["segment_semantic"] = raw["nyu_class"]
        else:
            out["segment_semantic"] = raw["taskonomy_class"]
            out["keypoints2d"] = raw["keypoint"]
            out["edge_texture"] = raw["edge"]
        return out

    def render(self, indices: Sequence[int]) -> dict[str, torch.Tensor]:
        """Render scenes ``indices`` as one batch dict (independent of how they are grouped)."""
        per_chunk = max(1, _CHUNK_PIXELS // (self.resolution * self.resolution))
        parts = []
        for start in range(0, len(indices), per_chunk):
            chunk = [int(i) for i in indices[start: start + per_chunk]]
            specs = [sample_scene(self.seed, SPLITS[self.split], i) for i in chunk]
            raw = render_scenes(specs, self.resolution, noise_seed=None)
            raw["image"] = _add_noise(raw["image"], self.seed, SPLITS[self.split], chunk)
            parts.append(self._convert(raw))
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}

    def materialize(self) -> dict[str, torch.Tensor]:
        if self._data is None:
            self._data = self.render(range(self.size))
        return self._data

    def _check(self, index: int) -> int:
        if not -self.size <= index < self.size:
            raise IndexError(f"scene {index} out of range for {self.size} scenes")
        return index % self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list[dict[str, torch.Tensor]]:
        """Batched fetch (used by ``DataLoader``): one vectorised render for the whole batch."""
        idx = [self._check(i) for i in indices]
        batch = self.materialize() if self.cache else self.render(idx)
        if self.cache:
            sel = torch.tensor(idx)
            batch = {k: v[sel] for k, v in batch.items()}
        return [{k: v[j] for k, v in batch.items()} for j in range(len(idx))]


def _add_noise(images: torch.Tensor, seed: int, split: int, indices: list[int], sigma: float = 0.01) -> torch.Tensor:
    """Per-scene sensor noise, seeded by the scene (so it does not depend on the batch)."""
    noisy = images.clone()
    for j, i in enumerate(indices):
        gen = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, split, i, 1]).generate_state(1)[0]))
        noisy[j] += sigma * torch.randn(images.shape[1:], generator=gen)
    return noisy.clamp_(0, 1)


def image_ids(dataset: Dataset) -> list[str]:
    """The identity of each image of ``dataset``, in order: a synthetic scene's data set, split,
    seed and index, a real image's path in the data set's index (what a result bundle records, so
    that a verifier scores the same images)."""
    if isinstance(dataset, torch.utils.data.Subset):
        inner = image_ids(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, SyntheticScenes):
        return [f"{dataset.name}/{dataset.split}/seed{dataset.seed}/{i}" for i in range(len(dataset))]
    rows = getattr(dataset, "rows", None)
    if rows is not None:
        return [str(row[0]) for row in rows]
    return [str(i) for i in range(len(dataset))]


def list_datasets() -> list[str]:
    return ["synthetic-nyuv2", "synthetic-taskonomy", "nyuv2", "taskonomy"]


def load_dataset(name: str, split: str = "test", *, root: str | None = None, size: int | None = None,
                 resolution: int | None = None, seed: int = 0) -> Dataset:
    """A data set by name; see the module docstring."""
    if name.startswith("synthetic-"):
        return SyntheticScenes(name.removeprefix("synthetic-"), split, size=size or 1000,
                               resolution=resolution or 64, seed=seed)
    if name in ("nyuv2", "taskonomy"):
        from benchmark.data.real import NYUv2, Taskonomy

        if root is None:
            raise UserError(f"the real {name} data set needs its directory: pass root=... (--data-root DIR)")
        cls = NYUv2 if name == "nyuv2" else Taskonomy
        kwargs = {} if resolution is None else {"crop": (resolution, resolution)}
        ds = cls(root, split, **kwargs)
        if size is not None:
            ds = torch.utils.data.Subset(ds, range(min(size, len(ds))))
        return ds
    raise UserError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")


def make_loader(dataset: Dataset, batch_size: int = 16, *, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    """A ``DataLoader`` whose batches are dicts of stacked tensors; shuffling is seeded."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, drop_last=drop_last,
                      num_workers=0)


def to_device(batch: dict, device: torch.device | str) -> dict:
    """A batch (``{"image": ..., task targets, ids}``) with its tensors on ``device``."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
