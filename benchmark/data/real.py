"""Readers for the real NYUv2 and Tiny-Taskonomy in the directory formats of the paper's code.

NYUv2 (``root``)::

    nyu_v2_3task.json        {"train": [[img, seg, normal, depth], ...], "test": [...]}
    <img>     RGB image (PNG/JPG, 0-255)
    <seg>     8-bit PNG of class ids 0-39, 255 = unlabelled
    <normal>  8-bit RGB PNG of the normal map, 0-255 (255 in a channel = missing)
    <depth>   .npy float array of depth in metres (0 = missing)

Evaluation resizes every test image to the crop (default 321x321; labels nearest-neighbour).
Normals stay in the 0-255 PNG scale as in the paper's code, whose loss normalises both vectors,
and in its channel order: the paper's loader reads the PNG with OpenCV, which gives the channels
as B, G, R, so the authors' models predict normals in that order; the target here is the same
(channel 0 is the PNG's blue channel).

Tiny-Taskonomy (``root``)::

    taskonomy.json           {"train": [[img, seg, normal, depth, keypoint, edge], ...], "test_small": [...]}
    semseg_prior_factor.npy  17 class weights of the segmentation loss
    train/..., test/...      the files (test and test_small both live under test/)
    <seg>       8-bit PNG: 0 = unlabelled, 1-17 = classes (stored minus one; 0 -> class 0)
    <normal>    8-bit RGB PNG, rescaled to [-1, 1]
    <depth>     16-bit PNG (1/512 m); log(1 + d) / log(2^16); values >= 64500 are masked
    <keypoint>  16-bit PNG / 2^16, rescaled from [0, 0.005] to [-1, 1]
    <edge>      16-bit PNG / 2^16, rescaled from [0, 0.08] to [-1, 1]

Images are resized to 256x256, then to the crop (default 224x224). The depth mask is returned as
``mask`` and applies to normal and depth, as in the paper's code.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from benchmark.errors import UserError
from benchmark.tasks import IGNORE_INDEX

__all__ = ["NYUv2", "Taskonomy"]


def _read_index(root: Path, name: str, split: str, fields: int, dataset: str) -> list[list[str]]:
    if not root.is_dir():
        raise UserError(f"{dataset} data directory {root} does not exist; expected a directory with {name} "
                        "(its layout: docs/tutorials/full-suites.md, \"Running the full suites\")")
    index = root / name
    if not index.is_file():
        raise UserError(f"{dataset} data directory {root} has no {name}; expected the index file of the "
                        "paper's code listing each split's files")
    try:
        info = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{index} is not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(info, dict) or split not in info:
        known = ", ".join(sorted(info)) if isinstance(info, dict) else "none"
        raise UserError(f"{index} has no split {split!r} (splits: {known})")
    rows = info[split]
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{index}: split {split!r} must be a non-empty list of entries, got "
                        f"{'an empty list' if rows == [] else type(rows).__name__}")
    for i, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == fields and all(isinstance(x, str) for x in row)):
            raise UserError(f"{index} split {split!r} entry {i} must list {fields} file paths, got {row!r}")
        for path in row:
            p = Path(path)
            if p.is_absolute() or ".." in p.parts:
                raise UserError(f"{index} split {split!r} entry {i}: {path!r} is not a path inside the data "
                                f"directory (absolute paths and '..' are refused)")
    return rows


def _load_png(path: Path, dataset: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise UserError(f"{dataset}: missing file {path}")
    try:
        with warnings.catch_warnings():
            # an image over PIL's pixel limit is refused before it is decoded, not only warned about
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return np.array(im)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UserError(f"{dataset}: {path} is too large to be an image of this data set ({exc})") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise UserError(f"{dataset}: cannot read image {path}: {exc}") from None


def _check_labels(seg: np.ndarray, path: Path, classes: int, dataset: str, allowed: tuple[int, ...] = ()) -> None:
    if seg.ndim != 2:
        raise UserError(f"{dataset}: segmentation {path} must be a one-channel image, got shape {seg.shape}")
    values = np.unique(seg)
    bad = [int(v) for v in values if not (0 <= v < classes or int(v) in allowed)]
    if bad:
        raise UserError(f"{dataset}: segmentation {path} has label(s) {bad[:5]} outside the {classes} classes "
                        f"(0-{classes - 1}{', ' + ', '.join(map(str, allowed)) + ' = ignored' if allowed else ''})")


#: how many segmentation maps of a split are read up front to check that its labels are the 40-class ones
COVERAGE_SAMPLE = 24


def _check_class_coverage(root: Path, segs: list[str], split: str) -> None:
    """Warn when the labels of a split look like another labelling than the 40 classes: NYUv2 also
    circulates with 13 classes (0-12), whose ids are all valid 40-class ids, so no single map is
    wrong, but a model trained on them learns another task. Every 40-class test image of NYUv2 has
    labels above 20 (walls, floors and "other" classes are 0-based ids 0, 1 and 37-39)."""
    if len(segs) < 8:  # a handful of images can honestly use few classes
        return
    step = max(1, len(segs) // COVERAGE_SAMPLE)
    sample = segs[::step][:COVERAGE_SAMPLE]
    top = -1
    for rel in sample:
        seg = _load_png(root / rel, "NYUv2")
        labelled = seg[seg != IGNORE_INDEX]
        if labelled.size:
            top = max(top, int(labelled.max()))
        if top >= 20:
            return
    warnings.warn(f"NYUv2 split {split!r} of {root}: the segmentation labels of {len(sample)} of its "
                  f"{len(segs)} maps use only classes 0-{top} of the suite's 40 (0-39): this looks like "
                  "another labelling (NYUv2's 13-class one uses 0-12). The NYUv2 suites' models predict the 40 "
                  "classes of the paper (0-based, 255 = unlabelled); with other labels their scores mean nothing",
                  UserWarning, stacklevel=3)


def _load_npy(path: Path, dataset: str) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{dataset}: missing file {path}")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise UserError(f"{dataset}: cannot read {path} as a numpy array: {exc}") from None


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize a (C, H, W) tensor."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kw = {"align_corners": False} if mode == "bilinear" else {}
    return F.interpolate(x[None].float(), size=size, mode=mode, **kw)[0]


def _chw(a: np.ndarray) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a))
    return t[None] if t.dim() == 2 else t.permute(2, 0, 1)


class NYUv2(Dataset):
    """NYUv2 with segmentation (40 classes), normal and depth, as the paper's code reads it."""

    def __init__(self, root: str | Path, split: str = "test", *, crop: tuple[int, int] = (321, 321)) -> None:
        self.root = Path(root)
        self.split, self.crop = split, tuple(crop)
        self.rows = _read_index(self.root, "nyu_v2_3task.json", split, 4, "NYUv2")
        _check_class_coverage(self.root, [row[1] for row in self.rows], split)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img_p, seg_p, normal_p, depth_p = (self.root / p for p in self.rows[i])
        img = _load_png(img_p, "NYUv2")
        if img.ndim != 3 or img.shape[2] < 3:
            raise UserError(f"NYUv2: {img_p} is not an RGB image (shape {img.shape})")
        seg = _load_png(seg_p, "NYUv2")
        _check_labels(seg, seg_p, 40, "NYUv2", (IGNORE_INDEX,))
        normal = _load_png(normal_p, "NYUv2")
        depth = _load_npy(depth_p, "NYUv2").astype(np.float32)
        if depth.ndim == 3 and depth.shape[2] == 1:
            depth = depth[..., 0]
        if depth.ndim != 2:
            raise UserError(f"NYUv2: depth {depth_p} must be an (H, W) or (H, W, 1) array, got shape {depth.shape}")
        if not np.isfinite(depth).all():
            raise UserError(f"NYUv2: depth {depth_p} holds NaN or inf values ({int((~np.isfinite(depth)).sum())} "
                            "pixels); mark missing depth with 0")
        if not (img.shape[:2] == seg.shape[:2] == normal.shape[:2] == depth.shape[:2]):
            raise UserError(f"NYUv2 sample {i}: image, seg, normal and depth sizes differ "
                            f"({img.shape[:2]}, {seg.shape[:2]}, {normal.shape[:2]}, {depth.shape[:2]})")
        return {
            "image": _resize(_chw(img[..., :3]).float() / 255.0, self.crop, "bilinear").clamp(0, 1),
            "segment_semantic": _resize(_chw(seg), self.crop, "nearest")[0].long(),
            # B, G, R: the channel order of the paper's OpenCV loader (its models' normal outputs)
            "normal": _resize(_chw(normal[..., 2::-1]).float(), self.crop, "nearest"),
            "depth_zbuffer": _resize(_chw(depth), self.crop, "nearest"),
        }


def _rescale(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Clip to [low, high] and map linearly to [-1, 1] (the paper's ``rescale_image``)."""
    return (np.clip(x, low, high) - low) / (high - low) * 2.0 - 1.0


class Taskonomy(Dataset):
    """Tiny-Taskonomy with its 5 tasks, as the paper's code reads it."""

    def __init__(self, root: str | Path, split: str = "test_small", *, crop: tuple[int, int] = (224, 224)) -> None:
        self.root = Path(root)
        self.split, self.crop = split, tuple(crop)
        self.rows = _read_index(self.root, "taskonomy.json", split, 6, "Taskonomy")
        self.files = self.root / ("train" if split.startswith("train") else "test")
        prior = self.root / "semseg_prior_factor.npy"
        if not prior.is_file():
            raise UserError(f"Taskonomy data directory {self.root} has no semseg_prior_factor.npy "
                            "(the 17 class weights of the segmentation loss)")
        self.class_weights = torch.from_numpy(_load_npy(prior, "Taskonomy").astype(np.float32)).flatten()
        if self.class_weights.numel() != 17:
            raise UserError(f"{prior} must hold 17 class weights, got {self.class_weights.numel()}")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        paths = [self.files / p for p in self.rows[i]]
        img, seg, normal, depth, keypoint, edge = (_load_png(p, "Taskonomy") for p in paths)
        base = (256, 256)
        image = _resize(_resize(_chw(img[..., :3]).float(), base, "nearest") / 255.0, self.crop, "bilinear")
        _check_labels(seg, paths[1], 18, "Taskonomy")  # 0 and 1 both mean class 0 (the paper's reading)
        seg = seg.astype(np.int64)
        seg = np.where(seg == 0, 1, seg) - 1
        normal_t = _rescale(normal[..., :3].astype(np.float32) / 255.0, 0.0, 1.0)
        depth = depth.astype(np.float32)
        depth_log = np.log1p(depth) / math.log(2.0**16)
        mask = (depth < 64500).astype(np.float32)
        key = _rescale(keypoint.astype(np.float32) / 2**16, 0.0, 0.005)
        edg = _rescale(edge.astype(np.float32) / 2**16, 0.0, 0.08)

        def lab(a):
            return _resize(_resize(_chw(a), base, "nearest"), self.crop, "nearest")

        return {
            "image": image.clamp(0, 1),
            "segment_semantic": lab(seg)[0].long(),
            "normal": lab(normal_t).float(),
            "depth_zbuffer": lab(depth_log).float(),
            "keypoints2d": lab(key).float(),
            "edge_texture": lab(edg).float(),
            "mask": lab(mask).float(),
        }
