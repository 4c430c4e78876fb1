"""From a results store to the leaderboard's numbers (a JSON-able dict, ``leaderboard.json``).

Everything the pages show is computed here, once; templates only format it.

* A (model, attack, eps) entry averages the valid cells over seeds. If any of its cells is
  invalid or failed, the entry carries that status and its reason and has no ARP.
* Rankings per suite and eps: attacks whose entries are valid on every model of the suite, by
  mean ARP over models with a percentile-bootstrap 95% confidence interval over models; the win
  count is the number of models on which the attack has the highest ARP (ties count for each);
  attacks with an invalid or failed entry are listed apart, never ranked.
* Transferability (paper Eq. 11) of each SINGLE-X attack: mean over the other tasks Y of
  ARP-Y / ARP-X, per model, and averaged by sharing level (leading blocks shared by all tasks).
* ARP at equal compute: where a profile ran several step budgets, each attack's mean ARP (over
  the models that have every budget point of every attack) against its counted forward+backward
  passes per image, and the ranking at a chosen budget (each attack at its largest point within
  it). Cells of the extra budgets enter only these curves, never the tables of the protocol.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from statistics import mean
from typing import Any

from benchmark.defenses.checks import check_rows, evaluation_flags, target_checks
from benchmark.enums import Status
from benchmark.metric_base import TaskMetrics
from benchmark.runner.store import CellResult, ResultsStore
from benchmark.scoring import bootstrap_ci, stratified_bootstrap_ci, transferability
from benchmark.version import __version__
from leaderboard.crossmodel import model_transfer

__all__ = ["DEFAULT_EPS", "build_board", "choose_eps", "eps_key", "headline_view", "views_of"]

DEFAULT_EPS = 8.0
#: fewer models than this get an interval over their images, not a bootstrap over the models
MIN_MODELS_FOR_CI = 5


def choose_eps(available: list[float], wanted: float = DEFAULT_EPS) -> float:
    """``wanted`` if it was run, else the closest eps that was."""
    return min(available, key=lambda e: (abs(e - wanted), e))


def _entry(cells: list[CellResult]) -> dict[str, Any]:
    bad = [c for c in cells if c.status != Status.VALID]
    if bad:
        worst = next((c for c in bad if c.status == Status.FAILED), bad[0])
        return {"status": worst.status, "reason": worst.reason, "arp": None, "task_arp": {}, "seeds": len(cells)}
    task_names = list(cells[0].task_arp)
    per_image = [p for p in (c.passes_per_image for c in cells) if p is not None]
    return {
        "status": "valid", "reason": "", "seeds": len(cells), "image_ci": _image_ci(cells[0].per_image.get("score")),
        "arp": mean(c.arp for c in cells),
        "task_arp": {t: mean(c.task_arp[t] for c in cells) for t in task_names},
        "adversarial": cells[0].adversarial,
        "time_per_image_s": mean(c.time_per_image_s for c in cells),
        "passes_per_image": mean(per_image) if per_image else None,
        "forward_passes": cells[0].forward_passes, "backward_passes": cells[0].backward_passes,
        "batches": cells[0].batches, "images": cells[0].images,
        "peak_memory_bytes": max((c.peak_memory_bytes or 0) for c in cells) or None,
        "peak_memory_kind": cells[0].peak_memory_kind,
        # per image, the mean over seeds of its score (for the ranks' bootstrap; not written out)
        "_scores": _seed_mean_scores(cells),
        # behind a detector: the share of adversarial images it rejected and the ARP as if it rejected none
        **({"detection": {"rate": mean(c.config["detection"]["rate"] for c in cells),
                          "plain_arp": mean(c.config["detection"]["plain_arp"] for c in cells)}}
           if all(c.config.get("detection") for c in cells) else {}),
    }


def _seed_mean_scores(cells: list[CellResult]) -> tuple | None:
    """Each image's score averaged over the cells' seeds (None unless every cell scored the same images)."""
    ids = cells[0].per_image.get("ids")
    scores = [c.per_image.get("score") for c in cells]
    if not ids or any(not s or len(s) != len(ids) or c.per_image.get("ids") != ids for s, c in zip(scores, cells,
                                                                                                    strict=True)):
        return None
    return tuple(sum(float(v) if v is not None else math.nan for v in col) / len(col) for col in zip(*scores,
                                                                                                   strict=True))


#: bootstrap resamples of the rank intervals and the probability of being first
RANK_RESAMPLES = 1000


def rank_stability(ranked: list[dict], entries: dict[tuple[str, str], dict], models: list[str], *,
                   resamples: int = RANK_RESAMPLES, seed: int = 0) -> None:
    """Add to each ranked attack its 95% rank interval, its probability of being first, and its
    optimality, in place. The bootstrap resamples the models and, within each, its images (every
    attack on the same draw, so the comparison is paired), as MTEB documents its rank stability;
    where an attack has no per-image scores, over the models only. Optimality (as AttackBench has
    it): on each model, the attack's ARP over the best-known one (the mean over images of the
    highest score any ranked attack reached on that image), averaged over the models: 1 means the
    strongest on every image."""
    import numpy as np

    if not ranked:
        return
    names = [r["attack"] for r in ranked]
    cube = [[entries[(m, a)].get("_scores") for m in models] for a in names]
    lengths = {len(s) for row in cube for s in row if s is not None}
    rng = np.random.default_rng(seed)
    if all(s is not None for row in cube for s in row) and len(lengths) == 1:
        scores = np.array(cube, dtype=np.float64)  # attack x model x image
        scores = np.where(np.isfinite(scores), scores, np.nan)
        best = np.nanmax(scores, axis=0)  # model x image
        n_models, n_images = scores.shape[1], scores.shape[2]
        ranks = np.empty((resamples, len(names)))
        for b in range(resamples):
            picked = rng.integers(0, n_models, n_models)
            images = rng.integers(0, n_images, (n_models, n_images))
            sample = np.take_along_axis(scores[:, picked, :], images[None, :, :], axis=2)
            means = np.nanmean(sample, axis=(1, 2))
            ranks[b] = (-means).argsort().argsort() + 1
        best_known = np.nanmean(best, axis=1)  # per model
        arps = np.array([[entries[(m, a)]["arp"] for m in models] for a in names])
        with np.errstate(divide="ignore", invalid="ignore"):
            optimality = np.nanmean(np.where(best_known > 0, arps / best_known, np.nan), axis=1)
        over = "models and images"
    else:
        arps = np.array([[entries[(m, a)]["arp"] for m in models] for a in names], dtype=np.float64)
        ranks = np.empty((resamples, len(names)))
        for b in range(resamples):
            picked = rng.integers(0, arps.shape[1], arps.shape[1])
            ranks[b] = (-arps[:, picked].mean(axis=1)).argsort().argsort() + 1
        best = arps.max(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            optimality = np.nanmean(np.where(best > 0, arps / best, np.nan), axis=1)
        over = "models"
    low, high = np.percentile(ranks, [2.5, 97.5], axis=0)
    for i, r in enumerate(ranked):
        r["rank_low"], r["rank_high"] = round(float(low[i])), round(float(high[i]))
        r["p_first"] = float((ranks[:, i] == 1).mean())
        r["optimality"] = float(optimality[i]) if np.isfinite(optimality[i]) else None
        r["rank_over"] = over


def _image_ci(scores: list | None) -> list[float] | None:
    """A percentile-bootstrap 95% interval of a cell's ARP over its images (the mean of the images'
    scores, their jackknife pseudo-values): the interval of one model's number, where an interval
    over models has a single model to resample."""
    values = [v for v in scores or [] if isinstance(v, int | float) and math.isfinite(v)]
    if len(values) < 2:
        return None
    _, low, high = bootstrap_ci(values, confidence=0.95, seed=0)
    return [low, high]


def _rankings(entries: dict[tuple[str, str], dict], models: list[str], attacks: list[str]) -> tuple[list, list, list]:
    """Ranked attacks (valid on every ranked model), the others, and the models left out of the
    ranking. A model on which no attack has a valid result (a degenerate member: its clean
    metrics make every ARP undefined) is left out with its reason, and the attacks are ranked over
    the other models; attacks that ran on none of the models (only on defended or external
    targets) are not listed. Wins count among ranked attacks."""
    present_models = [m for m in models if any((m, a) in entries for a in attacks)]
    left_out = []
    for m in present_models:
        mine = [entries[(m, a)] for a in attacks if (m, a) in entries]
        if mine and all(e["status"] != Status.VALID for e in mine) and len(present_models) > 1:
            left_out.append({"model": m, "reason": mine[0]["reason"] or mine[0]["status"]})
    gone = {x["model"] for x in left_out}
    models = [m for m in models if m not in gone]
    ranked, unranked = [], []
    for a in attacks:
        present = [entries[(m, a)] for m in models if (m, a) in entries]
        if not present:
            continue
        bad = [e for e in present if e["status"] != Status.VALID]
        if bad or len(present) < len(models):
            unranked.append({
                "attack": a, "models": len(present), "invalid": sum(e["status"] == Status.INVALID for e in bad),
                "failed": sum(e["status"] == Status.FAILED for e in bad), "missing": len(models) - len(present),
                # "partial": ran validly on some models only (by design, e.g. a defense's black-box attack)
                "kind": "bad" if bad else "partial",
                "reason": bad[0]["reason"] if bad else f"run on {len(present)} of {len(models)} models",
            })
    listed = {u["attack"] for u in unranked}
    eligible = [a for a in attacks if a not in listed and all((m, a) in entries for m in models)]
    best = {m: max(entries[(m, a)]["arp"] for a in eligible) for m in models} if eligible else {}
    for a in eligible:
        present = [entries[(m, a)] for m in models]
        values = [e["arp"] for e in present]
        m_arp, low, high = bootstrap_ci(values, confidence=0.95, seed=0)
        memory = [e["peak_memory_bytes"] for e in present if e["peak_memory_bytes"]]
        passes = [e["passes_per_image"] for e in present if e["passes_per_image"] is not None]
        ranked.append({
            "attack": a, "mean_arp": m_arp, "ci_low": low, "ci_high": high, "models": len(present),
            "wins": sum(1 for m, e in zip(models, present, strict=True) if e["arp"] >= best[m] - 1e-9),
            "time_per_image_s": mean(e["time_per_image_s"] for e in present),
            "passes_per_image": mean(passes) if passes else None,
            "peak_memory_bytes": max(memory) if memory else None,
            "peak_memory_kind": present[0]["peak_memory_kind"],
        })
    ranked.sort(key=lambda r: (-r["mean_arp"], r["attack"]))
    for i, r in enumerate(ranked, start=1):
        r["rank"] = i
    return ranked, unranked, left_out


def _transfer(entries, models: list[str], attacks: list[str], targets: dict[str, str], info: dict) -> dict[str, Any]:
    """Transferability of every SINGLE-X attack (Eq. 11) per model, the mean ARP-Y matrix
    (attacked task x evaluated task) and the mean transferability by sharing level."""
    per_model: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)  # attack -> model -> {target, T}
    matrix: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    singles = [(a, targets[a]) for a in attacks if targets.get(a)]
    for a, target in singles:
        for m in models:
            e = entries.get((m, a))
            if e is None or e["status"] != Status.VALID:
                continue
            t = transferability(e["task_arp"], target)
            per_model[a][m] = t
            for y, v in e["task_arp"].items():
                matrix[a][y].append(v)
    by_level: dict[str, dict[int, float]] = {}
    for a, values in per_model.items():
        groups: dict[int, list[float]] = defaultdict(list)
        for m, t in values.items():
            if math.isfinite(t):
                groups[info.get(m, {}).get("shared_blocks", -1)].append(t)
        by_level[a] = {level: mean(v) for level, v in sorted(groups.items())}
    return {
        "attacks": [a for a, _ in singles if a in per_model],
        "targets": {a: t for a, t in singles},
        "per_model": {a: dict(v) for a, v in per_model.items()},
        "matrix": {a: {y: mean(v) for y, v in row.items()} for a, row in matrix.items()},
        "by_level": by_level,
        "levels": sorted({lvl for v in by_level.values() for lvl in v}),
    }


def _mean_ci(values: list[float], one: list[float] | None) -> dict[str, Any]:
    """Mean and 95% interval of per-member numbers: over members, or (a single member) over its
    images (``one``: that member's interval over images), else no interval."""
    m, low, high = bootstrap_ci(values, confidence=0.95, seed=0)
    if len(values) == 1:
        low, high = one if one else (None, None)
    return {"arp": m, "ci_low": low, "ci_high": high, "n": len(values),
            "ci_over": "models" if len(values) > 1 else ("images" if one else "")}


def _defenses(entries: dict, defended: list[str], attacks: list[str], info: dict,
              worst: dict[str, dict] | None = None) -> dict[str, Any]:
    """The paper's Table 3 shape: rows = no defense and each defense, columns = attacks, cells =
    mean ARP over the members that have the defense (bootstrap 95% CI over members; over images
    for one member), with the strongest attack of each row; the worst case per image over every
    attack (the best known ARP, by which the defenses are sorted, most robust first) and which
    attacks supplied its images; and each defense's clean cost (its clean metrics' relative drop
    against the undefended member, ARP's formula) beside its robust ARP (strongest attack)."""
    worst = worst or {}
    from benchmark.scoring import arp as relative_drop
    from benchmark.tasks import get_tasks

    by_defense: dict[str, list[str]] = defaultdict(list)  # defense -> targets
    for t in defended:
        by_defense[info[t]["defense"]].append(t)
    rows = []
    for defense in ["none", *sorted(by_defense)]:
        targets = by_defense[defense] if defense != "none" else sorted(
            {info[t]["member"] for ts in by_defense.values() for t in ts})
        cells: dict[str, Any] = {}
        for a in attacks:
            present = [entries.get((t, a)) for t in targets]
            values = [e["arp"] for e in present if e and e["status"] == Status.VALID]
            bad = [e for e in present if e and e["status"] != Status.VALID]
            if not values or bad:
                cells[a] = {"arp": None, "n": len(values), "reason": bad[0]["reason"] if bad else "not run"}
                continue
            cells[a] = {**_mean_ci(values, present[0].get("image_ci") if len(values) == 1 else None), "reason": ""}
            found = [e["detection"] for e in present if e.get("detection")]
            if found and len(found) == len(present):  # a detector's: detection rate, and the plain ARP beside
                cells[a]["detection"] = {"rate": mean(f["rate"] for f in found),
                                         "plain_arp": mean(f["plain_arp"] for f in found)}
        ranked = [a for a in attacks if cells[a]["arp"] is not None]
        known = [worst[t] for t in targets if t in worst]
        best_known = None
        if known and len(known) == len(targets):
            supplied: dict[str, int] = defaultdict(int)
            for w in known:
                for attack, n in w["supplied"].items():
                    supplied[attack] += n
            best_known = {**_mean_ci([w["arp"] for w in known], known[0]["image_ci"] if len(known) == 1 else None),
                          "supplied": dict(sorted(supplied.items(), key=lambda kv: (-kv[1], kv[0]))),
                          "images": sum(w["images"] for w in known)}
        strongest = max(ranked, key=lambda a: cells[a]["arp"]) if ranked else None
        costs = []
        for t in targets if defense != "none" else []:
            clean_def, clean_base = info[t].get("clean"), info.get(info[t]["member"], {}).get("clean")
            if clean_def and clean_base:
                costs.append(relative_drop(clean_base, clean_def, get_tasks(info[t]["dataset"])))
        first = info[targets[0]] if targets and targets[0] in info else {}
        detectors = [info[t]["detector"] for t in targets if defense != "none" and info.get(t, {}).get("detector")]
        rows.append({
            "detector": {"fpr_eval": mean(d["fpr_eval"] for d in detectors), "fpr_asked": detectors[0]["fpr_asked"],
                         "calibration": detectors[0].get("calibration", "")} if detectors else None,
            "defense": defense, "targets": targets, "cells": cells, "strongest": strongest,
            "robust_arp": cells[strongest]["arp"] if strongest else None,
            "clean_cost": mean(costs) if costs else (0.0 if defense == "none" else None),
            "gradient": first.get("gradient", "exact") if defense != "none" else "exact",
            "randomised": first.get("randomised", False), "eot": first.get("eot", 1),
            "best_known": best_known,
        })
    # the reference row first, then the defenses from the most robust (lowest best-known ARP)
    rows[1:] = sorted(rows[1:], key=lambda r: (r["best_known"] is None, (r["best_known"] or {}).get("arp") or 0.0,
                                               r["defense"]))
    return {"rows": rows, "attacks": attacks}


def _worst_case(cells: list[CellResult], dataset: str | None) -> dict[str, Any] | None:
    """The worst case per image over every attack run on one target at one eps ("best known",
    as SEA and RobustBench keep it): each image taken from the cell (attack and seed) with its
    highest per-image score, and the ARP of that set scored exactly from the images' metric
    statistics (never an average of ARPs): the highest of that pick among every cell, among the
    white-box cells and each cell's own images. Its interval is the chosen scores' spread around
    the exact value. None when fewer than two attacks with statistics ran."""
    from benchmark.metric_base import decode_states
    from benchmark.scoring import arp, task_arp
    from benchmark.tasks import get_tasks

    usable = [c for c in cells if c.status == Status.VALID and c.per_image.get("state") and not _is_curve_point(c)]
    if dataset is None or len({c.attack for c in usable}) < 2:
        return None
    ids = usable[0].per_image.get("ids")
    usable = [c for c in usable if c.per_image.get("ids") == ids and c.clean == usable[0].clean]
    tasks = get_tasks(dataset, metrics=usable[0].config.get("metrics", "ours"))
    factories = {t.name: t.new_metric for t in tasks}
    usable.sort(key=lambda c: (c.attack, c.seed))  # before the states: states[k] is usable[k]'s
    try:
        states = [decode_states(c.per_image["state"], factories) for c in usable]
    except ValueError:
        return None
    clean = usable[0].clean

    def pick(among: list[int]) -> tuple[float, dict, dict, list] | None:
        """The images chosen by per-image score among the cells ``among``, scored exactly."""
        chosen = []
        for i in range(len(ids)):
            scores = {k: usable[k].per_image["score"][i] for k in among}
            scores = {k: v if isinstance(v, int | float) and math.isfinite(v) else -math.inf for k, v in scores.items()}
            chosen.append(max(among, key=lambda k: (scores[k], -k)))
        merged = TaskMetrics.of(tasks)
        for i, k in enumerate(chosen):
            merged.merge(states[k][i])
        adversarial = merged.compute()
        try:
            value, per_task = arp(clean, adversarial, tasks), task_arp(clean, adversarial, tasks)
        except ValueError:
            return None
        supplied: dict[str, int] = defaultdict(int)
        for k in chosen:
            supplied[usable[k].attack] += 1
        return value, per_task, supplied, [usable[k].per_image["score"][i] for i, k in enumerate(chosen)]

    # a pseudo-value is a noisy per-image score (pooled metrics such as mIoU): the images it picks
    # can score below a smaller pick's, or below one attack's own. The candidates: the pick among
    # every cell, among the white-box ones (no transfer cell), and each cell's own images; the
    # worst case known is the highest of them, each a set of images an attack really made
    everything = list(range(len(usable)))
    white_box = [k for k in everything if not usable[k].config.get("crafted_on")]
    picked = pick(everything)
    candidates = [picked] + ([pick(white_box)] if len(white_box) not in (0, len(everything)) else [])
    candidates += [(c.arp, dict(c.task_arp), {c.attack: len(ids)}, list(c.per_image["score"])) for c in usable]
    candidates = [c for c in candidates if c is not None]
    if not candidates:
        return None
    value, per_task, supplied, scores = max(candidates, key=lambda c: c[0])
    best_single = max(usable, key=lambda c: c.arp)
    interval = _image_ci(scores)
    if interval is not None:  # the spread of the chosen images' scores, centred on the exact value
        centre = mean(v for v in scores if isinstance(v, int | float) and math.isfinite(v))
        interval = [interval[0] - centre + value, interval[1] - centre + value]
    return {"arp": value, "task_arp": per_task, "images": len(ids), "attacks": len({c.attack for c in usable}),
            "supplied": dict(sorted(supplied.items(), key=lambda kv: (-kv[1], kv[0]))),
            "best_single": best_single.attack, "best_single_arp": best_single.arp, "image_ci": interval,
            # the exact ARP of the images picked by score among every cell (one of the candidates)
            "picked_arp": picked[0] if picked is not None else None}


def _signature(c: CellResult) -> tuple:
    """What makes two cells of one attack the same experiment besides model, eps, seed and (for
    a budget curve) the step budget."""
    options = dict(c.config.get("options", {}))
    budget = c.config.get("budget")
    if isinstance(budget, dict) and budget.get("extra") is not None:
        options.pop(budget.get("option"), None)
    return (c.profile, json.dumps(options, sort_keys=True), c.config.get("images"))


def _is_curve_point(c: CellResult) -> bool:
    budget = c.config.get("budget")
    return isinstance(budget, dict) and bool(budget.get("extra"))


def _budget_block(cells: list[CellResult], models: list[str], eps: float) -> dict[str, Any] | None:
    """The ARP-at-equal-compute curves and rankings of one eps (None without extra budgets)."""
    here = [c for c in cells if c.eps == eps and c.model in models]
    if not any(_is_curve_point(c) for c in here):
        return None
    # the curves' models are those the profile gave budget points (its budget_models)
    common = [m for m in models if any(_is_curve_point(c) and c.model == m for c in here)]
    points: dict[tuple[str, Any], dict[str, list[CellResult]]] = defaultdict(lambda: defaultdict(list))
    for c in here:
        if c.model in common:
            budget = c.config.get("budget") or {}
            points[(c.attack, budget.get("value"))][c.model].append(c)
    # an attack with a point missing or not valid on one of them (one that ran on some models only,
    # such as a defense's black-box attack) is left out of the curves: each curve averages the same
    # models; when no attack is left on every model, the models where every point is valid remain
    complete = {k: all(cs.get(m) and all(x.status == Status.VALID for x in cs[m]) for m in common)
                for k, cs in points.items()}
    left_out = {attack for (attack, _), ok in complete.items() if not ok}
    if left_out == {attack for attack, _ in points}:
        common = [m for m in common if all(cs.get(m) and all(x.status == Status.VALID for x in cs[m])
                                           for cs in points.values())]
    else:
        points = {k: cs for k, cs in points.items() if k[0] not in left_out}
    if not common:
        return {"models": [], "series": {}, "levels": [], "rankings": {}, "ci_over": "models"}
    series: dict[str, list[dict[str, Any]]] = defaultdict(list)
    over_images = len(common) < MIN_MODELS_FOR_CI
    for (attack, budget), by_model in points.items():
        per_model = [mean(x.arp for x in by_model[m]) for m in common]
        passes = [p for m in common for p in (c.passes_per_image for c in by_model[m]) if p is not None]
        m_arp, low, high = bootstrap_ci(per_model, confidence=0.95, seed=0)
        if over_images:  # a few models: the interval of their mean over each model's images
            scores = [[v for x in by_model[m] for v in (x.per_image.get("score") or [])] for m in common]
            centre, low, high = stratified_bootstrap_ci(scores, seed=0)
            low, high = (low + m_arp - centre, high + m_arp - centre) if math.isfinite(centre) else (None, None)
        series[attack].append({"budget": budget, "passes_per_image": mean(passes) if passes else None,
                               "mean_arp": m_arp, "ci_low": low, "ci_high": high})
    for attack in series:
        series[attack].sort(key=lambda p: (p["passes_per_image"] or 0.0))
    levels = sorted({p["passes_per_image"] for pts in series.values() for p in pts
                     if p["passes_per_image"] is not None})
    rankings = {}
    for level in levels:
        rows = []
        for attack, pts in series.items():
            within = [p for p in pts if p["passes_per_image"] is not None and p["passes_per_image"] <= level + 1e-9]
            if within:
                rows.append({"attack": attack, **within[-1]})
        rows.sort(key=lambda r: (-r["mean_arp"], r["attack"]))
        for i, r in enumerate(rows, start=1):
            r["rank"] = i
        rankings[f"{level:g}"] = rows
    return {"models": common, "series": dict(sorted(series.items())), "levels": [f"{v:g}" for v in levels],
            "rankings": rankings, "ci_over": "images" if over_images else "models"}


def _label_configurations(cells: list[CellResult]) -> tuple[list[CellResult], dict[str, list[str]]]:
    """Cells whose attack ran under several configurations (profile, options, images) are kept
    apart: each configuration's attack is labelled ``attack [profile]`` (with its options and
    images when the profile alone does not tell them apart), so that only the same experiment
    is ever averaged; an attack with one configuration keeps its name. Also returns each label's
    ``[attack, configuration]`` (``""`` for an attack with one configuration)."""
    configs: dict[str, set[tuple]] = defaultdict(set)
    for c in cells:
        configs[c.attack].add(_signature(c))
    labels: dict[tuple[str, tuple], str] = {}
    variants: dict[str, list[str]] = {}
    for attack, sigs in configs.items():
        if len(sigs) == 1:
            labels[(attack, next(iter(sigs)))] = attack
            variants[attack] = [attack, ""]
            continue
        profiles = [sig[0] for sig in sigs]
        for sig in sigs:
            profile, options, images = sig
            if profiles.count(profile) == 1:
                configuration = profile
            else:
                opts = ", ".join(f"{k}={v}" for k, v in json.loads(options).items())
                configuration = f"{profile}; {opts or 'defaults'}; {images or 'all'} images"
            labels[(attack, sig)] = f"{attack} [{configuration}]"
            variants[labels[(attack, sig)]] = [attack, configuration]
    return [replace(c, attack=labels[(c.attack, _signature(c))]) for c in cells], variants


def _model_order(models: list[str], info: dict) -> list[str]:
    """Most parameters first (the paper's table order), then by name."""
    return sorted(models, key=lambda m: (-(info.get(m, {}).get("backbone_params") or 0), m))


def views_of(cells: list[CellResult]) -> dict[str, list[CellResult]]:
    """A suite's cells split by the evaluation they belong to: the profile they ran under and the
    images they were scored on. A result's identity includes them, so rankings, paired differences,
    verdicts and curves never mix two views. A view is named by its profile, and by its image count
    too where one profile ran on several."""
    by: dict[tuple[str, int], list[CellResult]] = defaultdict(list)
    for c in cells:
        by[(c.profile or "custom", _requested_images(c))].append(c)
    counts: dict[str, int] = defaultdict(int)
    for profile, _ in by:
        counts[profile] += 1
    return {(profile if counts[profile] == 1 else f"{profile}, {images or 'all'} images"): cs
            for (profile, images), cs in sorted(by.items(), key=lambda kv: (kv[0][0], kv[0][1] or 0))}


def _requested_images(c: CellResult) -> int | None:
    """The images a cell was asked to score (its configuration's; a failed cell scored none)."""
    return c.config.get("images", c.images) if "images" in c.config else (c.images or None)


def _headline(suite: str, views: dict[str, list[CellResult]]) -> str:
    """The view a suite's pages open on: its manifest's headline profile (the first one) when that
    ran, else the view with the most cells."""
    from benchmark.errors import UserError
    from benchmark.suites import load_suite

    try:
        headline = load_suite(suite).headline_profile
    except (UserError, OSError, ValueError):
        headline = None
    named = [v for v, cs in views.items() if cs[0].profile == headline]
    if named:
        return max(named, key=lambda v: (len(views[v]), v))
    return max(views, key=lambda v: (len(views[v]), v))


def _settings(cells: list[CellResult]) -> dict[str, Any]:
    """What a view's numbers come from: the profile, step budgets, images, seeds, batch size,
    metric mode and data (with the data root where a real data set was read)."""
    steps: dict[str, set] = defaultdict(set)
    for c in cells:
        budget = c.config.get("budget")
        if isinstance(budget, dict) and not budget.get("extra"):
            steps[f"{c.attack.partition(':')[0]} ({budget.get('option')})"].add(budget.get("value"))

    def distinct(values) -> list:
        return sorted({v for v in values if v is not None}, key=str)

    return {
        "profile": cells[0].profile or "custom",
        "images": distinct(c.images for c in cells if c.status == Status.VALID) or distinct(
            _requested_images(c) for c in cells),
        "seeds": distinct(c.seed for c in cells),
        "steps": {k: sorted(v, key=str) for k, v in sorted(steps.items())},
        "batch_size": distinct(c.config.get("batch_size") for c in cells),
        "metrics": distinct(c.config.get("metrics", "ours") for c in cells),
        "data": distinct(c.config.get("data") for c in cells),
        "data_root": distinct(c.config.get("data_root") for c in cells),
    }


def build_board(store: ResultsStore, *, default_eps: float = DEFAULT_EPS) -> dict[str, Any]:
    """Every number of the leaderboard: ``{"provenance", "suites": {suite: {"name", "headline",
    "views": {view: <the view's numbers>}}}}``, one view per evaluation (profile and images) that
    ran on the suite, its headline view first (:func:`headline_view`)."""
    cells = store.cells()
    model_info: dict[tuple[str, str], dict] = {}
    for row in store.models():
        model_info[(row["suite"], row["model"])] = row
    suites: dict[str, Any] = {}
    grouped: dict[str, list[CellResult]] = defaultdict(list)
    for c in cells:
        grouped[c.suite].append(c)
    for suite, suite_cells in sorted(grouped.items()):
        views = views_of(suite_cells)
        headline = _headline(suite, views)
        order = [headline, *sorted(v for v in views if v != headline)]
        suites[suite] = {"name": suite, "headline": headline,
                         "views": {v: {**_view_board(suite, views[v], model_info, default_eps), "view": v,
                                       "headline": v == headline} for v in order}}
    return {"provenance": _provenance(cells, store.path), "suites": suites}


def headline_view(board: dict[str, Any], suite: str) -> dict[str, Any]:
    """The numbers of ``suite``'s headline view in ``board``."""
    entry = board["suites"][suite]
    return entry["views"][entry["headline"]]


def _view_board(suite: str, suite_cells: list[CellResult], model_info: dict, default_eps: float) -> dict[str, Any]:
    """One view's numbers: rankings, tables, transferability, defenses, checks per eps."""
    settings = _settings(suite_cells)
    suite_cells, variants = _label_configurations(suite_cells)
    info = {m: model_info.get((suite, m), {}) for m in {c.model for c in suite_cells}}
    # attacks are ranked on the suite's own (undefended) models; defended targets have their page,
    # external models (brought by users) their table, neither is ranked
    external = sorted(m for m in info if info[m].get("kind") == "external")
    models = _model_order([m for m in info if not info[m].get("defense") and m not in external], info)
    defended = sorted(m for m in info if info[m].get("defense") and m not in external)
    # transfer cells (crafted on another member) are their own attacks: the cross-model matrix,
    # the defended targets' columns, best known and check (f); never the rankings
    transfer = {c.attack: (c.attack.removesuffix(f" from {c.config['crafted_on']}"), c.config["crafted_on"])
                for c in suite_cells if c.config.get("crafted_on")}
    attacks = sorted({c.attack for c in suite_cells} - set(transfer))
    every = attacks + sorted(transfer)
    eps_list = sorted({c.eps for c in suite_cells})
    tasks = next((list(c.task_arp) for c in suite_cells if c.task_arp), [])
    # the task a SINGLE-X attack targets, as the runner's AttackSpec stored it (never re-parsed)
    targets = {c.attack: c.config["task"] for c in suite_cells if c.config.get("task") in tasks}
    by_key: dict[tuple[str, str, float], list[CellResult]] = defaultdict(list)
    for c in suite_cells:
        if not _is_curve_point(c):  # a budget curve's extra points are not the protocol's cells
            by_key[(c.model, c.attack, c.eps)].append(c)
    per_eps: dict[str, Any] = {}
    for eps in eps_list:
        entries = {(m, a): _entry(by_key[(m, a, eps)]) for m in models + defended + external for a in every
                   if by_key.get((m, a, eps))}
        worst = {m: _worst_case([c for a in every for c in by_key.get((m, a, eps), [])],
                                info[m].get("dataset")) for m in models + defended + external}
        worst = {m: w for m, w in worst.items() if w is not None}
        ranked, unranked, left_out = _rankings(entries, models, attacks)
        rank_stability(ranked, entries, [m for m in models if m not in {x["model"] for x in left_out}])
        for e in entries.values():
            e.pop("_scores", None)
        per_eps[eps_key(eps)] = {
            "eps": eps, "ranking": ranked, "unranked": unranked, "left_out": left_out,
            "table": {m: {a: entries[(m, a)] for a in attacks if (m, a) in entries} for m in models},
            "transfer": _transfer(entries, models, attacks, targets, info),
            "worst": worst,
            "defenses": _defenses(entries, defended, attacks + sorted(
                a for a in transfer if any((t, a) in entries for t in defended)), info, worst) if defended else None,
            "model_transfer": model_transfer(entries, transfer, models, info),
            "external": {m: {a: entries[(m, a)] for a in attacks if (m, a) in entries} for m in external},
            "budget": _budget_block(suite_cells, models, eps),
        }
    clean = {m: info[m].get("clean") or next((c.clean for c in suite_cells if c.model == m and c.clean), {})
             for m in models}
    checks = target_checks(suite_cells, info)
    reliability = {m: {"checks": checks.get(m, {}), "flags": evaluation_flags(checks.get(m, {})),
                       "rows": check_rows(checks.get(m, {}))}
                   for m in models + defended + external}
    for block in per_eps.values():
        for row in (block["defenses"] or {}).get("rows", []):
            row["flags"] = [f"{t}: {f}" if len(row["targets"]) > 1 else f
                            for t in row["targets"] for f in reliability.get(t, {}).get("flags", [])]
    return {
        "name": suite, "settings": settings, "models": models, "attacks": attacks, "variants": variants,
        "eps": eps_list, "tasks": tasks, "default_eps": choose_eps(eps_list, default_eps) if eps_list else None,
        # the members' own task order (config.json's): a layout's task numbers index it
        "task_order": next((info[m]["tasks"] for m in models if info[m].get("tasks")), tasks),
        "model_info": {m: {k: v for k, v in info[m].items() if k not in ("clean",)}
                       for m in models + defended + external},
        "defended": defended, "external": external,
        # the targets whose cells kept images for the inspection pages, and how many
        "inspected": {m: n for m in models + defended + external
                      if (n := max(((c.config.get("inspection") or {}).get("images", 0) for c in suite_cells
                                    if c.model == m and c.status == Status.VALID), default=0))},
        # whether any eps has a cross-model transfer matrix (its page)
        "crossmodel": any(block["model_transfer"] for block in per_eps.values()),
        # the members behind the defended targets (their undefended rows are the defenses page's reference)
        "defended_members": sorted({info[t].get("member") for t in defended if info[t].get("member") in info}),
        "clean": clean, "by_eps": per_eps, "reliability": reliability,
        "images": sorted({c.images for c in suite_cells if c.images}),
        "inference": _inference(info, defended + external),
        "statuses": dict(sorted(_count(suite_cells).items())),
    }


def _inference(info: dict, targets: list[str]) -> dict[str, dict[str, Any]]:
    """Each defended (or external) target's inference cost: forward passes of the network per
    prediction, clean time per image and that time relative to the bare network's, as measured
    when the target was loaded (interleaved in one process; ``time_ratio_how`` says how). A target
    loaded before that was measured has no ratio (a ratio of two runs' timings is their load)."""
    out = {}
    for t in targets:
        mine = info[t].get("inference") or {}
        out[t] = {"passes_per_prediction": mine.get("passes_per_prediction"), "s_per_image": mine.get("s_per_image"),
                  "time_ratio": mine.get("time_ratio"), "time_ratio_how": mine.get("time_ratio_how", "")}
    return out


def _count(cells: list[CellResult]) -> dict[str, int]:
    out: dict[str, int] = defaultdict(int)
    for c in cells:
        out[c.status] += 1
    return out


def eps_key(eps: float) -> str:
    """How an eps names its block of the board (and of leaderboard.json): ``8.0`` -> ``"8"``."""
    return f"{eps:g}"


def _provenance(cells: list[CellResult], path: Path) -> dict[str, Any]:
    """Where the results database's own results come from (a submitted bundle's cells have their
    provenance in the bundles table, never here)."""
    bundled = sum(1 for c in cells if c.config.get("source"))
    cells = [c for c in cells if not c.config.get("source")]

    def distinct(attr: str) -> list[str]:
        return sorted({str(getattr(c, attr)) for c in cells if getattr(c, attr)})

    return {
        "mtlbench (rendering)": __version__, "mtlbench (results)": ", ".join(distinct("mtlbench_version")),
        "git commit": ", ".join(distinct("git_commit")) or "unknown", "torch": ", ".join(distinct("torch_version")),
        "device": ", ".join(distinct("device")), "cells": len(cells),
        "results from": min((c.created for c in cells), default="") + " to " + max((c.created for c in cells),
                                                                                  default=""),
        "rendered": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "results database": Path(path).name,  # a published page names the file, not where it lives
        **({"cells of submitted bundles": f"{bundled} (their provenance: the bundles table)"} if bundled else {}),
    }
