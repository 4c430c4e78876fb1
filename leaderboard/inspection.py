"""The inspection pages: for each target, its first few evaluation images (the profile's
``inspect_images``) before and after every attack.

Per image: the clean image, and per task the ground truth and the clean prediction; then one row
per attack and eps: the adversarial image, its perturbation (amplified so that the eps-ball fills
the grey scale: mid-grey is no change, the scale is stated), every task's prediction on it with
the task's relative drop on this image, and the image's ARP (the same formulas as the cell's, on
this image's own metrics). Segmentation is drawn in one fixed class palette with a legend of the
classes on the image; depth (and any other map) with one colour map and one colour bar shared by
the ground truth, the clean and every adversarial prediction of the image; normals as RGB (the unit
vector's components). The rows come from the stored cells (:mod:`benchmark.runner.inspection`);
nothing is recomputed here.
"""

from __future__ import annotations

import functools
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from benchmark.enums import Status
from benchmark.runner.inspection import decode
from benchmark.runner.store import CellResult, ResultsStore
from benchmark.scoring import arp, task_arp
from benchmark.tasks import IGNORE_INDEX, get_tasks
from leaderboard.names import slug

__all__ = ["inspection_page", "render_inspection"]

#: how many times the pages draw each pixel (the maps are small: 48x48 on the tiny suites)
ZOOM = 3


def inspection_page(page: str, model: str) -> str:
    return f"inspect-{page}-{slug(model)}.html"


def _palette(n: int) -> np.ndarray:
    """A fixed colour per class id (matplotlib's tab20, tab20b and tab20c, then repeated)."""
    from matplotlib import colormaps

    colours = [colormaps[name](i)[:3] for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    table = np.zeros((256, 3), dtype=np.uint8)
    for k in range(min(n, 255)):
        table[k] = (np.array(colours[k % len(colours)]) * 255).round().astype(np.uint8)
    table[IGNORE_INDEX] = (0, 0, 0)
    return table


def _class_names(dataset: str, n: int) -> list[str]:
    from benchmark.data.synthetic import NYU40_CLASSES, TASKONOMY_CLASSES

    names = NYU40_CLASSES if dataset == "nyuv2" else TASKONOMY_CLASSES
    return [names[k] if k < len(names) else f"class {k}" for k in range(n)]


#: a colour-mapped pixel's level without ground truth (drawn grey)
NO_TRUTH = 255


def _png(array: np.ndarray, path: Path) -> str:
    """Write an RGB image (H, W, 3); PIL's optimiser stores one with few colours as a palette PNG."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, optimize=True)
    return path.name


@functools.lru_cache(maxsize=8)
def _lut(name: str) -> np.ndarray:
    """The colour map ``name`` as 255 levels (level 255: grey, no ground truth)."""
    from matplotlib import colormaps

    table = np.full((256, 3), 128, dtype=np.uint8)
    table[:NO_TRUTH] = (colormaps[name](np.linspace(0, 1, NO_TRUTH))[:, :3] * 255).round().astype(np.uint8)
    return table


def _levels(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Values as levels 0-254 of the range [low, high] (non-finite: no ground truth)."""
    values = values.astype(np.float32)
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0, 1)
    indices = np.round(np.nan_to_num(scaled) * (NO_TRUTH - 1)).astype(np.uint8)
    indices[~np.isfinite(values)] = NO_TRUTH
    return indices


def _colour_map(values: np.ndarray, low: float, high: float, name: str) -> np.ndarray:
    """Values as an RGB image in the colour map ``name`` (the colour bar's)."""
    return _lut(name)[_levels(values, low, high)]


def _draw(task, array: np.ndarray, scale: dict, *, truth: bool = False) -> np.ndarray:
    """One task's map as an RGB image (H, W, 3): a segmentation in the class palette, normals as
    their components, any other map in its colour map (a ground truth's missing pixels grey)."""
    if task.kind == "segmentation":
        return scale["palette"][array]
    if task.kind == "normal":
        return np.transpose(array, (1, 2, 0))
    indices = _levels(array, scale["low"], scale["high"])
    if truth and "mask" in scale:
        indices[~scale["mask"]] = NO_TRUTH
    return _lut(scale["cmap"])[indices]


def _scales(tasks, clean: dict[str, np.ndarray], adversarial: list[dict[str, np.ndarray]],
            palette: np.ndarray) -> dict[str, dict]:
    """Per task, what every map of one image is drawn with: the palette, or one value range (the
    2nd-98th percentile of the ground truth's valid values and of every prediction) and its colour map."""
    out = {}
    for t in tasks:
        if t.kind == "segmentation":
            out[t.name] = {"palette": palette}
            continue
        if t.kind == "normal":
            out[t.name] = {}
            continue
        gt = clean[f"gt:{t.name}"].astype(np.float32)
        valid = np.isfinite(gt) & (gt > 0) if t.kind == "depth" else np.isfinite(gt)
        pool = [gt[valid], clean[f"pred:{t.name}"].astype(np.float32).ravel()]
        pool += [a[f"pred:{t.name}"].astype(np.float32).ravel() for a in adversarial]
        values = np.concatenate([p[np.isfinite(p)] for p in pool if p.size])
        low, high = (np.percentile(values, [2, 98]).tolist() if values.size else [0.0, 1.0])
        out[t.name] = {"low": low, "high": high, "cmap": "viridis" if t.kind == "depth" else "gray",
                       "mask": valid if t.kind == "depth" else None}
        if out[t.name]["mask"] is None:
            out[t.name].pop("mask")
    return out


def _colour_bar(scale: dict, path: Path) -> str:
    ramp = np.linspace(scale["low"], scale["high"], 128, dtype=np.float32)[None, :].repeat(8, 0)
    return _png(_colour_map(ramp, scale["low"], scale["high"], scale["cmap"]), path)


def _image_metrics(cell: CellResult, i: int) -> dict[str, dict[str, float]] | None:
    metrics = (cell.per_image or {}).get("metrics") or {}
    try:
        return {task: {m: float(values[i]) for m, values in by.items()} for task, by in metrics.items()}
    except (IndexError, TypeError, ValueError):
        return None


def _drops(clean: dict, adversarial: dict | None, tasks) -> tuple[float | None, dict[str, float | None]]:
    """The image's ARP and each task's relative drop (None where a clean metric of 0 leaves it undefined)."""
    if not adversarial or not clean:
        return None, {}
    out: dict[str, float | None] = {}
    for t in tasks:
        try:
            out[t.name] = task_arp({t.name: clean[t.name]}, {t.name: adversarial[t.name]}, [t])[t.name]
        except (KeyError, ValueError):
            out[t.name] = None
    try:
        whole = arp(clean, adversarial, tasks)
    except (KeyError, ValueError):
        whole = None
    return (whole if whole is None or math.isfinite(whole) else None), out


def _rows_of(targets: list[str], cells: list[CellResult]) -> dict[str, list[CellResult]]:
    """Each target's inspected valid cells of this view: by eps, strongest first."""
    wanted = set(targets)
    by: dict[str, list[CellResult]] = defaultdict(list)
    for c in cells:
        if c.model in wanted and c.status == Status.VALID and (c.config.get("inspection") or {}).get("images") \
                and not (c.config.get("budget") or {}).get("extra"):
            by[c.model].append(c)
    for rows in by.values():
        rows.sort(key=lambda c: (-c.eps, -(c.arp or 0.0), c.attack))
    return by


def render_inspection(store: ResultsStore, board: dict[str, Any], out: Path, env, common: dict) -> int:
    """Write every view's inspection pages (and their images) into ``out``; returns the number of
    pages. A target is inspected where its view's cells kept images."""
    from benchmark.errors import UserError
    from leaderboard.aggregate import views_of

    pages = 0
    by_suite: dict[str, list[CellResult]] = defaultdict(list)
    for c in store.cells():
        by_suite[c.suite].append(c)
    for name, entry in board["suites"].items():
        views = views_of(by_suite.get(name, []))
        for view_name, view in entry["views"].items():
            targets = view["models"] + view["defended"] + view["external"]
            rows = _rows_of(targets, views.get(view_name, []))
            for model, cells in rows.items():
                info = view["model_info"].get(model, {})
                try:
                    tasks = get_tasks(info.get("dataset") or "nyuv2")
                except UserError:
                    continue
                tasks = [t for t in tasks if t.name in (info.get("tasks") or [t.name for t in tasks])]
                page = _render_target(store, env, out, common, entry, view, model, info, tasks, cells)
                if page:
                    pages += 1
    return pages


def _render_target(store, env, out: Path, common: dict, entry: dict, view: dict, model: str, info: dict, tasks,
                   cells: list[CellResult]) -> str | None:
    clean_key = cells[0].config["inspection"]["clean"]
    clean_blobs = [decode(b) for b in store.inspection(clean_key)]
    if not clean_blobs:
        return None
    folder = Path("inspect") / view["page"] / slug(model)
    adversarial = {c.key: [decode(b)[0] for b in store.inspection(c.key)] for c in cells}
    seg = next((t for t in tasks if t.kind == "segmentation"), None)
    palette = _palette(seg.channels if seg else 1)
    names = _class_names(info.get("dataset", "nyuv2"), seg.channels if seg else 0)
    images = []
    for i, (clean, meta) in enumerate(clean_blobs):
        mine = [adversarial[c.key][i] for c in cells if i < len(adversarial[c.key])]
        scales = _scales(tasks, clean, mine, palette)
        files = {"image": _png(np.transpose(clean["image"], (1, 2, 0)), out / folder / f"{i}-clean.png")}
        for t in tasks:
            files[f"gt:{t.name}"] = _png(_draw(t, clean[f"gt:{t.name}"], scales[t.name], truth=True),
                                         out / folder / f"{i}-gt-{slug(t.name)}.png")
            files[f"pred:{t.name}"] = _png(_draw(t, clean[f"pred:{t.name}"], scales[t.name]),
                                           out / folder / f"{i}-clean-{slug(t.name)}.png")
        bars = {t.name: {"file": _colour_bar(scales[t.name], out / folder / f"{i}-bar-{slug(t.name)}.png"),
                         "low": scales[t.name]["low"], "high": scales[t.name]["high"]}
                for t in tasks if "cmap" in scales[t.name]}
        present: set[int] = set()
        if seg is not None:
            present = {int(k) for k in np.unique(np.concatenate(
                [clean[f"gt:{seg.name}"].ravel(), clean[f"pred:{seg.name}"].ravel()])) if k != IGNORE_INDEX}
        rows = []
        for c in cells:
            if i >= len(adversarial[c.key]):
                continue
            adv = adversarial[c.key][i]
            stem = f"{i}-{c.key[:16]}"
            picture = np.clip(clean["image"].astype(np.int16) + adv["delta"], 0, 255).astype(np.uint8)
            # the eps-ball onto the grey scale: 128 is no change, 0 and 255 are -eps and +eps
            amplify = 127.5 / max(c.eps, 1e-9)
            delta = np.clip(128 + adv["delta"].astype(np.float32) * amplify, 0, 255).round().astype(np.uint8)
            row = {"attack": c.attack, "eps": c.eps, "cell_arp": c.arp, "amplify": amplify,
                   "adv": _png(np.transpose(picture, (1, 2, 0)), out / folder / f"{stem}-adv.png"),
                   "delta": _png(np.transpose(delta, (1, 2, 0)), out / folder / f"{stem}-delta.png"),
                   "preds": {t.name: _png(_draw(t, adv[f"pred:{t.name}"], scales[t.name]),
                                          out / folder / f"{stem}-{slug(t.name)}.png") for t in tasks}}
            row["arp"], row["drops"] = _drops(meta.get("metrics") or {}, _image_metrics(c, i), tasks)
            rows.append(row)
        legend = [{"id": k, "name": names[k] if k < len(names) else f"class {k}",
                   "rgb": "#" + "".join(f"{int(v):02x}" for v in palette[k])} for k in sorted(present)]
        images.append({"index": i, "id": meta.get("id", str(i)), "files": files, "bars": bars, "rows": rows,
                       "legend": legend, "clean_metrics": meta.get("metrics") or {}})
    name = inspection_page(view["page"], model)
    html = env.get_template("inspect.html.j2").render(
        **common, entry=entry, suite=view, model=model, info=info, tasks=tasks, images=images,
        folder=folder.as_posix(), zoom=ZOOM, page="inspect")
    (out / name).write_text(html)
    return name
