"""Cells: one (target, attack, eps, seed) evaluation under a profile, and how it is run.

:func:`evaluate_cell` is the single code path of every executor, so results are bit-identical
(same seed, same device) whichever executor ran them.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import inspect
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from benchmark.attacks import list_attacks, run_attack
from benchmark.attacks.sandbox import CellTimeout, extend_time_limit, time_limit
from benchmark.attacks.spec import AttackSpec, is_ours
from benchmark.attacks.validate import AttackRun
from benchmark.defenses import parse_defense
from benchmark.defenses.inference import deployed_outputs
from benchmark.enums import Status
from benchmark.errors import UserError
from benchmark.evaluation import per_image_metrics
from benchmark.metric_base import TaskMetrics, encode_states
from benchmark.runner.context import CellContext, device_name
from benchmark.runner.store import CellResult, cell_key
from benchmark.scoring import arp, image_scores, task_arp
from benchmark.suites import MAX_EVAL_SIZE, Profile, Suite
from benchmark.targets import Target
from benchmark.version import __version__

__all__ = ["Cell", "PeakMemory", "batch_seed", "evaluate_cell", "expand_grid", "needs_determinism_check",
           "per_image_record", "score_batch"]


@dataclass(frozen=True)
class Cell:
    """One evaluation: a target, an attack spec, eps and seed, scored on ``images`` images of the
    target's suite (``batch_size`` per batch) as the profile ``profile`` says. ``data_root`` says
    where a real data set lives (a location: not part of the cell's identity)."""

    target: Target
    attack: AttackSpec
    eps: float  # 0-255 units
    seed: int
    profile: str
    images: int | None = None  # evaluation images (None: the whole split)
    batch_size: int = 8
    check_determinism: bool = True  # repeat the attack on the first batch and compare
    data_root: str | None = None
    timeout_s: float | None = None  # wall-time limit of the cell (not part of its identity)
    keep_images: bool = False  # hand the adversarial images back with the result (a submission's bundle)
    budget_point: bool = False  # an extra step budget of a budget curve, not the profile's protocol
    #: the time limit is the profile's default: it grows to twice the cell's projected time, measured
    #: on its first batch (a full-size cell on a CPU takes longer than any fixed default)
    timeout_scales: bool = False
    #: a transfer cell: the images are crafted white-box on this undefended member of the suite and
    #: scored on the target (forward passes only there); None: white-box on the target itself
    source: str | None = None
    #: a white-box cell of a member that transfer cells craft on: its images are kept for them
    share_crafted: bool = False
    #: keep the first N adversarial images and the predictions on them (the inspection pages; not
    #: part of the cell's identity)
    inspect: int = 0

    @property
    def attack_name(self) -> str:
        """The name results are stored and shown under: the attack's, ``... from SOURCE`` for a
        transfer cell."""
        return self.attack.name if self.source is None else f"{self.attack.name} from {self.source}"

    @property
    def model(self) -> str:
        return self.target.name

    @property
    def data_key(self) -> tuple:
        """Cells with the same data key share a model, evaluation batches and clean metrics: the
        positional arguments of :func:`~benchmark.runner.context.prepare_context`."""
        return (self.target, self.images, self.batch_size, self.data_root)

    def key_config(self, ctx: CellContext) -> dict[str, Any]:
        """The full configuration that keys the cell in the store, on ``ctx``'s loaded target
        (with the code and weights versions)."""
        return {
            "suite": ctx.suite, "model": self.target.name, "attack": self.attack_name, "eps": self.eps,
            "seed": self.seed, "profile": self.profile, "options": dict(self.attack.options), "images": self.images,
            "batch_size": self.batch_size, "check_determinism": self.check_determinism,
            "objective": self.attack.objective, "task": self.attack.task,
            "model_revision": ctx.model_revision, "data": ctx.data, "split": ctx.split, "input_size": ctx.input_size,
            "code_version": __version__,
            # a defended cell's key holds its defense and EOT draws; an undefended cell's has neither
            # (the key names are the store's: "eot" is the target's eot_samples)
            **({"defense": self.target.defense, "eot": self.target.eot_samples} if self.target.defense else {}),
            **({"score_draws": self.target.score_draws} if self.target.score_draws > 1 else {}),
            **({"external": str(self.target.external.kind)} if self.target.external else {}),
            # a transfer cell's key holds the model its images are crafted on, at its revision
            **({"crafted_on": self.source, "crafted_on_revision": ctx.source(self.source)[1]} if self.source else {}),
            # a suite scored with the authors' metric definitions (cells of our default keep their keys)
            **({"metrics": ctx.tasks[0].metric_mode} if ctx.tasks and ctx.tasks[0].metric_mode != "ours" else {}),
        }

    def store_key(self, ctx: CellContext) -> str:
        """The cell's key in the results store on ``ctx``'s loaded target."""
        return cell_key(self.key_config(ctx))

    def new_result(self, ctx: CellContext, status: str = "valid", reason: str = "") -> CellResult:
        """An empty result of this cell on ``ctx``'s target, with its key and provenance."""
        config = self.key_config(ctx)
        key = cell_key(config)
        option = getattr(self.attack.attack_class, "budget_option", None)
        if self.data_root is not None:  # where the real data set was read (a location: not part of the key)
            config["data_root"] = str(self.data_root)
        if option is not None and option in dict(self.attack.options):
            # not part of the key: which option is the step budget, and whether this cell is a curve's point
            config["budget"] = {"option": option, "value": dict(self.attack.options)[option],
                                "extra": self.budget_point}
        return CellResult(
            key=key, suite=ctx.suite, model=self.model, attack=self.attack_name, eps=self.eps,
            seed=self.seed, profile=self.profile, status=status, reason=reason, clean=ctx.clean,
            device=device_name(ctx.device), torch_version=torch.__version__, mtlbench_version=__version__,
            git_commit=ctx.git_commit, model_revision=ctx.model_revision, config=config,
            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))


def expand_grid(suite: Suite, profile: Profile, *, attacks: list[str] | None = None,
                eps: list[float] | None = None, models: list[str] | None = None,
                seeds: list[int] | None = None, weights_dir: str | None = None,
                data_root: str | None = None, cell_timeout: float | None = None,
                defenses: list[str] | None = None, eot_samples: int | None = None, score_draws: int | None = None,
                external: str | Path | torch.nn.Module | None = None, external_name: str | None = None,
                device: str | torch.device = "cpu", images: int | None = None,
                precision: str | None = None) -> list[Cell]:
    """suite x models x attacks (patterns expanded for the suite's tasks) x eps x seeds; with
    ``external`` (a checkpoint directory or an ``nn.Module``), that model instead of the members.
    With the profile's attacks, also the profile's extra step budgets on its budget models.

    Where :func:`needs_determinism_check` says so, the attack's determinism is checked in the cells
    of the first eps (per target, attack and seed) at the profile's step budget: it is a property of
    the attack and the model, and checking it once halves the cost of the other cells (a budget
    curve's points share its verdict). ``device``: where the cells will run. ``precision``
    (``"bf16"``): the attacks' forward passes in that precision (an option of each optimizer
    attack, so part of its cells' keys and labels; an attack without the option is refused)."""
    if images is not None:  # the first ``images`` of the split, in place of the profile's evaluation size
        if not 1 <= int(images) <= MAX_EVAL_SIZE:
            raise UserError(f"--images {images!r}: expected an integer in [1, {MAX_EVAL_SIZE}]")
        profile = replace(profile, eval_size=int(images))
    if profile.eval_size is not None and profile.batch_size > profile.eval_size:  # the batches it really runs
        profile = replace(profile, batch_size=profile.eval_size)
    specs = _specs(attacks if attacks is not None else profile.attacks, suite, profile, precision)
    # a request that names an eps, seed or model twice asks for it once
    eps_list = list(dict.fromkeys(float(e) for e in (eps if eps is not None else profile.eps)))
    for e in eps_list:
        if not 0 < e <= 255:
            raise UserError(f"eps {e!r} is outside (0, 255] (0-255 pixel units: 8 means 8/255)")
    models = models or profile.models
    members = list(dict.fromkeys(suite.member(m) for m in models)) if models else list(suite.members)
    seed_list = list(dict.fromkeys(int(s) for s in (seeds if seeds is not None else profile.seeds)))
    for s in seed_list:
        if not 0 <= s < 2**63:
            raise UserError(f"seed {s} is outside [0, 2^63) (seeds are stored as 64-bit integers)")
    ref = suite.ref
    defense_list = list(dict.fromkeys(defenses if defenses is not None else profile.defenses))
    eot_samples = profile.eot_samples if eot_samples is None else eot_samples
    score_draws = profile.score_draws if score_draws is None else score_draws
    # a profile's defenses apply to its defended_models (all members when it names none)
    defended = set(profile.defended_models or [m.name for m in members]) if defenses is None else None
    if external is not None:
        # a profile's defenses are for its own members; an external model gets those asked for
        asked = defense_list if defenses is not None else ["none"]
        every = (Target.external_model(suite, external, name=external_name, defense=d, eot_samples=eot_samples,
                                       score_draws=score_draws)
                 for d in asked)
        defended = None
    else:
        every = (Target.of(ref, m.name, weights_dir=weights_dir, defense=d, eot_samples=eot_samples,
                           score_draws=score_draws)
                 for m in members for d in defense_list)
    targets = list(dict.fromkeys(t for t in every if t.defense is None or defended is None or t.member in defended))
    timeout = profile.cell_timeout if cell_timeout is None else cell_timeout

    def make(t, a, e, s, **kw) -> Cell:
        return Cell(t, a, e, s, profile.name, profile.eval_size, profile.batch_size, data_root=data_root,
                    timeout_s=timeout or None, timeout_scales=cell_timeout is None, **kw)

    cells = [make(t, a, e, s, check_determinism=i == 0 and needs_determinism_check(t, a, device))
             for t in targets for a in specs for s in seed_list for i, e in enumerate(eps_list)]
    # the profile's attacks for the members that get defenses (the black-box attack of the
    # gradient-masking checks), on each of their targets and on an external model
    if attacks is None and profile.defense_attacks:
        on = set(profile.defended_models or [m.name for m in members])
        more = [a for a in _specs(profile.defense_attacks, suite, profile, precision) if a not in specs]
        cells += [make(t, a, e, s, check_determinism=i == 0 and needs_determinism_check(t, a, device))
                  for t in targets if t.external or t.member in on
                  for a in more for s in seed_list for i, e in enumerate(eps_list)]
    if attacks is None and external is None and (profile.transfer_from or profile.defense_transfer):
        cells = _with_transfer_cells(cells, make, profile, members, targets, specs, seed_list, eps_list)
    if profile.inspect_images:  # the protocol's cells keep their first images for the inspection pages
        cells = [replace(c, inspect=min(profile.inspect_images, profile.eval_size or profile.inspect_images))
                 for c in cells]
    # the budget curves' extra points: other step budgets on the undefended (budget) members, when
    # the profile's attacks run (a request naming its attacks, `check` or `submit`, gets those only)
    if attacks is None:
        cells += _budget_cells(make, profile, members, targets, specs, seed_list, eps_list)
    return cells


def _with_transfer_cells(cells: list[Cell], make, profile: Profile, members, targets, specs, seeds,
                         eps) -> list[Cell]:
    """``cells`` and the transfer cells of the profile's attacks: crafted on each source member and
    scored on every other undefended target (the cross-model matrix; the diagonal is the white-box
    cells), and on each defended target crafted on its own undefended member (a masking check).
    The white-box cells of a source keep their images for its transfer cells (``share_crafted``)."""
    names = [m.name for m in members]
    sources = [] if not profile.transfer_from else names if "*" in profile.transfer_from else [
        m for m in profile.transfer_from if m in names]
    for t in targets:
        froms = [m for m in sources if m != t.member] if t.defense is None else (
            [t.member] if profile.defense_transfer else [])
        cells += [make(t, a, e, s, check_determinism=False, source=src)
                  for src in froms for a in specs for s in seeds for e in eps]
    used = {c.source for c in cells if c.source}
    return [replace(c, share_crafted=True) if c.source is None and c.target.defense is None
            and c.target.member in used and not c.budget_point else c for c in cells]


def _budget_cells(make, profile: Profile, members, targets, specs, seeds, eps) -> list[Cell]:
    """The budget curves' extra points: each optimizer's other step budgets of the profile on its
    undefended budget members (all members when it names none)."""
    curve_models = set(profile.budget_models or [m.name for m in members])
    out = []
    for spec in specs:
        option = getattr(spec.attack_class, "budget_option", None)
        extra = [b for b in profile.budgets.get(spec.optimizer, ()) if option and b != dict(spec.options).get(option)]
        for t in targets:
            if t.defense is not None or t.external or t.member not in curve_models:
                continue
            out += [make(t, spec.with_options(**{option: b}), e, s, check_determinism=False, budget_point=True)
                    for b in extra for s in seeds for e in eps]
    return out


def _specs(patterns, suite: Suite, profile: Profile, precision: str | None = None) -> list[AttackSpec]:
    """The attacks ``patterns`` name for the suite's tasks, with the profile's presets and budgets
    (and ``precision``, where given)."""
    tasks = suite.tasks
    specs: list[AttackSpec] = []
    for pattern in patterns:
        matched = [a for a in list_attacks("*", tasks=tasks) if fnmatch.fnmatch(a, pattern.strip())]
        if not matched:
            raise UserError(f"attack {pattern!r} matches nothing for the tasks of {suite.name}; "
                            "see `mtlbench attacks list`")
        for name in matched:
            spec = AttackSpec.parse(name, tasks=tasks)
            preset = profile.options.get(spec.optimizer, {})
            spec = spec.with_options(**{k: v for k, v in preset.items() if k not in dict(spec.options)})
            spec = spec.with_budget(profile.steps)
            if precision is not None and precision != "float32":
                if "precision" not in inspect.signature(spec.attack_class).parameters:
                    raise UserError(f"--precision {precision}: the attack {spec.name} has no precision option "
                                    "(the built-in optimizers have it); leave it out of this run")
                spec = spec.with_options(precision=precision)
            if spec not in specs:
                specs.append(spec)
    return specs


def needs_determinism_check(target: Target, spec: AttackSpec, device: str | torch.device) -> bool:
    """Whether the cells of ``spec`` on ``target`` repeat the attack on their first batch to check
    that the same seed gives the same output.

    Not for mtlbench's own attacks against its own models and defenses on the CPU: they draw every
    random number from the seeded generator they are given and run deterministic CPU kernels, which
    ``tests/test_attacks.py`` checks bit for bit for every built-in attack and objective (run twice,
    compared); repeating them would cost a quarter of a run's time and find nothing. Always for an
    attack or objective whose code is not ours (a plugin, a submission), a defense that is not
    ours, an external model, and on a GPU, whose kernels may be nondeterministic model by model."""
    if torch.device(device).type != "cpu" or target.external:
        return True
    defense = parse_defense(target.defense)
    return not (spec.builtin and (defense is None or is_ours(type(defense))))


class PeakMemory:
    """The memory an attack adds over the model's resting footprint, measured the same way for
    every cell so that the column ranks attacks (a 20-pass attack against a 2-pass one):

    * CUDA: ``max_memory_allocated`` during the block minus ``memory_allocated`` at its start
      (kind ``cuda-allocated-added``);
    * CPU on Linux: the process's peak resident set size during the block (``VmHWM``, reset
      through ``/proc/self/clear_refs``) minus its resident size at the start, after the C
      allocator has returned freed memory to the system (``malloc_trim``), so that what an
      earlier cell freed does not count as resting footprint (kind ``cpu-rss-added``);
    * elsewhere: not measured (``None``), rather than a lifetime peak that cannot tell attacks apart.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None  # bytes added over the resting footprint
        self.kind = ""
        self._base = 0

    @staticmethod
    def _reset_hwm() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    @staticmethod
    def _status(field: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
        raise OSError(f"no {field} in /proc/self/status")

    @staticmethod
    def _trim() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
            self.kind = "cuda-allocated-added"
        elif sys.platform.startswith("linux"):
            self._trim()
            try:
                self._base = self._status("VmRSS")
                self.kind = "cpu-rss-added" if self._reset_hwm() else ""
            except OSError:
                self.kind = ""
        return self

    def __exit__(self, *exc) -> None:
        if self.kind == "cuda-allocated-added":
            torch.cuda.synchronize(self.device)
            self.peak = max(0, int(torch.cuda.max_memory_allocated(self.device)) - self._base)
        elif self.kind == "cpu-rss-added":
            try:
                self.peak = max(0, self._status("VmHWM") - self._base)
            except OSError:
                self.peak, self.kind = None, ""


#: a cell whose time limit is the profile's default gets at least this many times its projected time
TIMEOUT_MARGIN = 2.0


def batch_seed(seed: int, index: int) -> int:
    """The seed of the attack's generator on batch ``index`` of a cell of seed ``seed``."""
    return (int(seed) * 1_000_003 + index) % (2**63 - 1)


def evaluate_cell(cell: Cell, ctx: CellContext) -> CellResult:
    """Attack every batch, validate each output, score the adversarial images. An attack that
    raises or returns a bad output gives a ``failed``/``invalid`` result, never an exception."""
    result = cell.new_result(ctx)
    start = time.perf_counter()
    meter = PeakMemory(ctx.device)
    try:
        with meter, time_limit(cell.timeout_s):
            _attack_and_score(cell, ctx, result)
    except CellTimeout as exc:
        result.status = Status.FAILED
        result.reason = (f"{exc} in batch {result.batches + 1} of {len(ctx.batches)}; raise it with --cell-timeout "
                         "or the profile's cell_timeout")
        result.adversarial, result.arp, result.task_arp = {}, None, {}
    finally:
        ctx.ensure_pristine()  # whatever the attack did to the model is undone before the next cell
    result.wall_s = time.perf_counter() - start
    result.time_per_image_s = result.attack_s / result.images if result.images else 0.0
    result.peak_memory_bytes, result.peak_memory_kind = meter.peak, meter.kind
    return result


def _attack_and_score(cell: Cell, ctx: CellContext, result: CellResult) -> None:
    if ctx.model_problem:  # the model's own fault, found before any attack ran
        result.status, result.reason = Status.INVALID, ctx.model_problem
        return
    try:
        attack = cell.attack.create()
    except UserError as exc:
        result.status, result.reason = Status.FAILED, f"cannot create the attack: {exc}"
        return
    scoring = CellScoring(cell, ctx, result)
    started = time.perf_counter()
    for i, batch in enumerate(ctx.batches):
        if i == 1 and cell.timeout_scales and cell.timeout_s:
            took = time.perf_counter() - started
            if extend_time_limit(TIMEOUT_MARGIN * took * len(ctx.batches), took):
                result.config["timeout_s"] = round(TIMEOUT_MARGIN * took * len(ctx.batches), 1)
        if cell.source is None:
            run = run_attack(attack, ctx.model, batch["image"], batch, tasks=ctx.tasks, eps=cell.eps,
                             seed=batch_seed(cell.seed, i), check_determinism=cell.check_determinism and i == 0,
                             snapshot=ctx.snapshot)
            if cell.share_crafted and run.verdict.valid:  # the transfer cells' images of this member
                _keep_crafted(_crafted_key(cell, ctx.model_revision, i, cell.target.member, ctx), run)
        else:
            run = _crafted(cell, ctx, attack, i)
        if not run.verdict.valid:
            scoring.count(run.forward_passes, run.backward_passes, run.extra.get("attack_s", 0.0))
            result.status = run.verdict.status
            result.reason = f"batch {i}: {run.verdict.reason}"
            return
        scoring.add(i, batch, run.adversarial, run.forward_passes, run.backward_passes,
                    run.extra.get("attack_s", 0.0), run.verdict.max_perturbation)
    scoring.finish()


class CellScoring:
    """What one cell accumulates over its batches (metrics, per-image records, inspected and kept
    images, passes and time), and its result once every batch is in."""

    def __init__(self, cell: Cell, ctx: CellContext, result: CellResult) -> None:
        self.cell, self.ctx, self.result = cell, ctx, result
        self.metrics = TaskMetrics.of(ctx.tasks)
        self.image_metrics: list[dict] = []  # each image's own metrics ({task: metric})
        self.kept: list[torch.Tensor] = []
        self.max_delta = 0.0
        self.inspected: list[bytes] = []
        # behind a detector: which adversarial images it rejected, and the metrics as if none were
        self.detection = None if ctx.detection is None else {"rejected": [], "plain": TaskMetrics.of(ctx.tasks)}

    def count(self, forward: int, backward: int, attack_s: float) -> None:
        self.result.forward_passes += forward
        self.result.backward_passes += backward
        self.result.attack_s += attack_s

    def add(self, i: int, batch: dict, adversarial: torch.Tensor, forward: int, backward: int, attack_s: float,
            max_perturbation: float) -> None:
        """Batch ``i``'s valid adversarial images, scored, and what they cost."""
        cell, ctx, result = self.cell, self.ctx, self.result
        self.count(forward, backward, attack_s)
        self.max_delta = max(self.max_delta, max_perturbation)
        first = score_batch(ctx, i, adversarial, cell.seed, self.metrics, self.image_metrics, self.detection)
        if cell.inspect > result.images:  # the inspected images are the first of the evaluation set
            from benchmark.runner.inspection import encode_adversarial

            self.inspected += encode_adversarial(batch["image"], adversarial, first, ctx.tasks,
                                                 cell.inspect - result.images)
        if cell.keep_images:
            self.kept.append(adversarial.detach().float().cpu())
        result.images += batch["image"].shape[0]
        result.batches += 1

    def finish(self) -> None:
        ctx, result = self.ctx, self.result
        result.adversarial = self.metrics.compute()
        result.max_perturbation = self.max_delta
        if self.inspected:
            result.inspection = self.inspected  # stored beside the cell (ResultsStore.put), not in its row
            result.config["inspection"] = {"images": len(self.inspected), "clean": ctx.clean_key}
        if self.cell.keep_images:
            result.adversarial_images = torch.cat(self.kept)  # not stored in the database: the bundle's
        try:
            result.task_arp = task_arp(ctx.clean, result.adversarial, ctx.tasks)
            result.arp = arp(ctx.clean, result.adversarial, ctx.tasks)
        except ValueError as exc:  # a clean metric of 0: ARP is undefined
            result.status, result.reason = Status.INVALID, f"ARP undefined: {exc}"
            return
        result.per_image = per_image_record(ctx, self.image_metrics)
        detection = self.detection
        if detection is not None:
            plain = detection["plain"].compute()
            rejected = detection["rejected"]
            result.per_image["rejected"] = rejected
            result.config["detection"] = {
                "rejected": sum(rejected), "images": len(rejected),
                "rate": 100.0 * sum(rejected) / max(1, len(rejected)),
                "plain_arp": arp(ctx.clean, plain, ctx.tasks), "plain_task_arp": task_arp(ctx.clean, plain, ctx.tasks),
                "threshold": ctx.detection["threshold"], "fpr_eval": ctx.detection["fpr_eval"]}


def _attacker_view(ctx: CellContext, batch: dict, adversarial: torch.Tensor, outputs: dict,
                   detection: dict) -> dict[str, torch.Tensor]:
    """A detector target's outputs as the attacker scores them: a rejected image's clean ones."""
    with torch.no_grad():
        rejected = ctx.model.rejected(adversarial)
    detection["plain"].update(outputs, batch)
    detection["rejected"] += [bool(r) for r in rejected.cpu()]
    if not rejected.any():
        return outputs
    with torch.no_grad():
        clean = ctx.model(batch["image"])
    keep = rejected.view(-1, *([1] * (adversarial.dim() - 1)))
    return {name: torch.where(keep.to(out.device), clean[name], out) for name, out in outputs.items()}


#: crafted transfer images kept for the other targets of a transfer matrix, at most this many bytes
CRAFTED_BYTES = 512 * 2**20
_CRAFTED: dict[tuple, AttackRun] = {}


def _crafted(cell: Cell, ctx: CellContext, attack, index: int) -> AttackRun:
    """The images of batch ``index`` crafted white-box on the cell's source member (the attack run
    on the source, validated there), made once per source, attack, eps, seed and batch and reused
    for every target they are replayed on. The run's passes and time are the crafting's (the cost
    of the attack, the same whichever target asked first)."""
    source, revision = ctx.source(cell.source)
    key = _crafted_key(cell, revision, index, cell.source, ctx)
    run = _CRAFTED.pop(key, None)
    if run is None:
        batch = ctx.batches[index]
        run = run_attack(attack, source, batch["image"], batch, tasks=ctx.tasks, eps=cell.eps,
                         seed=batch_seed(cell.seed, index), check_determinism=False)
        if not run.verdict.valid:
            run.verdict = replace(run.verdict, reason=f"crafted on {cell.source}: {run.verdict.reason}")
            return run
    _keep_crafted(key, run)
    return run


def _crafted_key(cell: Cell, revision: str, index: int, member: str, ctx: CellContext) -> tuple:
    return (cell.target.suite, member, revision, cell.attack, cell.eps, cell.seed, index, cell.images,
            cell.batch_size, cell.data_root, str(ctx.device))


def _keep_crafted(key: tuple, run: AttackRun) -> None:
    _CRAFTED.pop(key, None)
    _CRAFTED[key] = run  # the most recently used last
    while sum(r.adversarial.numel() * r.adversarial.element_size() for r in _CRAFTED.values()) > CRAFTED_BYTES:
        _CRAFTED.pop(next(iter(_CRAFTED)))


def score_batch(ctx: CellContext, index: int, adversarial: torch.Tensor, seed: int, metrics: dict,
                image_metrics: list[dict], detection: dict | None = None) -> dict[str, torch.Tensor]:
    """Score the adversarial images of the batch ``index`` of a cell of ``seed`` as the target is
    deployed: into the cell's streaming ``metrics`` and each image's own (``image_metrics``). Returns the
    outputs of the first scoring draw. Behind a detector (``detection``: the cell's tallies), an
    image the detector rejects is scored with its clean prediction (the attack failed on it: the
    attacker's view), and ``detection`` gets which were rejected and the plain metrics."""
    batch = ctx.batches[index]
    mine: list[dict] = []
    first: dict[str, torch.Tensor] = {}
    for outputs in deployed_outputs(ctx.model, adversarial, batch_seed(seed, index) + 1, ctx.target.score_draws):
        first = first or outputs
        if detection is not None:
            outputs = _attacker_view(ctx, batch, adversarial, outputs, detection)
        metrics.update(outputs, batch)
        per = per_image_metrics(ctx.tasks, outputs, batch)
        mine = per if not mine else [one.merge(o) for one, o in zip(mine, per, strict=True)]
    image_metrics += mine
    return first


def per_image_record(ctx: CellContext, image_metrics: list[dict]) -> dict[str, Any]:
    """What a cell stores per image (batch order): its id, its score (the jackknife pseudo-value of
    the cell's ARP), its own metrics, and (where they are small) its metrics' statistics, from
    which any set of images taken from several cells is scored exactly (the worst case per image)."""
    own = [TaskMetrics(one).compute() for one in image_metrics]
    record = {
        "ids": list(ctx.image_ids or map(str, range(len(image_metrics))))[: len(image_metrics)],
        "score": image_scores(ctx.clean, image_metrics, ctx.tasks),
        "metrics": {t.name: {m: [o[t.name][m] for o in own] for m in own[0][t.name]} for t in ctx.tasks},
    }
    state = encode_states(image_metrics)
    if state is not None:
        record["state"] = state
    return record
