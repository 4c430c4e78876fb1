"""A picture of a data set: rows of samples, columns RGB and every task's ground truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmark.errors import UserError

__all__ = ["save_preview"]


def _normal_rgb(n: torch.Tensor) -> np.ndarray:
    n = n.float()
    if n.max() > 1.5:  # NYUv2 PNG scale
        n = n / 127.5 - 1.0
    n = torch.nn.functional.normalize(n, dim=0)
    return ((n.permute(1, 2, 0).numpy() + 1) / 2).clip(0, 1)


def _seg_cmap():
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    return ListedColormap(list(plt.get_cmap("tab20").colors) + list(plt.get_cmap("tab20b").colors))


def save_preview(dataset, out: str | Path, *, rows: int = 4, title: str | None = None) -> Path:
    """Write a PNG grid of ``rows`` samples of ``dataset``: RGB, then each task's ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg", ".pdf", ".svg"):
        raise UserError(f"--out {out}: the preview is an image; give a .png (or .jpg, .pdf, .svg) file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot create the folder {out.parent} ({exc.strerror})") from None
    samples = [dataset[i] for i in range(min(rows, len(dataset)))]
    keys = [k for k in ("segment_semantic", "depth_zbuffer", "normal", "keypoints2d", "edge_texture")
            if k in samples[0]]
    cols = 1 + len(keys)
    fig, axes = plt.subplots(len(samples), cols, figsize=(2.2 * cols, 2.2 * len(samples)), squeeze=False)
    for r, sample in enumerate(samples):
        axes[r][0].imshow(sample["image"].permute(1, 2, 0).numpy().clip(0, 1))
        for c, key in enumerate(keys, start=1):
            target = sample[key]
            ax = axes[r][c]
            if key == "segment_semantic":
                seg = target.numpy().astype(float)
                seg[seg == 255] = np.nan
                ax.imshow(seg, cmap=_seg_cmap(), interpolation="nearest", vmin=-0.5, vmax=39.5)
            elif key == "normal":
                ax.imshow(_normal_rgb(target))
            elif key == "depth_zbuffer":
                ax.imshow(target[0].numpy(), cmap="magma_r")
            else:
                ax.imshow(target[0].numpy(), cmap="gray")
    for c, name in enumerate(["rgb", *keys]):
        axes[0][c].set_title(name, fontsize=9)
    for ax in np.ravel(axes):
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        fig.savefig(out, dpi=110)
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write it ({exc.strerror or exc})") from None
    finally:
        plt.close(fig)
    return out
