"""Plots of the leaderboard: matplotlib figures saved as SVG (no network, no JS), and the layout
tree as a small hand-written SVG."""

from __future__ import annotations

import functools
from html import escape
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

__all__ = ["arp_curves", "attack_style", "budget_curves", "defense_tradeoff", "layout_tree_svg", "ranking_chart",
           "transfer_heatmap"]

#: our style, applied per figure (never to the global rcParams of the process)
STYLE = {"font.size": 9, "axes.spines.top": False, "axes.spines.right": False, "figure.constrained_layout.use": True,
         "svg.fonttype": "none", "svg.hashsalt": "mtlbench"}


def _styled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


#: one colour per objective and one marker and line style per optimizer, the same on every page
#: and in every render (an attack's look depends on its name only)
OBJECTIVE_COLOURS = {"gb-mta": "#c0392b", "total": "#2e6fb7", "signtotal": "#2a9d5b", "single-segment": "#8e44ad",
                     "single-normal": "#8c6d31", "single-depth": "#e67e22", "single-keypoint": "#17a2b8",
                     "single-edge": "#6c757d"}
OPTIMIZER_STYLES = {"fgsm": ("s", ":"), "pgd": ("o", "-"), "mim": ("^", "--"), "apgd": ("D", "-."),
                    "autosaga": ("v", (0, (3, 1, 1, 1))), "square": ("x", (0, (1, 2))), "autoattack": ("*", "-")}
_SPARE = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666"]


def attack_style(name: str) -> dict:
    """Colour, marker and line style of an attack (``optimizer:objective [configuration]``)."""
    import zlib

    base = name.partition(" [")[0]
    optimizer, _, objective = base.partition(":")
    colour = OBJECTIVE_COLOURS.get(objective) or _SPARE[zlib.crc32(objective.encode()) % len(_SPARE)]
    marker, line = OPTIMIZER_STYLES.get(optimizer, ("P", "-"))
    return {"color": colour, "marker": marker, "linestyle": line}


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
            ax.plot(xs, ys, markersize=3.5, linewidth=1.4, label=name, **attack_style(name))
    ax.set_xlabel("eps (0-255)")
    ax.set_ylabel("ARP (%)")
    ax.set_title(title, loc="left")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, frameon=False, ncol=2, loc="upper left")
    return _save(fig, path)


@_styled
def budget_curves(series: dict[str, list[dict]], title: str, path: Path) -> dict[str, list[tuple[float, float]]]:
    """Mean ARP against counted forward+backward passes per image, one line per attack (a single
    marker for an attack without a step budget), with each point's 95% interval as an error bar.
    Points at the same pass count are nudged apart sideways so that none hides another. Returns
    the (passes, ARP) points drawn, as read back from the figure's lines (their true pass counts)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    drawn = {}
    taken: dict[float, int] = {}
    names = [n for n, pts in series.items() if any(p["passes_per_image"] is not None for p in pts)]
    for name in names:
        pts = sorted((p for p in series[name] if p["passes_per_image"] is not None),
                     key=lambda p: p["passes_per_image"])
        xs = [p["passes_per_image"] for p in pts]
        ys = [p["mean_arp"] for p in pts]
        # a pass count another attack already has a point at: drawn 4% to the side per earlier point
        shown = []
        for x in xs:
            k = taken.get(x, 0)
            taken[x] = k + 1
            shown.append(x * (1.04 ** k))
        style = attack_style(name)
        low = [p["mean_arp"] - p["ci_low"] if p.get("ci_low") is not None else 0 for p in pts]
        high = [p["ci_high"] - p["mean_arp"] if p.get("ci_high") is not None else 0 for p in pts]
        ax.errorbar(shown, ys, yerr=[low, high], fmt="none", ecolor=style["color"], alpha=0.45, capsize=2,
                    linewidth=0.9)
        (line,) = ax.plot(shown, ys, markersize=4.5, linewidth=1.4, label=name, **style)
        drawn[name] = list(zip(map(float, xs), map(float, line.get_ydata()), strict=True))
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
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
    """Each defense's clean cost (x) against its best-known ARP (y: the worst case per image over
    every attack, the number the defenses table sorts by; the strongest single attack's ARP where
    no best known was scored), labelled by a numbered legend so that close points never overlap."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    shown = 0
    for row in rows:
        best = (row.get("best_known") or {}).get("arp")
        y = best if best is not None else row["robust_arp"]
        if row["clean_cost"] is None or y is None:
            continue
        shown += 1
        marker = "*" if row["defense"] == "none" else "o"
        ax.scatter([row["clean_cost"]], [y], s=60 if marker == "*" else 30, marker=marker, zorder=3,
                   label=f"{shown}: {row['defense']}" + ("" if best is not None else " (strongest single attack)"))
        ax.annotate(str(shown), (row["clean_cost"], y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("clean cost: relative clean-metric drop (%)")
    ax.set_ylabel("best-known ARP (%)")
    ax.set_title(f"{title}: lower left is better", fontsize=9)
    ax.grid(alpha=0.3)
    if shown:
        ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)
