"""Plots of the leaderboard: matplotlib figures saved as SVG (no network, no JS), and the layout
tree as a small hand-written SVG."""

from __future__ import annotations

import functools
from html import escape
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["arp_curves", "budget_curves", "defense_tradeoff", "layout_tree_svg", "ranking_chart", "transfer_heatmap"]

#: our style, applied per figure (never to the global rcParams of the process)
STYLE = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "figure.constrained_layout.use": True,
         "svg.fonttype": "none", "svg.hashsalt": "mtlbench"}


def _styled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="svg", metadata={"Date": None})  # layout="constrained" sized it already
    plt.close(fig)
    return path


@_styled
def ranking_chart(ranking: list[dict], title: str, path: Path) -> Path:
    """Mean ARP per attack with its bootstrap 95% CI, strongest on top."""
    rows = ranking[:20][::-1]
    fig, ax = plt.subplots(figsize=(6.4, 0.28 * len(rows) + 0.9))
    y = range(len(rows))
    means = [r["mean_arp"] for r in rows]
    err = [[r["mean_arp"] - r["ci_low"] for r in rows], [r["ci_high"] - r["mean_arp"] for r in rows]]
    ax.barh(list(y), means, xerr=err, color="#4c72b0", ecolor="#1d2430", capsize=2, height=0.65)
    ax.set_yticks(list(y), [r["attack"] for r in rows])
    ax.set_xlabel("mean ARP over models (%), 95% bootstrap CI")
    ax.set_title(title, loc="left")
    return _save(fig, path)


@_styled
def arp_curves(series: dict[str, list[tuple[float, float]]], title: str, path: Path) -> Path:
    """ARP vs eps, one line per attack (paper Fig. 2 style)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for name, points in series.items():
        if points:
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, label=name)
    ax.set_xlabel("eps (0-255)")
    ax.set_ylabel("ARP (%)")
    ax.set_title(title, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, ncol=2, loc="upper left")
    return _save(fig, path)


@_styled
def budget_curves(series: dict[str, list[dict]], title: str, path: Path) -> dict[str, list[tuple[float, float]]]:
    """Mean ARP against counted forward+backward passes per image, one line per attack (a single
    marker for an attack without a step budget). Returns the (passes, ARP) points drawn, as read
    back from the figure's lines."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    drawn = {}
    for name, points in series.items():
        pts = [(p["passes_per_image"], p["mean_arp"]) for p in points if p["passes_per_image"] is not None]
        if not pts:
            continue
        xs, ys = zip(*sorted(pts), strict=True)
        (line,) = ax.plot(xs, ys, marker="o", markersize=3.5, linewidth=1.4, label=name)
        drawn[name] = list(zip(map(float, line.get_xdata()), map(float, line.get_ydata()), strict=True))
    ax.set_xscale("log")
    ax.set_xlabel("forward + backward passes per image (counted, log scale)")
    ax.set_ylabel("mean ARP over models (%)")
    ax.set_title(title, loc="left")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, frameon=False, ncol=2, loc="upper left")
    _save(fig, path)
    return drawn


@_styled
def transfer_heatmap(matrix: dict[str, dict[str, float]], rows: list[str], cols: list[str], title: str,
                     path: Path) -> Path:
    """Mean ARP of each task (columns) under each SINGLE-X attack (rows)."""
    data = [[matrix.get(r, {}).get(c, float("nan")) for c in cols] for r in rows]
    fig, ax = plt.subplots(figsize=(1.1 * len(cols) + 2.6, 0.5 * len(rows) + 1.2))
    im = ax.imshow(data, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for i, row in enumerate(data):
        for j, v in enumerate(row):
            if v == v:
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", color="white" if v < max(map(max, data)) * 0.6
                        else "black", fontsize=8)
    fig.colorbar(im, ax=ax, label="mean ARP of the task (%)")
    ax.set_title(title, loc="left")
    return _save(fig, path)


def layout_tree_svg(layout_sets: list[list[list[int]]], tasks: list[str]) -> str:
    """The branched model as a tree: one column per block, one box per task set, an edge from each
    copy to the copy of the previous block it reads from, the task heads on the right."""
    box_w, box_h, gap_x, gap_y, pad = 86, 24, 36, 10, 8
    rows = max(len(b) for b in layout_sets) if layout_sets else 1
    height = rows * (box_h + gap_y) + pad * 2 + 16
    width = (len(layout_sets) + 1) * (box_w + gap_x) + pad * 2
    pos: dict[tuple[int, frozenset], tuple[float, float]] = {}
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="layout" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}" role="img" aria-label="layout tree">']
    for i, block in enumerate(layout_sets):
        x = pad + i * (box_w + gap_x)
        parts.append(f'<text x="{x + box_w / 2}" y="12" text-anchor="middle" class="lbl">block {i}</text>')
        offset = (rows - len(block)) * (box_h + gap_y) / 2
        for j, s in enumerate(block):
            y = 18 + pad + offset + j * (box_h + gap_y)
            key = frozenset(s)
            pos[(i, key)] = (x, y)
            if i > 0:
                parent = next(p for p in layout_sets[i - 1] if key <= frozenset(p))
                px, py = pos[(i - 1, frozenset(parent))]
                parts.append(f'<line x1="{px + box_w}" y1="{py + box_h / 2}" x2="{x}" y2="{y + box_h / 2}" '
                             'class="edge"/>')
            label = escape("{" + ",".join(str(t) for t in sorted(s)) + "}")
            parts.append(f'<rect x="{x}" y="{y}" width="{box_w}" height="{box_h}" rx="4" class="blk"/>'
                         f'<text x="{x + box_w / 2}" y="{y + 16}" text-anchor="middle">{label}</text>')
    if layout_sets:
        last = len(layout_sets) - 1
        hx = pad + len(layout_sets) * (box_w + gap_x)
        for t, name in enumerate(tasks):
            s = next(frozenset(x) for x in layout_sets[last] if t in x)
            px, py = pos[(last, s)]
            y = 18 + pad + t * (height - 40) / max(1, len(tasks))
            parts.append(f'<line x1="{px + box_w}" y1="{py + box_h / 2}" x2="{hx}" y2="{y + 8}" class="edge"/>'
                         f'<text x="{hx + 4}" y="{y + 12}" class="head">{t}: {escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


@_styled
def defense_tradeoff(rows: list[dict], title: str, path: Path) -> Path:
    """Each defense's clean cost (x) against the ARP of the strongest attack on it (y)."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for row in rows:
        if row["clean_cost"] is None or row["robust_arp"] is None:
            continue
        ax.scatter([row["clean_cost"]], [row["robust_arp"]], s=28)
        ax.annotate(f"{row['defense']} ({row['strongest']})", (row["clean_cost"], row["robust_arp"]), fontsize=7,
                    xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("clean cost: relative clean-metric drop (%)")
    ax.set_ylabel("ARP of the strongest attack (%)")
    ax.set_title(f"{title}: lower left is better", fontsize=9)
    return _save(fig, path)
