"""Do a leaderboard's conclusions hold across runs? ``mtlbench report compare DB DB ...``.

Given results databases of the same suite and profile from different runs (training seeds of the
models, versions of an attack, machines), each one's conclusions are computed on the models and
attacks they all have, at one eps:

* the ranking of the attacks (mean ARP over the common models) and its top 3;
* GB-MTA against TOTAL (PGD): the paired difference over (model, image) with its bootstrap 95%
  interval, and its sign;
* for each SINGLE-X attack, the trend of transferability with the number of blocks the attacked
  task shares with the others (Spearman's rho between the sharing level and the mean
  transferability of the models at that level);

and the rankings are compared pairwise with Kendall's tau-b.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean
from typing import Any

from benchmark.errors import UserError
from benchmark.runner.store import ResultsStore
from benchmark.scoring import kendall_tau, spearman
from leaderboard.aggregate import build_board, choose_eps, eps_key, views_of
from leaderboard.reproduction import paired_difference

__all__ = ["compare_results"]


def compare_results(paths: list[str | Path], *, eps: float = 8.0, better: str = "pgd:gb-mta",
                    other: str = "pgd:total", profile: str | None = None) -> dict[str, Any]:
    """Each run's conclusions (see the module docstring) and Kendall's tau between their rankings,
    on one view of the suite (``profile``: default, the first run's headline one). ``differences``
    names every setting in which the runs' views differ (profile, images, seeds, step budgets,
    batch size, metrics, data): conclusions of runs that differ in them are not the same experiment."""
    if len(paths) < 2:
        raise UserError("compare needs two or more results databases")
    runs = []
    for path in paths:
        with ResultsStore(path, readonly=True) as store:
            runs.append((str(path), build_board(store), store.cells()))
    suites = set.intersection(*({name for name in board["suites"]} for _, board, _ in runs))
    if not suites:
        raise UserError("the results databases have no suite in common")
    suite = sorted(suites)[0]
    views = []
    for path, board, _ in runs:
        entry = board["suites"][suite]
        wanted = profile or runs[0][1]["suites"][suite]["headline"]
        name = next((v for v in entry["views"] if v == wanted or v.startswith(f"{wanted}, ")), None)
        if name is None:
            name = entry["headline"] if profile is None else None
        if name is None:
            raise UserError(f"{path} has no results of profile {profile!r} for {suite}; it has "
                            f"{', '.join(entry['views'])}")
        views.append(entry["views"][name])
    models = sorted(set.intersection(*(set(v["models"]) for v in views)))
    chosen = choose_eps(sorted(set.intersection(*(set(v["eps"]) for v in views))), eps)
    key = eps_key(chosen)
    attacks = sorted(set.intersection(*(set(v["attacks"]) for v in views)))
    differences = {}
    for name in sorted(views[0]["settings"]):
        values = [v["settings"].get(name) for v in views]
        if any(x != values[0] for x in values):
            differences[name] = values
    out: dict[str, Any] = {"suite": suite, "eps": chosen, "models": models, "attacks": attacks, "runs": [],
                           "differences": differences, "views": [v["view"] for v in views]}
    for (path, _, cells), view in zip(runs, views, strict=True):
        table = view["by_eps"][key]["table"]
        info = view["model_info"]
        ranking = {}
        for attack in attacks:
            values = [table.get(m, {}).get(attack, {}).get("arp") for m in models]
            if all(v is not None for v in values):
                ranking[attack] = mean(values)
        order = sorted(ranking, key=lambda a: -ranking[a])
        mine = views_of([c for c in cells if c.suite == suite]).get(view["view"], [])
        paired = paired_difference(mine, better, other, models, chosen) if {better, other} <= set(attacks) else {}
        trends = {}
        for attack in view["by_eps"][key]["transfer"]["targets"]:
            per_model = view["by_eps"][key]["transfer"]["per_model"].get(attack, {})
            levels: dict[int, list[float]] = {}
            for m in models:
                value = per_model.get(m)
                if value is not None and math.isfinite(value):
                    levels.setdefault(int(info.get(m, {}).get("shared_blocks", -1)), []).append(value)
            by_level = {lvl: mean(v) for lvl, v in sorted(levels.items())}
            trends[attack] = {"by_level": by_level, "spearman": spearman(list(by_level), list(by_level.values()))}
        out["runs"].append({"path": path, "ranking": ranking, "order": order, "top3": order[:3], "paired": paired,
                            "transfer": trends, "view": view["view"]})
    common = [a for a in attacks if all(a in r["ranking"] for r in out["runs"])]
    out["tau"] = {(i, j): kendall_tau([out["runs"][i]["ranking"][a] for a in common],
                                      [out["runs"][j]["ranking"][a] for a in common])
                  for i in range(len(runs)) for j in range(i + 1, len(runs))}
    out["ranked_attacks"] = common
    return out
