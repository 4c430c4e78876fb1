"""Render the static leaderboard site from a results store.

``render_leaderboard("results.db", "site/")`` writes::

    site/index.html                 rankings per suite and eps
    site/suite-<suite>.html         models x attacks (the paper's table shape), per-task on demand
    site/model-<suite>-<model>.html clean metrics, ARP vs eps, the layout tree
    site/transfer-<suite>.html      transferability (Eq. 11): heatmap, per model, by sharing level
    site/leaderboard.json           every number of the pages
    site/plots/*.svg, site/static/  matplotlib SVGs, CSS and the table-sorting JS

Templates are autoescaped; nothing is loaded from the network, so the site works from
``file://`` and from any static host.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup

from benchmark.errors import UserError
from benchmark.runner.store import ResultsStore
from leaderboard import plots
from leaderboard.aggregate import DEFAULT_EPS, build_board, eps_key
from leaderboard.names import slug
from leaderboard.reproduction import reproduction

__all__ = ["render_leaderboard", "slug"]

STATIC = Path(__file__).parent / "static"
CURVES_PER_MODEL = 8


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def _num(value: Any) -> str:
    """Sort key of a table cell (data-v attribute)."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return repr(float(value)) if isinstance(value, int | float) else str(value)


def _bytes(value: Any) -> str:
    if not value:
        return "–"
    return f"{value / 2**20:.0f} MiB"


def _params(value: Any) -> str:
    """Parameters in millions: 3 decimals below 10M (tiny members differ in the third), else 2."""
    if not value:
        return "–"
    m = value / 1e6
    return f"{m:.2f}" if m >= 10 else f"{m:.3f}"


def _breakable(name: str) -> Markup:
    """An attack name for a narrow column header: it may wrap after ':' and never inside a
    hyphenated word ("gb-mta", "single-depth" keep their hyphen: a non-breaking one)."""
    from markupsafe import escape

    return Markup(str(escape(name)).replace("-", "\u2011").replace(":", ":<wbr>"))


def _env() -> Environment:
    env = Environment(loader=PackageLoader("leaderboard", "templates"), autoescape=select_autoescape(["html", "j2"]),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=_fmt, num=_num, mib=_bytes, slug=slug, mparams=_params, breakable=_breakable)
    from leaderboard.inspection import inspection_page

    env.globals["inspect_page"] = inspection_page
    return env


def render_leaderboard(results: str | Path, out_dir: str | Path, *, default_eps: float = DEFAULT_EPS,
                       plots_enabled: bool = True, bundles: str | Path | None = None, device: str = "cpu",
                       suites: list[str] | None = None, console=None, of_record: bool = False) -> Path:
    """Render the site for ``results`` (a results database) into ``out_dir``; returns index.html.
    ``bundles``: a folder of result bundles, each re-scored here (:func:`~benchmark.runner.verify.verify_bundle`):
    the cells of a verified one join the ranking (with their re-scored numbers), a rejected one is
    listed as self-reported. A bundle never overrides the host's results: its attack joins under a
    name of its own where the host (or another bundle) has an attack of that name, and two bundles
    with cells of the same key are both refused, each naming the other. ``suites``: manifests of the
    suites that are not standard ones which bundles may name."""
    if bundles is None:
        with ResultsStore(results, readonly=True) as store:
            board = build_board(store, default_eps=default_eps)
            board["reproduction"] = reproduction(board, store.cells())
        board["of_record"] = of_record
        return render_board(board, out_dir, plots_enabled=plots_enabled, inspection=results)
    import tempfile

    from benchmark.runner.bundle import find_bundles
    from benchmark.runner.verify import verify_bundle

    found = find_bundles(bundles)
    verdicts = []
    for i, p in enumerate(found):
        if console is not None:
            console.print(f"bundle {i + 1} of {len(found)}: verifying {p.name}", highlight=False, markup=False)
        verdicts.append(verify_bundle(p, suite=list(suites or []), device=device, console=console))
    _refuse_collisions(verdicts)
    with tempfile.TemporaryDirectory(prefix="mtlbench-board-") as tmp:
        merged = Path(tmp) / Path(results).name
        with ResultsStore(merged) as store:
            host: set[tuple[str, str]] = set()  # (suite, attack) of the host's results
            host_models: set[tuple[str, str]] = set()
            if Path(results).exists():
                with ResultsStore(results, readonly=True) as source:
                    for cell in source.cells():
                        cell.inspection = source.inspection(cell.key)
                        store.put(cell)
                        host.add((cell.suite, cell.attack))
                    for key in {(c.config.get("inspection") or {}).get("clean") for c in source.cells()} - {None}:
                        store.put_inspection(key, source.inspection(key))
                    for row in source.models():
                        host_models.add((row["suite"], row["model"]))
                        store.put_model(row.pop("suite"), row.pop("model"), row.pop("model_revision"), row)
            taken = set(host)
            for v in verdicts:
                if not v.verified:
                    continue
                v.labels = {}
                for model, m in v.models.items():
                    if (v.manifest["suite"]["name"], model) not in host_models:  # the host's description stays
                        store.put_model(v.manifest["suite"]["name"], model, m["revision"], m["info"])
                for cell in v.cells:
                    label = (cell.attack if (cell.suite, cell.attack) not in taken
                             else f"{cell.attack} (bundle {v.name})")
                    v.labels[cell.attack] = label
                    joined = replace(cell, attack=label, key=f"bundle:{v.name}:{cell.key}",
                                     config={**cell.config, "source": f"bundle {v.name}"})
                    joined.inspection = getattr(cell, "inspection", None)  # its images, re-scored here
                    store.put(joined)
                for key, blobs in v.clean_inspection.items():
                    if not store.inspection(key):
                        store.put_inspection(key, blobs)
                taken |= {(v.manifest["suite"]["name"], label) for label in v.labels.values()}
            board = build_board(store, default_eps=default_eps)
            board["reproduction"] = reproduction(board, store.cells())
        board["bundles"] = [_bundle_row(v) for v in verdicts]
        board["of_record"] = of_record
        _label_bundles(board, verdicts)
        # rendered while the merged store exists: the inspection pages read the host's images and
        # the verified bundles' (re-scored here) from it
        return render_board(board, out_dir, plots_enabled=plots_enabled, inspection=merged)


def _label_bundles(board: dict[str, Any], verdicts: list) -> None:
    """Each view's verified attacks and what of them is self-reported."""
    for entry in board["suites"].values():
        mine = [v for v in verdicts if v.verified and v.manifest["suite"]["name"] == entry["name"]]
        for suite in entry["views"].values():
            suite["verified_attacks"] = {v.labels[a]: {"bundle": v.name, "level": v.level(a)}
                                         for v in mine for a in v.manifest["attack"]["names"]}
            # time, memory and (unless re-counted) passes of a bundle are its own claims
            suite["self_reported"] = {v.labels[a]: [k for k in v.self_reported
                                                    if k != "passes per image" or a not in v.recounted]
                                      for v in mine for a in v.manifest["attack"]["names"]}


def render_records(records: str | Path, out_dir: str | Path, *, suites: list[str] | None = None,
                   bundles: str | Path | None = None, device: str = "cpu", plots_enabled: bool = True,
                   console=None) -> Path:
    """The site of record: every committed entry of ``records`` (of ``suites``, default every
    suite with a record) as the results, and verified ``bundles`` beside them; returns index.html.
    An attack of record is marked "recomputed" (CI recomputes it from its code); a bundle's attack
    "re-scored" or "recounted"."""
    import tempfile

    from benchmark.runner.records import records_store

    with tempfile.TemporaryDirectory(prefix="mtlbench-record-") as tmp:
        db = Path(tmp) / "records.db"
        records_store(Path(records), db, suites).close()
        return render_leaderboard(db, out_dir, bundles=bundles, device=device, plots_enabled=plots_enabled,
                                  console=console, of_record=True)


def _refuse_collisions(verdicts: list) -> None:
    """Two verified bundles with cells of the same key (the same configuration) cannot both be
    believed: both are refused, each naming the other."""
    owner: dict[str, Any] = {}
    for v in verdicts:
        if not v.verified:
            continue
        for cell in v.cells:
            other = owner.setdefault(cell.key, v)
            if other is not v:
                for a, b in ((v, other), (other, v)):
                    a.reasons.append(f"its cell {cell.model} {cell.attack} eps {cell.eps:g} seed {cell.seed} has the "
                                     f"key of a cell of the bundle {b.name}: two bundles of the same experiment "
                                     "cannot both be ranked")
                    a.checked = 0


def _bundle_row(v) -> dict[str, Any]:
    """What the index page says about a bundle (a self-reported one with the numbers it claims)."""
    claimed: dict[str, list[float]] = {}
    for c in v.cells:
        if c.arp is not None:
            claimed.setdefault(f"{c.attack} @ eps {c.eps:g}", []).append(c.arp)
    return {"name": v.name, "suite": v.manifest.get("suite", {}).get("name"),
            "attacks": v.manifest.get("attack", {}).get("names", []), "verified": v.verified,
            "cells": len(v.cells), "checked": v.checked, "reason": "" if v.verified else (v.reasons or ["no cells"])[0],
            "self_reported": v.self_reported if v.verified else [],
            "levels": {a: v.level(a) for a in v.manifest.get("attack", {}).get("names", [])} if v.verified else {},
            "torch": v.manifest.get("torch"),
            "problems": len(v.reasons), "device": v.manifest.get("device"), "created": v.manifest.get("created"),
            "claimed": {k: sum(x) / len(x) for k, x in sorted(claimed.items())}}


def view_page(suite: str, view: str, headline: bool) -> str:
    """The file-name stem of a view's pages: the suite's slug for its headline view, with the
    view's slug after ``--`` for the others (``suite-<stem>.html``, ``model-<stem>-<model>.html``)."""
    return slug(suite) if headline else f"{slug(suite)}--{slug(view)}"


def render_board(board: dict[str, Any], out_dir: str | Path, *, plots_enabled: bool = True,
                 inspection: str | Path | None = None) -> Path:
    """The site of ``board`` in ``out_dir``; ``inspection``: the results database whose cells kept
    images for the inspection pages."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"leaderboard output {out} is a file; give a folder (created if missing)")
    try:
        (out / "plots").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"leaderboard output {out}: cannot create it ({exc.strerror})") from None
    shutil.copytree(STATIC, out / "static", dirs_exist_ok=True)
    board = _finite(board)
    for entry in board["suites"].values():
        for name, view in entry["views"].items():
            view["page"] = view_page(entry["name"], name, view["headline"])
    (out / "leaderboard.json").write_text(json.dumps(board, sort_keys=True, allow_nan=False, separators=(",", ":")))
    env = _env()
    common = {"board": board, "provenance": board["provenance"], "suites": board["suites"]}
    figures: dict[str, dict[str, Any]] = {}
    jobs: list[tuple] = []
    for name, entry in board["suites"].items():
        for view_name, view in entry["views"].items():
            rep = board.get("reproduction", {}).get(name, {}).get(view_name)
            fig, view_jobs = _suite_plots(view, out, rep) if plots_enabled else ({}, [])
            figures.setdefault(name, {})[view_name] = fig
            jobs += view_jobs
    _draw_all(jobs)
    _write(out / "index.html", env.get_template("index.html.j2").render(**common, figures=figures, page="index"))
    for name, entry in board["suites"].items():
        for view_name, view in entry["views"].items():
            _render_view(env, out, common, entry, view, figures[name][view_name],
                         board.get("reproduction", {}).get(name, {}).get(view_name))
    if inspection is not None and Path(inspection).exists():
        from leaderboard.inspection import render_inspection

        with ResultsStore(inspection, readonly=True) as store:
            render_inspection(store, board, out, env, common)
    return out / "index.html"


def _render_view(env: Environment, out: Path, common: dict, entry: dict, suite: dict, figures: dict,
                 rep: dict | None) -> None:
    """The pages of one view of a suite (``suite``: the view's numbers)."""
    page = suite["page"]
    ctx = {**common, "suite": suite, "entry": entry, "figures": figures, "rep": rep}
    _write(out / f"suite-{page}.html", env.get_template("suite.html.j2").render(**ctx, page="suite"))
    _write(out / f"transfer-{page}.html", env.get_template("transfer.html.j2").render(**ctx, page="transfer"))
    if rep:
        _write(out / f"reproduction-{page}.html", env.get_template("reproduction.html.j2").render(**ctx,
                                                                                                  page="reproduction"))
    if suite["defended"]:
        _write(out / f"defenses-{page}.html", env.get_template("defenses.html.j2").render(**ctx, page="defenses"))
    if suite["crossmodel"]:
        _write(out / f"crossmodel-{page}.html", env.get_template("crossmodel.html.j2").render(**ctx,
                                                                                              page="crossmodel"))
    for model in suite["models"]:
        info = suite["model_info"].get(model, {})
        # the tree labels each task by its index in the model's own task order (config.json's)
        tasks = info.get("tasks") or suite["tasks"]
        tree = Markup(plots.layout_tree_svg(info["layout_sets"], tasks)) if info.get("layout_sets") else ""
        curve = figures.get("curves", {}).get(model)
        _write(out / f"model-{page}-{slug(model)}.html",
               env.get_template("model.html.j2").render(**ctx, model=model, info=info, tree=tree, curve=curve,
                                                         model_tasks=tasks, page="model"))


def _suite_plots(suite: dict[str, Any], out: Path,
                 board_reproduction: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[tuple]]:
    """File names of a view's figures (``suite``: the view's numbers), and the jobs that draw them."""
    sid = suite["page"]
    title = suite["name"] if suite["headline"] else f"{suite['name']} [{suite['view']}]"
    figs: dict[str, Any] = {"curves": {}, "heatmaps": {}, "defenses": {}}
    jobs: list[tuple] = []
    default = suite["default_eps"]
    block = suite["by_eps"].get(eps_key(default)) if default is not None else None
    if block and block["ranking"]:
        figs["ranking"] = f"ranking-{sid}.svg"
        jobs.append(("ranking_chart", block["ranking"], f"{title}, eps={default:g}",
                     out / "plots" / figs["ranking"]))
    ranked = [r["attack"] for r in (block["ranking"] if block else [])]
    top = ranked[:CURVES_PER_MODEL]
    which = (f"the {len(top)} strongest of {len(ranked)} ranked attacks" if len(top) < len(ranked)
             else f"the {len(top)} ranked attacks")
    if len(suite["eps"]) > 1 and top:
        for model in suite["models"]:
            series = {a: [(float(k), b["table"][model][a]["arp"]) for k, b in suite["by_eps"].items()
                          if a in b["table"].get(model, {}) and b["table"][model][a]["arp"] is not None] for a in top}
            figs["curves"][model] = f"curves-{sid}-{slug(model)}.svg"
            jobs.append(("arp_curves", series, f"{model}: ARP vs eps ({which})",
                         out / "plots" / figs["curves"][model]))
    figs["curve_attacks"] = which
    for f in (board_reproduction or {}).get("findings", []):
        if f["id"].startswith("arp-vs-eps") and f.get("curves") and f["status"] != "not run":
            figs.setdefault("reproduction", {})[f["id"]] = f"{f['id']}-{sid}.svg"
            jobs.append(("arp_curves", {a: [tuple(p) for p in pts] for a, pts in f["curves"].items()},
                         f"{title}: mean ARP over models vs eps (paper Figures 2/3)",
                         out / "plots" / figs["reproduction"][f["id"]]))
    for key, b in suite["by_eps"].items():
        if b.get("budget") and b["budget"]["series"]:
            figs.setdefault("budget", {})[key] = f"budget-{sid}-{slug(key)}.svg"
            jobs.append(("budget_curves", b["budget"]["series"],
                         f"{title}, eps={key}: ARP at equal compute ({len(b['budget']['models'])} models)",
                         out / "plots" / figs["budget"][key]))
        if b.get("defenses"):
            figs["defenses"][key] = f"defenses-{sid}-{slug(key)}.svg"
            jobs.append(("defense_tradeoff", b["defenses"]["rows"], f"{title}, eps={key}",
                         out / "plots" / figs["defenses"][key]))
        t = b["transfer"]
        if t["attacks"]:
            figs["heatmaps"][key] = f"transfer-{sid}-{slug(key)}.svg"
            jobs.append(("transfer_heatmap", t["matrix"], t["attacks"], suite["tasks"],
                         f"{title}, eps={key}: ARP of each task", out / "plots" / figs["heatmaps"][key]))
    return figs, jobs


def _draw(job: tuple) -> None:
    getattr(plots, job[0])(*job[1:])


def _draw_all(jobs: list[tuple]) -> None:
    """Draw the figures, in parallel processes where there are several cores and enough figures."""
    workers = min(len(jobs) // 4, os.cpu_count() or 1)
    if workers < 2 or "fork" not in multiprocessing.get_all_start_methods():
        for job in jobs:
            _draw(job)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork")) as pool:
        list(pool.map(_draw, jobs, chunksize=max(1, len(jobs) // (4 * workers))))


def _write(path: Path, html: str) -> None:
    path.write_text(html, encoding="utf-8")


def _finite(obj: Any) -> Any:
    """The board with NaN/inf replaced by None (JSON has no NaN; pages show them as '–')."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {(eps_key(k) if isinstance(k, float) else k): _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
