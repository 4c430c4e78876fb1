"""The reproduction page: each of the paper's findings, the paper's numbers (data:
``leaderboard/data/paper_findings.toml``) beside ours from the results store, and a verdict that is
computed, never written by hand: ``reproduced``, ``not reproduced``, ``too little evidence``
(below :data:`MIN_EVIDENCE`: fewer than 16 images per cell, or fewer than 3 models or sharing
levels for a finding over models) or ``not run``. Each view (profile and images) of a suite gets
its own verdicts, from its own cells. The rules (:data:`RULES`, shown on the page):

* **strongest**: per optimizer (PGD, APGD), the models on which GB-MTA gives the highest ARP of
  that optimizer's attacks at eps 8, and the paired differences GB-MTA - TOTAL and GB-MTA -
  SIGNTOTAL over (model, image) with their 95% bootstrap interval. Reproduced when GB-MTA is the
  strongest on more than half of the models and GB-MTA - TOTAL is positive with its interval.
* **ARP vs eps**: the mean ARP over models of every attack of an optimizer at each eps. Reproduced
  when every curve rises with eps (Spearman correlation >= 0.9) and GB-MTA's mean over the grid
  is the highest of its optimizer's multi-task attacks.
* **transferability**: each SINGLE-X attack's mean transferability by sharing level (blocks shared
  by all tasks). Reproduced when it rises with the level: a Spearman correlation of at least 0.5
  and, at the most-shared level, at least 1.2 times the least-shared level's (the paper: 1.5 to 23
  times).
* **FAT**: the defenses table at eps 8 (the AS model undefended and with FAT by each attack).
  Reproduced when every FAT model has a lower ARP than the undefended one under every attack and
  GB-MTA is the strongest attack on most FAT models.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean
from typing import Any

import tomllib

from benchmark.attacks.objectives import parse_single
from benchmark.enums import Status
from benchmark.runner.store import CellResult
from benchmark.scoring import paired_bootstrap, spearman
from leaderboard.aggregate import choose_eps, views_of

__all__ = ["MIN_EVIDENCE", "PAPER_FINDINGS", "RULES", "paper_findings", "reproduction"]

PAPER_FINDINGS = Path(__file__).parent / "data" / "paper_findings.toml"
REPRODUCED, NOT_REPRODUCED, NOT_RUN = "reproduced", "not reproduced", "not run"
TOO_LITTLE = "too little evidence"
STATUSES = (REPRODUCED, NOT_REPRODUCED, TOO_LITTLE, NOT_RUN)
#: the least evidence a verdict is given on: images per cell, and models (suite members whose
#: cells are valid; a degenerate member's are not) for the findings over models; below it the
#: finding reads "too little evidence", whatever the numbers say
MIN_EVIDENCE = {"images": 16, "models": 3, "levels": 3}


#: each finding's rule, as the page states it
RULES = {
    "strongest": "reproduced when GB-MTA gives the highest ARP of the optimizer's attacks on more than half of the "
                 "models and GB-MTA − TOTAL, paired over (model, image), has a 95% interval above 0",
    "arp-vs-eps": "reproduced when every attack's mean ARP over models rises with eps (Spearman's rho of at least "
                  "0.9 over at least 3 eps; tied values share their rank) and GB-MTA's mean over the grid is the "
                  "highest of the optimizer's multi-task attacks",
    "transferability": "reproduced when the mean transferability rises with the number of blocks shared by all tasks: "
                       "Spearman's rho of at least 0.5 over the sharing levels and, at the most-shared level, at "
                       "least 1.2 times the least-shared level's (the paper: 1.5 to 23 times)",
    "fat": "reproduced when every FAT model has a lower ARP than the undefended one under every attack and GB-MTA is "
           "the strongest attack on most FAT models",
}


def _rule(finding_id: str) -> str:
    return next(text for key, text in RULES.items() if finding_id.startswith(key))


def paper_findings() -> dict[str, Any]:
    return tomllib.loads(PAPER_FINDINGS.read_text())




def _variants(suite: dict, labels: list[str] | None = None) -> dict[str, dict[str, str]]:
    """The suite's attack labels (or ``labels``) grouped by the configuration they ran under (the
    board's ``variants``: label -> [attack, configuration]); {configuration: {attack: label}},
    most attacks first."""
    groups: dict[str, dict[str, str]] = defaultdict(dict)
    for label in suite["attacks"] if labels is None else labels:
        attack, configuration = suite.get("variants", {}).get(label, [label, ""])
        groups[configuration][attack] = label
    return dict(sorted(groups.items(), key=lambda kv: -len(kv[1])))


def _too_little(suite: dict, models: int | None = None) -> str:
    """What a verdict on ``suite`` (a view) lacks of :data:`MIN_EVIDENCE` (empty: enough)."""
    images = min(suite["images"] or [0])
    lacking = []
    if images < MIN_EVIDENCE["images"]:
        lacking.append(f"{images} images per cell (a verdict needs {MIN_EVIDENCE['images']})")
    if models is not None and models < MIN_EVIDENCE["models"]:
        lacking.append(f"{models} model(s) with valid results (a verdict needs {MIN_EVIDENCE['models']})")
    return "; ".join(lacking)


def _closest(available: list[float], wanted: float) -> float | None:
    return choose_eps(available, wanted) if available else None


def paired_difference(cells: list[CellResult], better: str, other: str, models: list[str],
                      eps: float) -> dict[str, Any]:
    """Paired bootstrap over (model, image) of ``better`` - ``other`` at ``eps``: the cells of the
    same model, seed and profile on the same images."""
    by = {(c.model, c.seed, c.profile, c.attack): c for c in cells
          if c.eps == eps and c.status == Status.VALID and c.per_image.get("score")}
    before, after = [], []
    for (model, seed, profile, attack), c in by.items():
        if attack != better or model not in models:
            continue
        o = by.get((model, seed, profile, other))
        if o is not None and o.per_image.get("ids") == c.per_image.get("ids"):
            before.append(o.per_image["score"])
            after.append(c.per_image["score"])
    if not after:
        return {"pairs": 0}
    delta, low, high, p = paired_bootstrap(before, after)
    return {"pairs": sum(len(a) for a in after), "delta": delta, "low": low, "high": high, "p_lower": p}


def _strongest(suite: dict, cells: list[CellResult], paper: dict) -> list[dict[str, Any]]:
    out = []
    dataset = next((i.get("dataset") for i in suite["model_info"].values() if i.get("dataset")), "nyuv2")
    theirs = paper.get(dataset, {})
    eps = _closest(suite["eps"], paper["eps"])
    for optimizer in paper["optimizers"]:
        finding = {"id": f"strongest-{optimizer}", "claim": f"{paper['claim']} ({optimizer.upper()})",
                   "reference": paper["reference"], "paper": f"{theirs.get('k', '?')} of {theirs.get('n', '?')} models",
                   "eps": eps}
        block = suite["by_eps"].get(f"{eps:g}") if eps is not None else None
        group = next((g for g in _variants(suite).values() if f"{optimizer}:gb-mta" in g), {})
        gb = group.get(f"{optimizer}:gb-mta", f"{optimizer}:gb-mta")
        mine = [label for base, label in group.items() if base.startswith(f"{optimizer}:")]
        if block is None or gb not in mine or len(mine) < 2:
            out.append({**finding, "status": NOT_RUN, "ours": f"{gb} and another {optimizer} attack were not run"})
            continue
        wins, n = 0, 0
        for model in suite["models"]:
            row = block["table"].get(model, {})
            values = {a: row[a]["arp"] for a in mine if a in row and row[a]["arp"] is not None}
            if gb not in values or len(values) < 2:
                continue
            n += 1
            wins += values[gb] >= max(values.values()) - 1e-9
        paired = {other: paired_difference(cells, f"{optimizer}:gb-mta", f"{optimizer}:{other}", suite["models"],
                                           eps)
                  for other in ("total", "signtotal") if f"{optimizer}:{other}" in group}
        total = paired.get("total", {})
        ok = n > 0 and wins * 2 > n and total.get("pairs") and total["low"] > 0
        short = _too_little(suite, n)
        status = TOO_LITTLE if short else (REPRODUCED if ok else NOT_REPRODUCED)
        out.append({**finding, "status": status, "ours": f"{wins} of {n} models" + (f" ({short})" if short else ""),
                    "wins": wins, "models": n, "paired": paired})
    return out


def _arp_vs_eps(suite: dict, paper: dict) -> list[dict[str, Any]]:
    out = []
    group = next(iter(_variants(suite).values()), {})
    optimizers = sorted({a.split(":")[0] for a in group if ":" in a})
    for optimizer in optimizers:
        mine = [label for base, label in group.items() if base.startswith(f"{optimizer}:")]
        curves: dict[str, list[tuple[float, float]]] = {}
        for a in mine:
            points = []
            for key, block in suite["by_eps"].items():
                ranked = {r["attack"]: r for r in block["ranking"]}
                if a in ranked:
                    points.append((float(key), ranked[a]["mean_arp"]))
            if points:
                curves[a] = sorted(points)
        finding = {"id": f"arp-vs-eps-{optimizer}", "claim": paper["claim"], "reference": paper["reference"],
                   "paper": "rising curves (figures)", "curves": curves}
        if len({e for pts in curves.values() for e, _ in pts}) < 3:
            out.append({**finding, "status": NOT_RUN, "ours": f"{optimizer}: fewer than 3 eps ranked"})
            continue
        short = _too_little(suite, len(suite["models"]))
        if short:
            out.append({**finding, "status": TOO_LITTLE, "ours": short})
            continue
        rising = {a: spearman([e for e, _ in pts], [v for _, v in pts]) for a, pts in curves.items()}
        multi = {a: mean(v for _, v in pts) for a, pts in curves.items()
                 if parse_single(a.split(" [")[0].partition(":")[2], []) is None}  # the multi-task objectives
        gb = group.get(f"{optimizer}:gb-mta", "")
        highest = bool(multi) and gb in multi and multi[gb] >= max(multi.values()) - 1e-9
        ok = all(r >= 0.9 for r in rising.values()) and highest
        worst = min(rising, key=lambda a: (rising[a] if rising[a] == rising[a] else -2.0))
        out.append({**finding, "status": REPRODUCED if ok else NOT_REPRODUCED,
                    "ours": f"lowest Spearman rho {rising[worst]:.2f} ({worst}); GB-MTA "
                            f"{'highest' if highest else 'not the highest'} mean over the grid",
                    "spearman": rising})
    return out


def _transferability(suite: dict, paper: dict) -> list[dict[str, Any]]:
    levels = paper["levels"]
    eps = _closest(suite["eps"], 8.0)
    block = suite["by_eps"].get(f"{eps:g}") if eps is not None else None
    out = []
    transfer = block["transfer"] if block else {"by_level": {}, "targets": {}}
    for objective in ("single-segment", "single-normal", "single-depth"):
        theirs = dict(zip(levels, paper.get(objective, []), strict=False))
        labels = {label.partition(" [")[0]: label for label in transfer["by_level"]}
        attack = next((labels[a] for a in (f"{paper['optimizer']}:{objective}", f"pgd:{objective}") if a in labels),
                      None)
        finding = {"id": f"transferability-{objective}", "claim": paper["claim"], "reference": paper["reference"],
                   "paper": theirs, "eps": eps}
        if attack is None:
            out.append({**finding, "status": NOT_RUN, "ours": f"no SINGLE-X attack on {objective[7:]} was run"})
            continue
        ours = {int(k): v for k, v in transfer["by_level"][attack].items() if int(k) >= 0}
        short = "; ".join(filter(None, [
            _too_little(suite),
            f"{len(ours)} sharing level(s) with results (a verdict needs {MIN_EVIDENCE['levels']})"
            if len(ours) < MIN_EVIDENCE["levels"] else ""]))
        if short:
            out.append({**finding, "status": TOO_LITTLE, "attack": attack, "ours": ours, "short": short})
            continue
        low, high = ours[min(ours)], ours[max(ours)]
        rho = spearman(list(ours), list(ours.values()))
        ok = rho >= 0.5 and low > 0 and high >= 1.2 * low
        out.append({**finding, "status": REPRODUCED if ok else NOT_REPRODUCED, "attack": attack, "ours": ours,
                    "spearman": rho, "ratio": high / low if low else float("nan")})
    return out


def _fat(suite: dict, paper: dict) -> list[dict[str, Any]]:
    eps = _closest(suite["eps"], paper["eps"])
    block = suite["by_eps"].get(f"{eps:g}") if eps is not None else None
    finding = {"id": "fat", "claim": paper["claim"], "reference": paper["reference"], "paper": paper["arp"],
               "attacks": paper["attacks"], "eps": eps}
    defenses = (block or {}).get("defenses") or {}
    rows = {r["defense"]: r for r in defenses.get("rows", [])}
    fat_rows = [d for d in rows if d.startswith("fat:")]
    # the configuration (profile) that ran the most of the paper's attacks on the FAT models
    group = max(_variants(suite, defenses.get("attacks", [])).values(), default={},
                key=lambda g: sum(1 for d in fat_rows for a in paper["attacks"]
                                  if rows[d]["cells"].get(g.get(a, ""), {}).get("arp") is not None))
    if "none" not in rows or not fat_rows or not group:
        return [{**finding, "status": NOT_RUN, "ours": "no FAT model was attacked (mtlbench run --profile table3)"}]
    ours = {d: {a: rows[d]["cells"].get(group.get(a, ""), {}).get("arp") for a in paper["attacks"]}
            for d in ["none", *fat_rows]}
    lower = all(ours[d][a] is not None and ours["none"][a] is not None and ours[d][a] < ours["none"][a]
                for d in fat_rows for a in paper["attacks"])
    gb_wins = sum(1 for d in fat_rows if all(v is not None for v in ours[d].values())
                  and max(ours[d], key=ours[d].get) == "pgd:gb-mta")
    paper_wins = sum(1 for d, values in paper["arp"].items() if d != "none"
                     and values.index(max(values)) == paper["attacks"].index("pgd:gb-mta"))
    ok = lower and gb_wins * 2 > len(fat_rows)
    short = _too_little(suite)
    return [{**finding, "status": TOO_LITTLE if short else (REPRODUCED if ok else NOT_REPRODUCED), "ours": ours,
             "lower": lower, "short": short,
             "gb_mta_strongest": f"{gb_wins} of {len(fat_rows)} FAT models (paper: {paper_wins} of "
                                 f"{len(paper['arp']) - 1})"}]


def reproduction(board: dict[str, Any], cells: list[CellResult]) -> dict[str, dict[str, Any]]:
    """The findings of every view of every suite of ``board`` (``build_board``'s output) from its
    ``cells``, each view from its own cells only: ``{suite: {view: {"findings", "counts"}}}``."""
    paper = paper_findings()
    by_suite: dict[str, list[CellResult]] = defaultdict(list)
    for c in cells:
        by_suite[c.suite].append(c)
    out: dict[str, dict[str, Any]] = {}
    for name, entry in board["suites"].items():
        view_cells = views_of(by_suite[name])
        for view, suite in entry["views"].items():
            mine = view_cells.get(view, [])
            findings = (_strongest(suite, mine, paper["strongest"]) + _arp_vs_eps(suite, paper["arp_vs_eps"])
                        + _transferability(suite, paper["transferability"]) + _fat(suite, paper["fat"]))
            findings = [{**f, "rule": _rule(f["id"])} for f in findings]
            out.setdefault(name, {})[view] = {
                "findings": findings, "evidence": dict(MIN_EVIDENCE),
                "counts": {s: sum(f["status"] == s for f in findings) for s in STATUSES}}
    return out
