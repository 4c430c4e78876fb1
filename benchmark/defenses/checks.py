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
    the strongest at the smallest (the strongest, because one-step FGSM alone need not rise).

(a) and (b) look at the model (:func:`model_checks`, run when a defended target or an external
model is loaded, stored with its description); (c)-(e) compare its cells
(:func:`result_checks`). A flagged target is shown as "evaluation unreliable: <check, numbers>"
and never as simply robust.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from benchmark.enums import Status

__all__ = ["VANISHING", "evaluation_flags", "model_checks", "result_checks", "target_checks"]

#: an image's input gradient counts as vanishing below this (largest absolute component)
VANISHING = 1e-10
#: a share of images with vanishing gradients above which (a) flags the target
VANISHING_SHARE = 0.1


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
            "evidence": f"two identical calls differ by up to {gap:.3g} although the defense declares no randomness"}
    return out


def result_checks(arps: Mapping[tuple[str, float], float], gradient_free: set[str]) -> dict:
    """Checks (c)-(e) of the module docstring from one target's ARP per (attack, eps) (valid
    cells only); ``gradient_free``: the attacks that use no gradient."""
    out: dict[str, dict] = {}
    eps_list = sorted({e for _, e in arps})
    beaten = []
    for e in eps_list:
        here = {a: v for (a, ee), v in arps.items() if ee == e}
        black = {a: v for a, v in here.items() if a in gradient_free}
        white = {a: v for a, v in here.items() if a not in gradient_free}
        if black and white:
            a_b, v_b = max(black.items(), key=lambda kv: kv[1])
            a_w, v_w = max(white.items(), key=lambda kv: kv[1])
            if v_b > v_w:
                beaten.append(f"eps {e:g}: {a_b} {v_b:.2f} > {a_w} {v_w:.2f}")
    if any(a in gradient_free for a, _ in arps):
        out["black_box_beats_white_box"] = {"flag": bool(beaten), "evidence": "; ".join(beaten)
                                            or "every black-box ARP is below the strongest white-box one"}
    one_step = []
    for (a, e), v in arps.items():
        optimizer, _, objective = a.partition(":")
        if optimizer == "fgsm" and (f"pgd:{objective}", e) in arps and v > arps[(f"pgd:{objective}", e)]:
            one_step.append(f"eps {e:g}: {a} {v:.2f} > pgd:{objective} {arps[(f'pgd:{objective}', e)]:.2f}")
    if any(a.startswith("fgsm:") and (f"pgd:{a.partition(':')[2]}", e) in arps for a, e in arps):
        out["one_step_beats_multi_step"] = {"flag": bool(one_step), "evidence": "; ".join(sorted(one_step))
                                            or "multi-step PGD is at least as strong as FGSM"}
    if len(eps_list) >= 2:
        strongest = {}
        for e in (eps_list[0], eps_list[-1]):
            here = [(v, a) for (a, ee), v in arps.items() if ee == e and math.isfinite(v)]
            strongest[e] = max(here) if here else None
        low, high = strongest[eps_list[0]], strongest[eps_list[-1]]
        if low is not None and high is not None:
            text = (f"the strongest attack: {low[1]} {low[0]:.2f} at eps {eps_list[0]:g}, {high[1]} {high[0]:.2f} at "
                    f"eps {eps_list[-1]:g}")
            out["arp_not_rising_with_eps"] = {"flag": high[0] <= low[0], "evidence": text}
    return out


_NAMES = {"vanishing_gradients": "(a) vanishing gradients", "undeclared_randomness": "(b) undeclared randomness",
          "black_box_beats_white_box": "(c) black box beats white box",
          "one_step_beats_multi_step": "(d) one-step FGSM beats PGD", "arp_not_rising_with_eps": "(e) ARP not rising "
                                                                                                 "with eps"}


def evaluation_flags(checks: Mapping[str, Mapping]) -> list[str]:
    """The flagged checks as "<check>: <evidence>" lines (empty: nothing flagged)."""
    return [f"{_NAMES.get(name, name)}: {c['evidence']}" for name, c in checks.items() if c.get("flag")]


def _gradient_free(name: str) -> bool:
    from benchmark.attacks.spec import AttackSpec
    from benchmark.errors import UserError

    try:
        return bool(getattr(AttackSpec.parse(name).attack_class, "gradient_free", False))
    except UserError:
        return False  # a plugin that is not installed here


def target_checks(cells, infos: Mapping[str, Mapping]) -> dict[str, dict]:
    """Every check of each target of ``cells`` (one suite's results): the model checks stored with
    its description (``infos``: target -> description) and the checks of its valid cells (the
    protocol's, not a budget curve's extra points), averaged over seeds."""
    values: dict[str, dict[tuple[str, float], list[float]]] = {}
    for c in cells:
        budget = c.config.get("budget")
        if c.status != Status.VALID or c.arp is None or (isinstance(budget, dict) and budget.get("extra")):
            continue
        values.setdefault(c.model, {}).setdefault((c.config.get("attack", c.attack), c.eps), []).append(c.arp)
    out = {}
    for target in sorted(set(values) | set(infos)):
        arps = {k: sum(v) / len(v) for k, v in values.get(target, {}).items()}
        free = {a for a, _ in arps if _gradient_free(a)}
        out[target] = {**dict((infos.get(target) or {}).get("checks") or {}), **result_checks(arps, free)}
    return out
