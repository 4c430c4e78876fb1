"""Is a defense's evaluation reliable? Gradient-masking checks, in one place (as AutoAttack's
``checks.py`` keeps its own).

A defense can look robust because the attacks failed, not because it is: its gradients vanish
(shattered or obfuscated), it is randomised without saying so (so one forward pass is one draw
among many), or its loss surface fools first-order attacks. Each check here names what it saw:

(a) **vanishing gradients**: the input gradient that the attacks follow (through BPDA and EOT
    where the defense declares them) is zero or vanishing on a share of the images;
(b) **undeclared randomness**: two identical calls give different outputs, yet the defense does
    not declare itself randomised (so it is not attacked with EOT, nor scored over draws);
(c) **black box beats white box**: the score-based black-box attack (Square) causes a higher ARP
    than every gradient-based attack at the same eps;
(d) **one step beats many**: one-step FGSM causes a higher ARP than multi-step PGD with the same
    objective at the same eps;
(e) **ARP does not rise with eps**: the strongest attack's ARP at the largest eps is not above
    the strongest at the smallest (the strongest, because one-step FGSM alone need not rise);
(f) **transfer beats white box**: images crafted white-box on another model (the defended
    member's own undefended model) cause a higher ARP on the target than the same attack run
    white-box on the target itself: its gradients lead the attack astray;
(g) **non-adaptive beats adaptive**: against a detector, PGD that ignores the detector causes a
    higher (attacker's view) ARP than the same PGD that descends the detector's score
    (``evade-pgd``): the adaptive attack is broken, not the detector strong.

(a) and (b) look at the model (:func:`model_checks`, run when a defended target or an external
model is loaded, stored with its description); (c)-(g) compare its cells
(:func:`result_checks`). A flagged target is shown as "evaluation unreliable: <check, numbers>"
and never as simply robust.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import mean
from typing import Any

import torch

from benchmark.enums import Status

__all__ = ["CHECK_NAMES", "MARGIN", "MODEL_CHECKS", "VANISHING", "Observed", "check_rows", "evaluation_flags",
           "model_checks", "result_checks", "target_checks"]

#: an image's input gradient counts as vanishing below this (largest absolute component)
VANISHING = 1e-10
#: a share of images with vanishing gradients above which (a) flags the target
VANISHING_SHARE = 0.1
#: the checks that look at the model (run when any target is loaded)
MODEL_CHECKS = ("vanishing_gradients", "undeclared_randomness")


def model_checks(model: torch.nn.Module, tasks, batch: dict[str, torch.Tensor], *, randomised: bool) -> dict:
    """Checks (a) and (b) of the module docstring on one batch, as the attacks see the model (its
    gradient through BPDA and EOT where the defense declares them). Returns
    ``{check: {"flag": bool, "evidence": str}}``; the model is left as it was."""
    from benchmark.attacks.objectives import output_losses

    x = batch["image"].detach().clone().requires_grad_(True)
    with torch.enable_grad():
        total = output_losses(model(x), batch, tasks).sum()
    grads = torch.autograd.grad(total, x, allow_unused=True)[0] if total.requires_grad else None
    n = x.shape[0]
    if grads is None:
        vanishing = n
    else:
        largest = grads.detach().abs().flatten(1).amax(1)
        vanishing = int(((largest <= VANISHING) | ~torch.isfinite(largest)).sum())
    out = {"vanishing_gradients": {
        "flag": vanishing / n > VANISHING_SHARE,
        "evidence": f"{vanishing} of {n} images have an input gradient of at most {VANISHING:g} (largest component)"}}
    if not randomised:
        with torch.no_grad():
            first, second = model(batch["image"]), model(batch["image"])
        gap = max(float((first[k].float() - second[k].float()).abs().max()) for k in first)
        out["undeclared_randomness"] = {
            "flag": gap != 0,
            "evidence": (f"two identical calls differ by up to {gap:.3g} although the defense declares no randomness"
                         if gap != 0 else "two identical calls give identical outputs")}
    else:
        out["undeclared_randomness"] = {"flag": None, "evidence": "the defense declares its randomness: attacked with "
                                                                  "EOT and scored over draws"}
    return out


@dataclass(frozen=True)
class Observed:
    """One valid cell of a target as the result checks see it: its ARP, its seed and, per image,
    the image ids and scores (jackknife pseudo-values of the ARP) that pair it with another
    attack's cell on the same images."""

    arp: float
    seed: int = 0
    ids: tuple = ()
    scores: tuple = ()


#: a difference between two attacks' ARPs counts only when its paired 95% interval over images
#: excludes 0; without per-image scores to pair, when it exceeds this margin (ARP points)
MARGIN = 1.0


def _paired(stronger: list[Observed], weaker: list[Observed]) -> dict[str, Any]:
    """``stronger`` - ``weaker`` (two attacks' cells on one target at one eps): the mean ARP
    difference, and over their images paired by seed and id, the paired bootstrap's 95% interval."""
    from benchmark.scoring import paired_bootstrap

    delta = mean(o.arp for o in stronger) - mean(o.arp for o in weaker)
    before, after = [], []
    for a in stronger:
        b = next((w for w in weaker if w.seed == a.seed and w.ids == a.ids and w.scores), None)
        if b is not None and a.scores and len(a.scores) == len(b.scores):
            before.append(list(b.scores))
            after.append(list(a.scores))
    if not after:
        return {"delta": delta, "low": None, "high": None, "images": 0}
    paired, low, high, _ = paired_bootstrap(before, after)
    ok = math.isfinite(low) and math.isfinite(high)
    return {"delta": paired if ok else delta, "low": low if ok else None, "high": high if ok else None,
            "images": sum(len(x) for x in after)}


def _above(d: dict[str, Any]) -> bool:
    """Is the difference clearly above 0: its interval's lower bound, else the margin."""
    return d["low"] > 0 if d["low"] is not None else d["delta"] > MARGIN


def _text(d: dict[str, Any]) -> str:
    if d["low"] is None:
        return f"{d['delta']:+.2f} (no per-image scores to pair; the margin is {MARGIN:g} ARP point)"
    return f"{d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] paired over {d['images']} images"


def result_checks(results: Mapping[tuple[str, float], list[Observed]], gradient_free: set[str],
                  transfers: Mapping[tuple[str, str, float], list[Observed]] | None = None) -> dict:
    """Checks (c)-(f) of the module docstring from one target's valid cells (``results``:
    (attack, eps) -> its white-box cells, over seeds; ``transfers``: (attack, source, eps) -> the
    cells of that attack crafted on ``source``); ``gradient_free``: the attacks that use no gradient.
    Every check is there: ``{"flag": True/False, "evidence": ...}`` when it ran, ``{"flag": None,
    "evidence": why it did not}`` otherwise. A difference flags only when it is clear of the noise:
    its 95% interval, paired over the images of the two cells, lies above 0 (above :data:`MARGIN`
    where no per-image scores pair them); the evidence gives the interval."""
    out: dict[str, dict] = {}
    arps = {k: mean(o.arp for o in v) for k, v in results.items() if v}
    eps_list = sorted({e for _, e in arps})
    beaten, seen = [], []
    for e in eps_list:
        here = {a: v for (a, ee), v in arps.items() if ee == e}
        black = {a: v for a, v in here.items() if a in gradient_free}
        white = {a: v for a, v in here.items() if a not in gradient_free}
        if black and white:
            a_b, v_b = max(black.items(), key=lambda kv: kv[1])
            a_w, v_w = max(white.items(), key=lambda kv: kv[1])
            d = _paired(results[(a_b, e)], results[(a_w, e)])
            line = f"eps {e:g}: {a_b} {v_b:.2f} vs {a_w} {v_w:.2f}: {_text(d)}"
            (beaten if _above(d) else seen).append(line)
    if any(a in gradient_free for a, _ in arps):
        if not seen and not beaten:
            out["black_box_beats_white_box"] = {"flag": None, "evidence": "no white-box attack ran at the black-box "
                                                                          "attack's eps"}
        else:
            out["black_box_beats_white_box"] = {
                "flag": bool(beaten), "evidence": "; ".join(beaten) if beaten else
                "no black-box attack is clearly stronger than the strongest white-box one (" + "; ".join(seen) + ")"}
    else:
        out["black_box_beats_white_box"] = {"flag": None, "evidence": "no black-box attack (e.g. square) ran on it"}
    one_step, level = [], []
    for (a, e), v in sorted(arps.items()):
        optimizer, _, objective = a.partition(":")
        other = (f"pgd:{objective}", e)
        if optimizer == "fgsm" and other in arps:
            d = _paired(results[(a, e)], results[other])
            line = f"eps {e:g}: {a} {v:.2f} vs pgd:{objective} {arps[other]:.2f}: {_text(d)}"
            (one_step if _above(d) else level).append(line)
    if one_step or level:
        out["one_step_beats_multi_step"] = {
            "flag": bool(one_step), "evidence": "; ".join(one_step) if one_step else
            "FGSM is not clearly stronger than PGD with the same objective (" + "; ".join(level) + ")"}
    else:
        out["one_step_beats_multi_step"] = {"flag": None, "evidence": "no FGSM and PGD attack with the same objective "
                                                                      "ran at one eps"}
    if len(eps_list) >= 2:
        strongest = {}
        for e in (eps_list[0], eps_list[-1]):
            here = [(v, a) for (a, ee), v in arps.items() if ee == e and math.isfinite(v)]
            strongest[e] = max(here) if here else None
        low, high = strongest[eps_list[0]], strongest[eps_list[-1]]
        if low is not None and high is not None:
            d = _paired(results[(high[1], eps_list[-1])], results[(low[1], eps_list[0])])
            falls = d["high"] <= 0 if d["high"] is not None else d["delta"] <= 0
            text = (f"the strongest attack: {low[1]} {low[0]:.2f} at eps {eps_list[0]:g}, {high[1]} {high[0]:.2f} at "
                    f"eps {eps_list[-1]:g}; the rise {_text(d)}")
            out["arp_not_rising_with_eps"] = {"flag": falls, "evidence": text}
    if "arp_not_rising_with_eps" not in out:
        out["arp_not_rising_with_eps"] = {"flag": None, "evidence": "fewer than two eps ran"}
    out["transfer_beats_white_box"] = _transfer_check(results, transfers or {})
    out["non_adaptive_beats_adaptive"] = _adaptive_check(results)
    return out


def _clearly_stronger(pairs, *, nothing: str, not_clearly: str) -> dict[str, Any]:
    """Flag when, in any of ``pairs`` (``(label, first, second)``), the first attack's ARP is
    clearly above the second's, paired over images; the evidence lists every pair."""
    beats, below = [], []
    for label, first, second in pairs:
        d = _paired(first, second)
        (beats if _above(d) else below).append(f"{label}: {_text(d)}")
    if not beats and not below:
        return {"flag": None, "evidence": nothing}
    return {"flag": bool(beats), "evidence": "; ".join(beats) if beats else f"{not_clearly} (" + "; ".join(below) + ")"}


def _adaptive_check(results: Mapping[tuple[str, float], list[Observed]]) -> dict[str, Any]:
    """Check (g): ``pgd:X`` against ``evade-pgd:X`` (its adaptive version) at each eps, paired."""
    pairs = []
    for (a, e), adaptive in sorted(results.items()):
        plain = results.get((a.removeprefix("evade-"), e)) if a.startswith("evade-pgd:") else None
        if plain and adaptive:
            pairs.append((f"eps {e:g}: {a.removeprefix('evade-')} {mean(o.arp for o in plain):.2f} vs {a} "
                          f"{mean(o.arp for o in adaptive):.2f}", plain, adaptive))
    return _clearly_stronger(pairs, nothing="no adaptive attack (evade-pgd) and its non-adaptive PGD ran at one eps",
                             not_clearly="the non-adaptive attack is not clearly stronger than the adaptive one")


def _transfer_check(results: Mapping[tuple[str, float], list[Observed]],
                    transfers: Mapping[tuple[str, str, float], list[Observed]]) -> dict[str, Any]:
    """Check (f): each transfer attack against the same attack white-box on the target, paired."""
    if not transfers:
        return {"flag": None, "evidence": "no transfer attack ran on it"}
    pairs = []
    for (a, source, e), crafted in sorted(transfers.items()):
        own = results.get((a, e))
        if crafted and own:
            pairs.append((f"eps {e:g}: {a} crafted on {source} {mean(o.arp for o in crafted):.2f} vs white-box "
                          f"{mean(o.arp for o in own):.2f}", crafted, own))
    return _clearly_stronger(pairs, nothing="no white-box cell of the transferred attacks at their eps",
                             not_clearly="no transfer attack is clearly stronger than the same attack white-box")


CHECK_NAMES = {"vanishing_gradients": "(a) vanishing gradients", "undeclared_randomness": "(b) undeclared randomness",
          "black_box_beats_white_box": "(c) black box beats white box",
          "one_step_beats_multi_step": "(d) one-step FGSM beats PGD", "arp_not_rising_with_eps": "(e) ARP not rising "
                                                                                                 "with eps",
          "transfer_beats_white_box": "(f) transfer beats white box",
          "non_adaptive_beats_adaptive": "(g) non-adaptive beats adaptive"}


def evaluation_flags(checks: Mapping[str, Mapping]) -> list[str]:
    """The flagged checks as "<check>: <evidence>" lines (empty: nothing flagged)."""
    return [f"{CHECK_NAMES.get(name, name)}: {c['evidence']}" for name, c in checks.items() if c.get("flag")]


def check_rows(checks: Mapping[str, Mapping]) -> list[dict[str, str]]:
    """Every check of a target, in (a)-(g) order, as ``{"check", "status", "evidence"}`` with the
    status ``passed``, ``flagged`` or ``not run`` (the evidence says why)."""
    rows = []
    for name, label in CHECK_NAMES.items():
        c = checks.get(name) or {"flag": None, "evidence": "not run"}
        status = "not run" if c.get("flag") is None else ("flagged" if c["flag"] else "passed")
        rows.append({"check": label, "status": status, "evidence": c.get("evidence", "")})
    return rows


def _gradient_free(name: str) -> bool:
    from benchmark.attacks.spec import AttackSpec
    from benchmark.errors import UserError

    try:
        return bool(getattr(AttackSpec.parse(name).attack_class, "gradient_free", False))
    except UserError:
        return False  # a plugin that is not installed here


def target_checks(cells, infos: Mapping[str, Mapping]) -> dict[str, dict]:
    """Every check of each target of ``cells`` (one view's results): the model checks stored with
    its description (``infos``: target -> description; for a target loaded before they existed,
    "not run") and the checks of its valid cells (the protocol's, not a budget curve's extra
    points), over seeds."""
    values: dict[str, dict[tuple[str, float], list[Observed]]] = {}
    transfers: dict[str, dict[tuple[str, str, float], list[Observed]]] = {}
    for c in cells:
        budget = c.config.get("budget")
        if c.status != Status.VALID or c.arp is None or (isinstance(budget, dict) and budget.get("extra")):
            continue
        per_image = c.per_image or {}
        seen = Observed(c.arp, c.seed, tuple(per_image.get("ids") or ()), tuple(per_image.get("score") or ()))
        source = c.config.get("crafted_on")
        if source:  # crafted on another model: check (f) only
            attack = c.attack.removesuffix(f" from {source}")
            transfers.setdefault(c.model, {}).setdefault((attack, source, c.eps), []).append(seen)
        else:
            values.setdefault(c.model, {}).setdefault((c.config.get("attack", c.attack), c.eps), []).append(seen)
    out = {}
    for target in sorted(set(values) | set(infos)):
        results = values.get(target, {})
        free = {a for a, _ in results if _gradient_free(a)}
        stored = dict((infos.get(target) or {}).get("checks") or {})
        model = {name: stored.get(name) or {"flag": None, "evidence": "not recorded when this model was loaded (run "
                                                                       "it again with this version to record it)"}
                 for name in MODEL_CHECKS}
        out[target] = {**model, **result_checks(results, free, transfers.get(target))}
    return out
