"""``mtlbench check``: the CI gate on attack strength and speed.

A baseline (JSON) holds, per attack, the cells of one run (model, eps, seed: ARP and the per-image
scores), its counted passes per image and its time relative to a reference attack run in the same
process. ``check`` runs the same attacks on the same images, models and eps again and compares:

* **strength**: a paired bootstrap over (model, image) of the per-image score difference (the
  images' jackknife pseudo-values of the cell ARP, :func:`benchmark.scoring.image_scores`), each
  cell's images resampled within it. Bootstrap rather than a signed-rank test because the claim
  is about the mean (the ARP is a mean; a signed-rank test asks about the median difference and
  assumes a symmetric one, and per-image differences of a weakened attack are skewed). An attack
  fails only when it got weaker by more than ``tolerance`` ARP points **and** the drop is
  significant at ``alpha`` (one-sided).
* **speed**: counted forward+backward passes per image must not grow, and the attack's time per
  image over the reference attack's (a ratio, so a slower CI machine does not fail the build) must
  not grow by more than ``speed_tolerance``.
* **validity**: a cell whose output the validator refused fails the attack with its reason.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmark.enums import Status
from benchmark.errors import UserError
from benchmark.runner.store import CellResult, ResultsStore
from benchmark.scoring import paired_bootstrap
from benchmark.version import __version__

__all__ = ["AttackCheck", "CheckOptions", "CheckReport", "check", "load_baseline"]

BASELINE_FORMAT = "mtlbench-baseline"
BASELINE_VERSION = 1


@dataclass
class CheckOptions:
    baseline: str
    suite: str | None = None  # default: the baseline's (tiny-nyuv2-resnet34 for a new one)
    profile: str | None = None
    attacks: list[str] | None = None  # default: the baseline's
    models: list[str] | None = None
    eps: list[float] | None = None
    seeds: list[int] | None = None  # default: the baseline's (other seeds: a check of the noise)
    reference: str | None = None  # default: the baseline's, pgd:total for a new one
    tolerance: float = 1.0  # ARP points
    alpha: float = 0.05
    speed_tolerance: float = 0.5  # the time ratio may grow by this share
    passes_tolerance: float = 0.0  # counted passes per image may grow by this share
    update: bool = False
    device: str = "cpu"
    threads: int | None = None
    workers: int | None = None
    resamples: int = 10000
    cell_timeout: float | None = None  # seconds (None: the profile's; 0: no limit)
    images: int | None = None  # the first N images of the split (None: the baseline's, else the profile's)


@dataclass
class AttackCheck:
    """The verdict on one attack."""

    attack: str
    before: float | None = None  # mean cell ARP of the baseline
    after: float | None = None
    delta: float | None = None  # paired mean per-image score difference (ARP points), with its CI
    low: float | None = None
    high: float | None = None
    p: float | None = None
    passes_before: float | None = None
    passes_after: float | None = None
    ratio_before: float | None = None
    ratio_after: float | None = None
    failures: list[str] = field(default_factory=list)
    per_model: list[dict[str, Any]] = field(default_factory=list)
    invalid: bool = False  # an output the validator refused (or a failed cell): no baseline is written from it

    @property
    def ok(self) -> bool:
        return not self.failures


@dataclass
class CheckReport:
    attacks: list[AttackCheck]
    baseline: dict[str, Any]
    new: dict[str, Any]
    seconds: float = 0.0
    written: Path | None = None

    @property
    def ok(self) -> bool:
        return all(a.ok for a in self.attacks)


def load_baseline(path: str | Path) -> dict[str, Any]:
    """A baseline file, checked for what ``check`` reads from it."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except OSError as exc:
        raise UserError(f"baseline {p}: cannot read it ({exc.strerror})") from None
    except ValueError as exc:
        raise UserError(f"baseline {p} is not valid JSON ({exc})") from None
    except RecursionError:
        raise UserError(f"baseline {p} nests its values too deeply to be a baseline") from None
    if not isinstance(data, dict) or data.get("format") != BASELINE_FORMAT:
        raise UserError(f"baseline {p} is not an mtlbench baseline (no \"format\": \"{BASELINE_FORMAT}\"); "
                        "write one with `mtlbench check --baseline FILE --update --attacks ...`")
    if data.get("version") != BASELINE_VERSION:
        raise UserError(f"baseline {p} has version {data.get('version')!r}; this mtlbench reads {BASELINE_VERSION}")
    for key, kind in (("suite", str), ("profile", str), ("models", list), ("eps", list), ("seeds", list),
                      ("reference", str), ("attacks", dict)):
        if not isinstance(data.get(key), kind):
            raise UserError(f"baseline {p}: {key!r} is missing or not a {kind.__name__}")
    if "images" in data and data["images"] is not None:
        from benchmark.suites import MAX_EVAL_SIZE

        images = data["images"]
        if isinstance(images, bool) or not isinstance(images, int) or not 1 <= images <= MAX_EVAL_SIZE:
            raise UserError(f"baseline {p}: \"images\" is {images!r}, expected an integer in [1, {MAX_EVAL_SIZE}] "
                            "(the images its cells were scored on); write it again with --update")
    for name, entry in data["attacks"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("cells"), list):
            raise UserError(f"baseline {p}: attack {name!r} has no list of cells")
        for cell in entry["cells"]:
            if not isinstance(cell, dict) or not {"model", "eps", "seed", "arp", "ids", "score"} <= set(cell):
                raise UserError(f"baseline {p}: a cell of attack {name!r} lacks one of model, eps, seed, arp, ids, "
                                "score")
            where = f"baseline {p}: {name} on {cell['model']!s:.60} eps {cell['eps']!s:.20} seed {cell['seed']!s:.20}"
            if not isinstance(cell["eps"], int | float) or isinstance(cell["eps"], bool):
                raise UserError(f"{where}: eps is not a number")
            if not isinstance(cell["ids"], list) or not isinstance(cell["score"], list):
                raise UserError(f"{where}: ids and score must be lists")
            if len(cell["score"]) != len(cell["ids"]):
                raise UserError(f"{where}: {len(cell['score'])} scores for {len(cell['ids'])} images; the file was "
                                "edited or cut short: write it again with --update")
            if not all(v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in cell["score"]):
                raise UserError(f"{where}: a score is not a number")
    return data


def _summarise(cells: list[CellResult], reference: list[CellResult]) -> dict[str, Any]:
    """One attack's entry of a baseline, from its cells of one run (and the reference's).

    The time ratio is the median over (model, eps, seed) of the attack's time over the reference
    attack's time on the same cell: the median, because the first cells a worker runs also pay
    for its warm-up, whichever attack they are."""
    import statistics

    images = sum(c.images for c in cells)
    batches = sum(c.batches for c in cells)
    ref = {(c.model, c.eps, c.seed): c for c in reference}
    ratios = [c.attack_s / ref[k].attack_s for c in cells
              if (k := (c.model, c.eps, c.seed)) in ref and ref[k].attack_s > 0 and c.attack_s > 0]
    valid = [c for c in cells if c.status == Status.VALID]
    return {
        "options": cells[0].config.get("options", {}) if cells else {},
        "arp": sum(c.arp for c in valid) / len(valid) if valid and len(valid) == len(cells) else None,
        # pooled over the cells: a model call on a batch is one pass of each of its images
        "passes_per_image": (sum(c.forward_passes + c.backward_passes for c in cells) / batches) if batches else None,
        "time_per_image_s": sum(c.attack_s for c in cells) / images if images else None,
        "time_ratio": statistics.median(ratios) if ratios else None,
        "cells": [{"model": c.model, "eps": c.eps, "seed": c.seed, "status": c.status, "reason": c.reason,
                   "arp": c.arp, "ids": c.per_image.get("ids", []), "score": c.per_image.get("score", [])}
                  for c in cells],
    }


def _run(opts: CheckOptions, suite: str, profile: str, attacks: list[str], models: list[str] | None,
         eps: list[float] | None, seeds: list[int] | None, reference: str, console,
         images: int | None = None) -> dict[str, list[CellResult]]:
    from benchmark.runner.run import RunOptions, run

    with tempfile.TemporaryDirectory(prefix="mtlbench-check-") as tmp:
        run_options = RunOptions(suite=suite, profile=profile, attacks=list(dict.fromkeys([*attacks, reference])),
                             models=models, eps=eps, seeds=seeds, device=opts.device,
                             results=str(Path(tmp) / "check.db"),
                             defenses=["none"], threads=opts.threads, workers=opts.workers,
                             cell_timeout=opts.cell_timeout, images=images)
        summary = run(run_options, console=console)
        with ResultsStore(run_options.results, readonly=True) as store:
            cells = [c for c in map(store.get, summary.keys) if c is not None]
    by_attack: dict[str, list[CellResult]] = defaultdict(list)
    for c in cells:
        by_attack[c.attack].append(c)
    return by_attack


def _compare(name: str, base: dict[str, Any], new: dict[str, Any], opts: CheckOptions) -> AttackCheck:
    out = AttackCheck(name, before=base.get("arp"), after=new.get("arp"),
                      passes_before=base.get("passes_per_image"), passes_after=new.get("passes_per_image"),
                      ratio_before=base.get("time_ratio"), ratio_after=new.get("time_ratio"))
    for cell in new["cells"]:
        if cell["status"] != Status.VALID:
            out.invalid = True
            out.failures.append(f"{cell['status']} output on {cell['model']} eps {cell['eps']:g} seed {cell['seed']}: "
                                f"{cell['reason']}")
    if out.failures:
        return out
    base_seeds = sorted({c["seed"] for c in base["cells"]})
    new_seeds = sorted({c["seed"] for c in new["cells"]})
    seed_of = dict(zip(new_seeds, base_seeds, strict=False))  # other seeds pair in order
    old = {(c["model"], float(c["eps"]), c["seed"]): c for c in base["cells"]}
    before, after, groups = [], [], []
    for cell in new["cells"]:
        match = old.get((cell["model"], float(cell["eps"]), seed_of.get(cell["seed"])))
        if match is None:
            raise UserError(f"the baseline has no cell of {name} on {cell['model']} at eps {cell['eps']:g}; "
                            "write it again with --update")
        if list(match["ids"]) != list(cell["ids"]) or len(match["score"]) != len(match["ids"]):
            raise UserError(f"{name} on {cell['model']} eps {cell['eps']:g}: the baseline was made on other images "
                            f"({len(match['ids'])} images from {match['ids'][:1]}, now {len(cell['ids'])} from "
                            f"{cell['ids'][:1]}); write it again with --update")
        before.append([math.nan if v is None else v for v in match["score"]])
        after.append([math.nan if v is None else v for v in cell["score"]])
        groups.append((cell, match))
    out.delta, out.low, out.high, out.p = paired_bootstrap(before, after, n_resamples=opts.resamples)
    by_model: dict[str, list[int]] = defaultdict(list)
    for i, (cell, _) in enumerate(groups):
        by_model[cell["model"]].append(i)
    for model, idx in by_model.items():
        d, lo, hi, p = paired_bootstrap([before[i] for i in idx], [after[i] for i in idx], n_resamples=opts.resamples)
        out.per_model.append({"model": model, "before": _mean(groups[i][1]["arp"] for i in idx),
                              "after": _mean(groups[i][0]["arp"] for i in idx), "delta": d, "low": lo, "high": hi,
                              "p": p})
    drop = (out.before - out.after) if out.before is not None and out.after is not None else None
    if drop is not None and drop > opts.tolerance and out.p < opts.alpha:
        out.failures.append(f"weaker: ARP {out.before:.2f} -> {out.after:.2f} (drop {drop:.2f} > tolerance "
                            f"{opts.tolerance:g}; paired p = {out.p:.4f} < alpha {opts.alpha:g})")
    if (out.passes_before is not None and out.passes_after is not None
            and out.passes_after > out.passes_before * (1 + opts.passes_tolerance) + 1e-9):
        out.failures.append(f"more passes: {out.passes_before:g} -> {out.passes_after:g} forward+backward passes "
                            "per image")
    if (out.ratio_before and out.ratio_after and math.isfinite(out.ratio_before)
            and out.ratio_after > out.ratio_before * (1 + opts.speed_tolerance)):
        out.failures.append(f"slower: {out.ratio_after:.2f}x the reference's time per image, baseline "
                            f"{out.ratio_before:.2f}x (tolerance +{opts.speed_tolerance:.0%})")
    return out


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


def check(opts: CheckOptions, *, console=None) -> CheckReport:
    """Run the baseline's attacks again and compare (or, with ``update``, write the baseline)."""
    import time

    from benchmark.progress import make_console
    from benchmark.suites import load_suite

    console = console or make_console(stderr=True)
    path = Path(opts.baseline)
    base = load_baseline(path) if path.exists() else None
    if base is None and not opts.update:
        raise UserError(f"baseline {path} does not exist; write it first with `mtlbench check --baseline {path} "
                        "--update --attacks ATTACK [--models ...] [--eps ...]`")
    if base is not None and opts.suite and load_suite(opts.suite).name != load_suite(base["suite"]).name:
        raise UserError(f"baseline {path} is for the suite {base['suite']}, not {opts.suite}; pass --update to "
                        "replace it")
    # a suite as the user names it (a standard suite's name, or a manifest's path)
    suite = opts.suite or (base["suite"] if base else "tiny-nyuv2-resnet34")
    profile = opts.profile or (base["profile"] if base else "quick")
    attacks = opts.attacks or (list(base["attacks"]) if base else None)
    if not attacks:
        raise UserError("name the attacks to check with --attacks (a new baseline has none)")
    if base is not None and not opts.update:
        unknown = [a for a in attacks if a not in base["attacks"]]
        if unknown:
            raise UserError(f"the baseline {path} has no attack {unknown[0]!r} (it has "
                            f"{', '.join(base['attacks'])}); add it with --update")
    models = opts.models or (base["models"] if base else None)
    eps = opts.eps or (base["eps"] if base else None)
    seeds = opts.seeds or (base["seeds"] if base else None)
    reference = opts.reference or (base["reference"] if base else "pgd:total")
    start = time.perf_counter()
    # the baseline's images (an older baseline without the count: the profile's)
    images = opts.images or (base.get("images") if base and isinstance(base.get("images"), int) else None)
    by_attack = _run(opts, suite, profile, attacks, models, eps, seeds, reference, console, images)
    if not by_attack:
        raise UserError(f"no cell ran: the suite {suite} has no model with weights among "
                        f"{', '.join(models) if models else 'its members'} for these attacks and eps")
    ref_cells = by_attack.get(reference, [])
    any_cell = next(iter(by_attack.values()))[0]
    every = [c for cells in by_attack.values() for c in cells]
    new = {"format": BASELINE_FORMAT, "version": BASELINE_VERSION, "suite": suite, "profile": profile,
           "models": list(dict.fromkeys(c.model for c in every)),
           "eps": sorted({c.eps for c in every}), "seeds": sorted({c.seed for c in every}),
           "images": any_cell.images, "reference": reference, "device": any_cell.device,
           "torch_version": any_cell.torch_version, "mtlbench_version": __version__,
           "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
           "attacks": {}}
    for name, cells in by_attack.items():
        if name == reference and reference not in attacks:
            continue
        new["attacks"][name] = _summarise(cells, ref_cells)
    report = CheckReport(attacks=[], baseline=base or {}, new=new)
    if base is not None:
        report.attacks = [_compare(name, base["attacks"][name], new["attacks"][name], opts)
                          for name in new["attacks"] if name in base["attacks"]]
    else:
        report.attacks = [_compare(name, entry, entry, opts) for name, entry in new["attacks"].items()]
    report.seconds = time.perf_counter() - start
    if opts.update:
        bad = [a for a in report.attacks if a.invalid]
        if bad:
            raise UserError(f"not writing {path}: {bad[0].attack} has invalid outputs ({bad[0].failures[0]})")
        if base is not None:  # attacks of the old baseline that were not run again are kept
            new["attacks"] = {**{k: v for k, v in base["attacks"].items() if k not in new["attacks"]},
                              **new["attacks"]}
        path.write_text(json.dumps(new, indent=1, sort_keys=True) + "\n")
        report.written = path
    return report

