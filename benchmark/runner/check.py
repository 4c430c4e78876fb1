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
* **speed**: counted forward+backward passes per image must not grow, and the attack's time over
  the reference attack's (a ratio, so a slower CI machine does not fail the build) must not grow by
  more than ``speed_tolerance``. The ratio is measured in pairs (:func:`paired_time_ratio`): the
  attack and the reference run in alternation on one batch of one cell, several rounds, and the
  median of the rounds' ratios is kept. Cells timed one after the other, minutes apart, see
  whatever else loads the machine at the time (an unchanged attack measured 5.65x the reference
  against a baseline of 3.05x on a loaded machine); a round's two runs share it. As for strength,
  an attack fails only when its median ratio grew by more than the tolerance **and** the growth
  is significant at ``alpha`` (:func:`slower_p`, over the rounds of both checks).
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

__all__ = ["AttackCheck", "CheckOptions", "CheckReport", "check", "load_baseline", "paired_time_ratio",
           "slower_p"]

BASELINE_FORMAT = "mtlbench-baseline"
BASELINE_VERSION = 2
#: version 1 kept the median over cells of the cells' time ratio (load-sensitive); readable to be
#: written again with --update
OLD_BASELINE_VERSIONS = (1,)
#: rounds of the paired speed measurement, after one warm-up run of each attack
SPEED_ROUNDS = 7
#: one measurement of a round repeats the attack (on the same batch, with the same seed) until it
#: lasts about this long, at most MAX_REPEATS times
MIN_TIMED_S = 0.25
MAX_REPEATS = 50


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
    ratio_before: float | None = None  # the attack's time over the reference's, paired (:func:`paired_time_ratio`)
    ratio_after: float | None = None
    timing: dict[str, Any] | None = None  # the new paired measurement (cell, rounds, each round's ratio)
    speed_p: float | None = None  # p that it got slower beyond the tolerance (only when its median ratio did)
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
    if data.get("version") != BASELINE_VERSION and data.get("version") not in OLD_BASELINE_VERSIONS:
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


def _summarise(cells: list[CellResult], timing: dict[str, Any] | None) -> dict[str, Any]:
    """One attack's entry of a baseline, from its cells of one run and its paired timing
    (:func:`paired_time_ratio`; None when a cell failed, so that no timing was run)."""
    images = sum(c.images for c in cells)
    batches = sum(c.batches for c in cells)
    valid = [c for c in cells if c.status == Status.VALID]
    return {
        "options": cells[0].config.get("options", {}) if cells else {},
        "arp": sum(c.arp for c in valid) / len(valid) if valid and len(valid) == len(cells) else None,
        # pooled over the cells: a model call on a batch is one pass of each of its images
        "passes_per_image": (sum(c.forward_passes + c.backward_passes for c in cells) / batches) if batches else None,
        "time_per_image_s": sum(c.attack_s for c in cells) / images if images else None,
        "time_ratio": timing["time_ratio"] if timing else None,
        "timing": timing,
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


def paired_time_ratio(suite: str, cell: CellResult, reference: CellResult, *, device: str = "cpu",
                      rounds: int = SPEED_ROUNDS, min_s: float = MIN_TIMED_S,
                      contexts: dict[tuple, Any] | None = None) -> dict[str, Any]:
    """The attack of ``cell`` timed against the reference attack of ``reference`` (a cell of the
    same model, eps and seed) on the cell's first batch, in this process, with the cell's seed so
    that every run does the same work. One warm-up run of each sets how many runs in a row one
    measurement takes (enough for ``min_s`` seconds: a single FGSM run lasts milliseconds, which a
    busy machine's scheduler alone can double); then ``rounds`` rounds each measure both, which goes
    first alternating. A round's ratio is the attack's time per run over the reference's in that
    round; ``time_ratio`` is the median. Both measurements of a round share whatever else loads the
    machine then, and the median sets aside a round that a burst of load hit in one of them.
    ``contexts`` keeps the loaded model and batches of each (model, images, batch) for the next
    attack timed on them. Raises :class:`UserError` when a timing run's output is invalid."""
    import statistics

    import torch

    from benchmark.attacks.spec import AttackSpec
    from benchmark.attacks.validate import run_attack
    from benchmark.runner.cells import batch_seed
    from benchmark.runner.context import prepare_context
    from benchmark.targets import Target

    config = cell.config
    data_key = (Target.of(suite, cell.model), config.get("images"), int(config["batch_size"]), config.get("data_root"))
    contexts = {} if contexts is None else contexts
    if data_key not in contexts:
        contexts[data_key] = prepare_context(*data_key, device=torch.device(device), clean={})
    ctx = contexts[data_key]
    batch = ctx.batches[0]
    attacks = {"attack": AttackSpec.parse(cell.attack, **config.get("options", {})).create(),
               "reference": AttackSpec.parse(reference.attack, **reference.config.get("options", {})).create()}

    def once(which: str) -> float:
        run = run_attack(attacks[which], ctx.model, batch["image"], batch, tasks=ctx.tasks, eps=cell.eps,
                         seed=batch_seed(cell.seed, 0), check_determinism=False, snapshot=ctx.snapshot)
        ctx.ensure_pristine()
        if not run.verdict.valid:
            name = cell.attack if which == "attack" else reference.attack
            raise UserError(f"{name} gave an invalid output in its paired timing run on {cell.model} eps "
                            f"{cell.eps:g}: {run.verdict.reason}")
        return max(float(run.extra.get("attack_s", 0.0)), 1e-9)

    # warm-up: the first run of each pays for allocations and caches; it also sets the repeats
    repeats = {which: max(1, min(MAX_REPEATS, math.ceil(min_s / once(which)))) for which in attacks}

    def measured(which: str) -> float:
        return sum(once(which) for _ in range(repeats[which])) / repeats[which]

    attack_s, reference_s = [], []
    for i in range(rounds):
        order = ("attack", "reference") if i % 2 == 0 else ("reference", "attack")
        took = {which: measured(which) for which in order}
        attack_s.append(took["attack"])
        reference_s.append(took["reference"])
    ratios = [a / r for a, r in zip(attack_s, reference_s, strict=True)]
    return {"model": cell.model, "eps": cell.eps, "seed": cell.seed, "images": int(batch["image"].shape[0]),
            "rounds": rounds, "repeats": repeats, "time_ratio": statistics.median(ratios),
            "ratios": [round(x, 4) for x in ratios], "attack_s": [round(x, 5) for x in attack_s],
            "reference_s": [round(x, 5) for x in reference_s]}


def slower_p(before: list[float], after: list[float], tolerance: float) -> float:
    """One-sided p-value that the time ratios ``after`` (one per round) exceed ``before``'s by more
    than ``tolerance`` (a share): an exact permutation test of the mean log ratio, the ``after``
    ratios first divided by ``1 + tolerance``. Rounds of two checks are not paired with each other,
    so this is a two-sample test; each round's ratio is already paired within its round."""
    from itertools import combinations

    a = [math.log(x) for x in before]
    b = [math.log(x) - math.log1p(tolerance) for x in after]
    pool, n = a + b, len(b)
    total = sum(pool)
    observed = sum(b) / n - (total - sum(b)) / len(a)
    count = splits = 0
    for idx in combinations(range(len(pool)), n):
        chosen = sum(pool[i] for i in idx)
        splits += 1
        count += chosen / n - (total - chosen) / len(a) >= observed - 1e-12
    return count / splits


def _timing_cell(cells: list[CellResult], reference: list[CellResult], base_entry: dict[str, Any] | None
                 ) -> tuple[CellResult, CellResult] | None:
    """The cell to time ``cells``' attack on, and the reference's cell beside it: the baseline's
    timing cell when this run has it (the same work timed again), else the first cell that the
    reference also ran. None when a cell did not give a valid output (the attack fails on that)."""
    if not cells or any(c.status != Status.VALID for c in cells):
        return None
    ref = {(c.model, float(c.eps), c.seed): c for c in reference if c.status == Status.VALID}
    timing = (base_entry or {}).get("timing") or {}
    wanted = (timing.get("model"), timing.get("eps"), timing.get("seed"))
    pairs = [(c, ref[k]) for c in cells if (k := (c.model, float(c.eps), c.seed)) in ref]
    for c, r in pairs:
        if (c.model, c.eps, c.seed) == wanted:
            return c, r
    return pairs[0] if pairs else None


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
    out.timing = new.get("timing")
    before_rounds = (base.get("timing") or {}).get("ratios") or []
    after_rounds = (out.timing or {}).get("ratios") or []
    if (out.ratio_before and out.ratio_after and before_rounds and after_rounds
            and out.ratio_after > out.ratio_before * (1 + opts.speed_tolerance)):
        out.speed_p = slower_p(before_rounds, after_rounds, opts.speed_tolerance)
        if out.speed_p < opts.alpha:
            t = out.timing
            out.failures.append(
                f"slower: {out.ratio_after:.2f}x the reference's time (median of {len(after_rounds)} paired rounds on "
                f"{t['model']} eps {t['eps']:g}: {min(after_rounds):.2f}x to {max(after_rounds):.2f}x), baseline "
                f"{out.ratio_before:.2f}x ({min(before_rounds):.2f}x to {max(before_rounds):.2f}x); more than "
                f"+{opts.speed_tolerance:.0%} with p = {out.speed_p:.4f} < alpha {opts.alpha:g}")
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
    if base is not None and base["version"] != BASELINE_VERSION and not opts.update:
        raise UserError(f"baseline {path} has version {base['version']}: its time ratios are medians over cells "
                        "timed one after the other, which the machine's load moves; this mtlbench times each attack "
                        "against the reference in pairs. Write it again with `mtlbench check --baseline "
                        f"{path} --update` (its attacks, models, eps and seeds are kept)")
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
    from benchmark.threads import set_threads

    set_threads(opts.threads, small_model=load_suite(suite).tiny)  # the paired timing runs in this process
    contexts: dict[tuple, Any] = {}  # each model loaded once for the timings of every attack
    for name, cells in by_attack.items():
        if name == reference and reference not in attacks:
            continue
        pair = _timing_cell(cells, ref_cells, base["attacks"].get(name) if base else None)
        timing = None
        if pair is not None:
            console.print(f"timing {name} against {reference} on {pair[0].model} eps {pair[0].eps:g}: "
                          f"{SPEED_ROUNDS} paired rounds", highlight=False, markup=False)
            timing = paired_time_ratio(suite, *pair, device=opts.device, contexts=contexts)
        new["attacks"][name] = _summarise(cells, timing)
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

