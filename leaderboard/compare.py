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
from leaderboard.aggregate import build_board, choose_eps, eps_key
from leaderboard.reproduction import paired_difference

__all__ = ["compare_results"]


def compare_results(paths: list[str | Path], *, eps: float = 8.0, better: str = "pgd:gb-mta",
                    other: str = "pgd:total") -> dict[str, Any]:
    """Each run's conclusions (see the module docstring) and Kendall's tau between their rankings."""
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
    models = sorted(set.intersection(*(set(board["suites"][suite]["models"]) for _, board, _ in runs)))
    chosen = choose_eps(sorted(set.intersection(*(set(board["suites"][suite]["eps"]) for _, board, _ in runs))), eps)
    key = eps_key(chosen)
    attacks = sorted(set.intersection(*(set(board["suites"][suite]["attacks"]) for _, board, _ in runs)))
    out: dict[str, Any] = {"suite": suite, "eps": chosen, "models": models, "attacks": attacks, "runs": []}
    for path, board, cells in runs:
        table = board["suites"][suite]["by_eps"][key]["table"]
        info = board["suites"][suite]["model_info"]
        ranking = {}
        for attack in attacks:
            values = [table.get(m, {}).get(attack, {}).get("arp") for m in models]
            if all(v is not None for v in values):
                ranking[attack] = mean(values)
        order = sorted(ranking, key=lambda a: -ranking[a])
        paired = paired_difference(cells, better, other, models, chosen) if {better, other} <= set(attacks) else {}
        trends = {}
        for attack in board["suites"][suite]["by_eps"][key]["transfer"]["targets"]:
            per_model = board["suites"][suite]["by_eps"][key]["transfer"]["per_model"].get(attack, {})
            levels: dict[int, list[float]] = {}
            for m in models:
                value = per_model.get(m)
                if value is not None and math.isfinite(value):
                    levels.setdefault(int(info.get(m, {}).get("shared_blocks", -1)), []).append(value)
            by_level = {lvl: mean(v) for lvl, v in sorted(levels.items())}
            trends[attack] = {"by_level": by_level, "spearman": spearman(list(by_level), list(by_level.values()))}
        out["runs"].append({"path": path, "ranking": ranking, "order": order, "top3": order[:3], "paired": paired,
                            "transfer": trends})
    common = [a for a in attacks if all(a in r["ranking"] for r in out["runs"])]
    out["tau"] = {(i, j): kendall_tau([out["runs"][i]["ranking"][a] for a in common],
                                      [out["runs"][j]["ranking"][a] for a in common])
                  for i in range(len(runs)) for j in range(i + 1, len(runs))}
    out["ranked_attacks"] = common
    return out
