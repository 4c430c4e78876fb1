"""Cross-model transfer: images crafted white-box on one member (the source) and scored on another
(the target), as a source x target matrix of mean ARP per attack, with the white-box cells on the
diagonal; and the finding the page states: does transfer fall as the two layouts share fewer
blocks?

Two layouts share a block when they split the tasks the same way there (the same task sets at that
backbone block). Transfer is measured relative to what the attack does white-box on the target
(transfer ARP / the target's own white-box ARP), so a fragile target does not look like a good
transfer. The trend is Spearman's correlation between shared blocks and relative transfer over the
ordered (source, target) pairs; its p-value comes from a Mantel permutation test (the models'
labels permuted, rows and columns together, which keeps the dependence between the pairs of one
model), one-sided for the claim that more sharing means more transfer.
"""

from __future__ import annotations

import random
from statistics import mean
from typing import Any

from benchmark.enums import Status
from benchmark.scoring import spearman

__all__ = ["PERMUTATIONS", "model_transfer", "shared_blocks"]

#: label permutations of the Mantel test
PERMUTATIONS = 999
#: the finding is stated as evidence when the one-sided p-value is below this
ALPHA = 0.05


def shared_blocks(a: list[list[list[int]]], b: list[list[list[int]]]) -> int:
    """Blocks at which two layouts (``layout_sets``: per block, the task sets) split the tasks alike."""
    return sum(1 for x, y in zip(a, b, strict=False)
               if {frozenset(s) for s in x} == {frozenset(s) for s in y})


def _split(name: str, source: str) -> str:
    return name.removesuffix(f" from {source}")


def model_transfer(entries: dict[tuple[str, str], dict], transfer: dict[str, tuple[str, str]],
                   models: list[str], info: dict[str, dict]) -> dict[str, Any] | None:
    """The matrix of one eps. ``entries``: (target, attack) -> entry (its ``arp``); ``transfer``:
    each transfer attack's name -> (attack, source); ``models``: the undefended members in page
    order. None when no transfer cell was scored on an undefended member."""
    crafted = {name: pair for name, pair in transfer.items() if any((t, name) in entries for t in models)}
    if not crafted:
        return None
    attacks = sorted({a for a, _ in crafted.values()})
    # grouped by sharing: the most shared layouts (AS) first, the independent ones last
    models = sorted(models, key=lambda m: (-(info.get(m, {}).get("shared_blocks") or 0),
                                           info.get(m, {}).get("mean_branch_block") is None,
                                           -(info.get(m, {}).get("mean_branch_block") or 0), m))
    sources = [m for m in models if any(s == m for _, s in crafted.values())]
    layouts = {m: info.get(m, {}).get("layout_sets") for m in models}
    out: dict[str, Any] = {"attacks": attacks, "sources": sources, "targets": models, "by_attack": {},
                           "shared": {s: {t: shared_blocks(layouts[s], layouts[t]) if layouts.get(s) and layouts.get(t)
                                          else None for t in models} for s in sources},
                           "blocks": max((len(v) for v in layouts.values() if v), default=0)}
    for attack in attacks:
        arp: dict[str, dict[str, float | None]] = {}
        for s in sources:
            row = {}
            for t in models:
                e = entries.get((t, attack if s == t else f"{attack} from {s}"))
                row[t] = e["arp"] if e and e.get("status") == Status.VALID else None
            arp[s] = row
        pairs = []  # (source, target, shared blocks, relative transfer)
        for s in sources:
            for t in models:
                own = arp.get(t, {}).get(t) if t in arp else _own(entries, t, attack)
                v = arp[s][t]
                if s == t or v is None or not own or not layouts.get(s) or not layouts.get(t):
                    continue
                pairs.append((s, t, shared_blocks(layouts[s], layouts[t]), v / own))
        out["by_attack"][attack] = {"arp": arp, "pairs": len(pairs), "by_shared": _by_shared(pairs),
                                    "finding": _finding(pairs, layouts)}
    return out


def _own(entries: dict, target: str, attack: str) -> float | None:
    e = entries.get((target, attack))
    return e["arp"] if e and e.get("status") == Status.VALID else None


def _by_shared(pairs: list[tuple]) -> list[dict[str, Any]]:
    """Relative transfer averaged over the pairs that share each number of blocks."""
    groups: dict[int, list[float]] = {}
    for _, _, k, r in pairs:
        groups.setdefault(k, []).append(r)
    return [{"shared": k, "pairs": len(v), "mean": mean(v)} for k, v in sorted(groups.items(), reverse=True)]


def _finding(pairs: list[tuple], layouts: dict) -> dict[str, Any]:
    """Spearman's rho between shared blocks and relative transfer, and the Mantel p-value."""
    if len(pairs) < 3 or len({k for _, _, k, _ in pairs}) < 2:
        return {"rho": None, "p": None, "text": "too few pairs, or every pair shares as many blocks: no trend to "
                                                "measure"}
    rho = spearman([k for _, _, k, _ in pairs], [r for _, _, _, r in pairs])
    names = sorted({s for s, _, _, _ in pairs} | {t for _, t, _, _ in pairs})
    index = {m: i for i, m in enumerate(names)}
    shared = [[shared_blocks(layouts[a], layouts[b]) for b in names] for a in names]
    at = [(index[s], index[t]) for s, t, _, _ in pairs]
    values = [v for _, _, _, v in pairs]
    rng = random.Random(0)
    at_least = 0
    for _ in range(PERMUTATIONS):
        # the layouts travel with the permuted labels; the transfer values stay where they are
        perm = list(range(len(names)))
        rng.shuffle(perm)
        r = spearman([shared[perm[i]][perm[j]] for i, j in at], values)
        if r == r and r >= rho:
            at_least += 1
    p = (1 + at_least) / (1 + PERMUTATIONS)
    if rho != rho:
        text = "relative transfer does not vary: no trend to measure"
    elif rho > 0 and p < ALPHA:
        text = (f"yes: transfer falls as the layouts share fewer blocks (Spearman rho = {rho:+.2f} over "
                f"{len(pairs)} pairs, Mantel permutation p = {p:.3f})")
    else:
        text = (f"no clear evidence that transfer falls as the layouts share fewer blocks (Spearman rho = {rho:+.2f} "
                f"over {len(pairs)} pairs, Mantel permutation p = {p:.3f}, one-sided)")
    return {"rho": rho, "p": p, "text": text}
