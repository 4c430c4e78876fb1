"""``mtlbench verify``: re-score a result bundle and check every claim it makes.

A bundle (:mod:`benchmark.runner.bundle`) is third-party input: everything in it is checked
before it is believed, in this order, and a bundle that fails any check is rejected with the
reason, naming the file, the cell and the field:

1. **What it may cost** (:mod:`benchmark.runner.archive`). A bundle is read in place (a zip is
   never extracted): only ``manifest.json``, ``cells.json`` and the images files of the cells the
   manifest declares may be in it, no links, and each file is bounded by what the manifest's grid
   needs (images x 3 x H x W float32 per cell), so a small zip cannot expand into gigabytes.
2. **Types and ranges** (:mod:`benchmark.runner.bundle_schema`). The manifest and every cell are
   checked against their declarations (a cell against the store's own ``CellResult``) before any
   value is used: integers are integers in range, numbers finite, names valid; the suite is
   named, never a path: a bundle opens nothing outside itself (``--suite PATH`` is the
   verifier's own choice).
3. **The grid.** The cells are exactly the grid the manifest declares (its models x attacks x eps x
   seeds), each once, with the manifest's attack options, image count and batch size, and a key
   that is the hash of its own configuration; the members' pins are this suite's.
4. **The protocol.** The profile is one of the suite's, its eps are the profile's (exactly),
   each attack's options are what the profile gives it (its presets and step budget), the batch
   size the profile's.
5. **The numbers.** The images are finite, in [0, 1] and inside the eps-ball; re-scored against
   the weights this installation loads (the same revision) and the same clean images, every
   metric, the ARP, each task's ARP, and every per-image quantity the store and ``mtlbench check``
   use (each image's id, metrics, score and metric statistics) must match the claims within the
   tolerances below. A verified bundle then carries the **re-scored** numbers, not its claims:
   what is ranked follows from the images.
6. **The attack's identity.** A built-in attack's source files are mtlbench's, hash for hash
   (whatever version the bundle says made it).

**Re-scored** and **recounted** are two levels. Re-scoring shows that the numbers follow from the
images; it cannot show that the named attack made them. ``--recount`` runs the attack again (where
its code is installed here with the sources the bundle names), on every cell or on a random sample
of cells over every eps (``--recount-sample N``, drawn with the verifier's ``--recount-seed``), and
requires the same counted passes and the same images (the bundle's attacks on the CPU give
bit-identical images across thread counts and AVX-512/AVX2 kernels; a pixel's difference above
half a grey level on more than :data:`RECOUNT_PIXEL_SHARE` of the pixels rejects it). What can be
neither is **self-reported** and shown as such: the time and the memory (and the passes unless
recounted).

Tolerances: each is 10 times the largest difference measured between a bundle's claims and the same
images re-scored with 1, 2 and 4 torch threads and with AVX-512 and AVX2 kernels (oneDNN, MKL and
ATen restricted to AVX2), on tiny-nyuv2-resnet34 (7, 13 and 32 images, batch 16) and
tiny-taskonomy-resnet34 (13 images): a cell's ARP 4.4e-4 and a task's ARP 1.3e-3 points; an
image's score (a jackknife pseudo-value, about N times the ARP's rounding) 6.1e-3 points at 13
images; a cell's metric 7.8e-5 relative (the clean ones: a threshold metric counts pixels, and one
pixel's value rounding to the other side of a threshold moves it); one image's metric 5.4e-5
relative. The metrics' tolerances cover one pixel crossing a threshold, since a verified bundle's
numbers are the re-scored ones anyway; ARP and the scores are the tight checks. Scoring the same
images with one thread on either instruction set gave the same bits; 32 images in two full batches
gave the same bits at every thread count (the differences come with a partial last batch).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.attacks.validate import output_problem, unit_eps
from benchmark.enums import Status
from benchmark.errors import UserError
from benchmark.metric_base import TaskMetrics
from benchmark.runner.archive import Archive, open_archive
from benchmark.runner.bundle import BundleError, attack_sources, images_file
from benchmark.runner.bundle_schema import CELL_BYTES_FIXED, CELL_BYTES_PER_IMAGE, Grid, read_cell, read_manifest, show
from benchmark.runner.store import CellResult, cell_key

__all__ = ["ARP_TOLERANCE", "IMAGE_METRIC_TOLERANCE", "METRIC_TOLERANCE", "RECOUNT_PIXEL_SHARE",
           "SCORE_TOLERANCE_PER_IMAGE", "BundleError", "BundleVerdict", "verify_bundle"]

#: ARP points: a cell's ARP and each task's ARP (10x the 1.3e-3 measured; the module docstring)
ARP_TOLERANCE = 0.015
#: relative: a cell's metrics, clean and adversarial (13x the 7.8e-5 measured: a threshold metric
#: counts pixels, and one pixel whose value rounds to the other side of a threshold moves it)
METRIC_TOLERANCE = 1e-3
#: relative: one image's metrics, and those computed from its metric statistics (measured 5.4e-5;
#: one pixel crossing a threshold moves an image's share by 1/2304 of its range at 48 x 48, up to
#: about 1% of a small share: the tolerance covers it; ARP and scores are the tight checks)
IMAGE_METRIC_TOLERANCE = 1e-2
#: ARP points per image of the cell: one image's score (10x the 6.1e-3 measured at 13 images, over 13)
SCORE_TOLERANCE_PER_IMAGE = 0.0047
#: a recount's images may differ from the bundle's by more than half a grey level on this share of
#: pixels at most (measured: 0 across thread counts and instruction sets)
RECOUNT_PIXEL_SHARE = 0.001
MANIFEST_MAX_BYTES = 16 * 2**20
#: a safetensors file's header beyond its tensor bytes (the tensor's name, shape and the metadata)
HEADER_SLACK = 64 * 2**10


# ---------------------------------------------------------------------- the verdict
@dataclass
class BundleVerdict:
    """The outcome of checking a bundle: ``verified`` when every claim checks out."""

    path: Path
    manifest: dict[str, Any]
    cells: list[CellResult]
    reasons: list[str] = field(default_factory=list)
    checked: int = 0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # re-scored: {model: {revision, info}}
    #: attacks run again (``--recount``) with the same passes and images: {attack: note}
    recounted: dict[str, str] = field(default_factory=dict)
    #: attacks ``--recount`` could not run again here: {attack: why}
    skipped_recount: dict[str, str] = field(default_factory=dict)
    #: the name each attack has on a leaderboard it joins (its own, or with the bundle's where taken)
    labels: dict[str, str] = field(default_factory=dict)
    #: the inspected clean images of each model it was re-scored on (clean key -> stored blobs):
    #: its cells' adversarial ones are on the cells (``inspection``), for the inspection pages
    clean_inspection: dict[str, list[bytes]] = field(default_factory=dict)

    @property
    def verified(self) -> bool:
        return not self.reasons and self.checked == len(self.cells) > 0

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def self_reported(self) -> list[str]:
        """What the bundle claims that re-scoring cannot check."""
        out = ["time per image", "memory"]
        if set(self.manifest.get("attack", {}).get("names", [])) - set(self.recounted):
            out.append("passes per image")
        return out

    def level(self, attack: str) -> str:
        """What was checked of ``attack``'s cells: ``recounted`` (run again: the same images and
        passes) or ``re-scored`` (the numbers follow from the images; the attack was not re-run)."""
        return "recounted" if attack in self.recounted else "re-scored"


def _close(claimed: float | None, actual: float, tol: float, relative: bool = False) -> bool:
    if claimed is None or not isinstance(claimed, int | float):
        return False
    if not (math.isfinite(claimed) and math.isfinite(actual)):
        return math.isnan(claimed) == math.isnan(actual) and (math.isnan(actual) or claimed == actual)
    bound = tol * max(abs(actual), 1e-12) if relative else tol
    return abs(claimed - actual) <= bound + 1e-12


def verify_bundle(path: str | Path, *, suite: str | list[str] | None = None, device: str = "cpu",
                  data_root: str | None = None,
                  arp_tolerance: float = ARP_TOLERANCE, metric_tolerance: float = METRIC_TOLERANCE,
                  recount: bool = False, recount_sample: int | None = None, recount_seed: int = 0,
                  console=None, progress=None) -> BundleVerdict:
    """Check the bundle at ``path`` (see the module docstring) on its suite: the standard suite it
    names, or ``suite``, a manifest the verifier gives for a suite that is not a standard one (a
    list: the manifests of such suites, the one with the bundle's suite name is taken). A
    bundle that cannot be read or validated is a rejected verdict with the reason, never an
    exception (so one bad bundle never stops a leaderboard). ``recount``: run the attacks again
    on every cell, or on ``recount_sample`` cells drawn with ``recount_seed``. ``progress``:
    called as ``progress(done, total, what)`` as cells are re-scored and recounted."""
    verdict = BundleVerdict(Path(path), {}, [])
    try:
        _verify(verdict, suite=suite, device=torch.device(device), data_root=data_root, arp_tolerance=arp_tolerance,
                metric_tolerance=metric_tolerance, recount=recount, recount_sample=recount_sample,
                recount_seed=recount_seed, console=console, progress=progress or (lambda *a: None))
    except UserError as exc:
        verdict.reasons.append(str(exc))
        verdict.checked = 0
    return verdict


def bundle_suite_name(path: str | Path) -> str | None:
    """The name of the suite a bundle says it was scored on (None where its manifest cannot be
    read): what a verifier's options are checked against before the bundle is."""
    try:
        with open_archive(Path(path)) as reader:
            raw = reader.json("manifest.json", MANIFEST_MAX_BYTES)
    except UserError:
        return None
    name = raw.get("suite", {}).get("name") if isinstance(raw, dict) and isinstance(raw.get("suite"), dict) else None
    return name if isinstance(name, str) else None


def _suite_of(name: str, given: str | list[str] | None, path: Path):
    """The suite a bundle names: one of the manifests the verifier gives (``given``) whose suite
    has that name, else the standard suite of that name."""
    from benchmark.suites import list_suites, load_suite

    offered = [given] if isinstance(given, str | Path) else list(given or [])
    if len(offered) == 1 and isinstance(given, str | Path):
        suite = load_suite(offered[0])
        if suite.name != name:
            raise BundleError(f"bundle {path} is of the suite {name}, not {suite.name}")
        return suite
    for manifest in offered:
        suite = load_suite(manifest)
        if suite.name == name:
            return suite
    if name not in list_suites():
        raise BundleError(f"bundle {path} is of the suite {name!r}, which is not a standard suite here; give its "
                          "manifest with --suite PATH")
    return load_suite(name)


def _verify(verdict: BundleVerdict, *, suite, device, data_root, arp_tolerance, metric_tolerance, recount,
            recount_sample, recount_seed, console, progress) -> None:
    path = verdict.path
    with open_archive(path) as reader:
        manifest, grid = read_manifest(reader.json("manifest.json", MANIFEST_MAX_BYTES), path)
        verdict.manifest = manifest
        suite_obj = _suite_of(manifest["suite"]["name"], suite, path)
        size = max(m.input_size for m in suite_obj.members)
        image_bytes = grid.images * 3 * size * size * 4 + HEADER_SLACK
        expected = {images_file(*c): c for c in grid.cells()}
        per_cell = CELL_BYTES_FIXED + grid.images * CELL_BYTES_PER_IMAGE
        allowed = {"manifest.json": MANIFEST_MAX_BYTES, "cells.json": CELL_BYTES_FIXED + len(expected) * per_cell,
                   **dict.fromkeys(expected, image_bytes)}
        for name, nbytes in reader.sizes.items():
            if name not in allowed:
                raise BundleError(f"bundle {path}: {name} is not a file of this bundle (it holds manifest.json, "
                                  "cells.json and the images of the cells its manifest declares)")
            if nbytes > allowed[name]:
                raise BundleError(f"bundle {path}: {name} is {nbytes:,} bytes, more than the {allowed[name]:,} its "
                                  "grid can need")
        records = reader.json("cells.json", allowed["cells.json"])
        if not isinstance(records, list):
            raise BundleError(f"bundle {path}: cells.json must hold a list of cells")
        if not records:
            raise BundleError(f"bundle {path}: no cells")
        tasks = [t.name for t in suite_obj.tasks]
        claimed = [read_cell(raw, i, path, tasks) for i, raw in enumerate(records)]
        verdict.cells = [c for c, _, _ in claimed]
        _check_grid(verdict, claimed, grid, suite_obj)
        _check_protocol(verdict, claimed, grid, suite_obj)
        _check_attacks(verdict, manifest)
        if verdict.reasons:
            return
        _rescore(verdict, reader, claimed, grid, suite_obj, device=device, data_root=data_root,
                 arp_tolerance=arp_tolerance, metric_tolerance=metric_tolerance, console=console, progress=progress)
        if recount and not verdict.reasons:
            _recount(verdict, reader, claimed, suite_obj, device=device, data_root=data_root, console=console,
                     sample=recount_sample, seed=recount_seed, progress=progress)


def _where(c: CellResult) -> str:
    return f"{c.model} {c.attack} eps {c.eps:g} seed {c.seed}"


def _check_grid(verdict: BundleVerdict, claimed, grid: Grid, suite) -> None:
    """The cells are exactly the manifest's grid, each with the manifest's options and data, a key
    that is the hash of its configuration, and members pinned as this suite's."""
    manifest = verdict.manifest
    wanted = set(grid.cells())
    seen: set[tuple] = set()
    reasons = verdict.reasons
    members = {m.name: m for m in suite.members}
    for name, entry in manifest["suite"]["members"].items():
        member = members.get(name)
        if member is None:
            reasons.append(f"manifest: the suite {suite.name} has no model {name!r}")
        elif (entry["repo_id"], entry["revision"], entry["sha256"]) != (member.repo_id, member.revision,
                                                                        member.sha256):
            reasons.append(f"manifest: {name} was pinned as {entry['repo_id']}@{entry['revision'][:12]} sha256 "
                           f"{entry['sha256'][:12]}; this suite pins {member.repo_id}@{member.revision[:12]} sha256 "
                           f"{member.sha256[:12]}")
    for i, (cell, rel, _) in enumerate(claimed):
        where = f"cell {i} ({_where(cell)})"
        ident = (cell.model, cell.attack, cell.eps, cell.seed)
        if ident not in wanted:
            what = ("attack" if cell.attack not in grid.attacks else "model" if cell.model not in grid.models
                    else "eps" if cell.eps not in grid.eps else "seed")
            reasons.append(f"{where}: its {what} is not in the grid the manifest declares (attacks "
                           f"{', '.join(grid.attacks)}; models {', '.join(grid.models)}; eps "
                           f"{', '.join(f'{e:g}' for e in grid.eps)}; seeds {', '.join(map(str, grid.seeds))})")
            continue
        if ident in seen:
            reasons.append(f"{where}: appears twice")
            continue
        seen.add(ident)
        config = cell.config
        if cell.suite != suite.name:
            reasons.append(f"{where}: suite is {cell.suite!r}, the bundle's is {suite.name}")
        if cell.status != Status.VALID:
            reasons.append(f"{where}: the bundle holds a {cell.status} cell ({cell.reason})")
        mine = {"suite": cell.suite, "model": cell.model, "attack": cell.attack, "eps": cell.eps, "seed": cell.seed,
                "profile": cell.profile, "model_revision": cell.model_revision,
                "options": manifest["attack"]["options"][cell.attack], "images": grid.images,
                "batch_size": grid.batch_size}
        for key, value in mine.items():
            if config.get(key) != value:
                reasons.append(f"{where}: config.{key} is {show(config.get(key))}, the manifest says {show(value)}")
        if cell_key(config) != cell.key:
            reasons.append(f"{where}: key is not the hash of the cell's configuration")
        if cell.images != grid.images:
            reasons.append(f"{where}: images is {cell.images}, the manifest says {grid.images}")
        if rel != images_file(*ident):
            reasons.append(f"{where}: images_file is {rel!r}, expected {images_file(*ident)!r}")
    for ident in sorted(wanted - seen, key=str):
        model, attack, eps, seed = ident
        reasons.append(f"missing cell: {model} {attack} eps {eps:g} seed {seed} (declared by the manifest, absent "
                       "from cells.json)")


def _check_protocol(verdict: BundleVerdict, claimed, grid: Grid, suite) -> None:
    """The bundle ran a profile of its suite as that profile says: the profile exists, every eps is
    one of its eps (compared exactly: 8.0000001 is not 8), every attack has the options the profile
    gives it (presets and step budget; an attack not installed here is checked on its budget only),
    and the batch size is the profile's."""
    from benchmark.runner.cells import _specs

    manifest = verdict.manifest
    profile_table = manifest.get("profile")
    name = profile_table.get("name") if isinstance(profile_table, dict) else None
    if not isinstance(name, str) or name not in suite.profiles:
        verdict.reasons.append(f"manifest: profile {show(name)} is not a profile of {suite.name} (its profiles: "
                               f"{', '.join(suite.profiles)})")
        return
    profile = suite.profile(name)
    for cell, _, _ in claimed:
        if cell.profile != name:
            verdict.reasons.append(f"{_where(cell)}: profile {cell.profile!r}, the manifest's is {name!r}")
            return
    off = [e for e in grid.eps if e not in profile.eps]
    if off:
        verdict.reasons.append(f"manifest: eps {', '.join(repr(e) for e in off)} is not an eps of the profile {name} "
                               f"({', '.join(f'{e:g}' for e in profile.eps)}; compared exactly)")
    batch = min(profile.batch_size, grid.images)
    if grid.batch_size != batch:
        verdict.reasons.append(f"manifest: batch size {grid.batch_size}; the profile {name} runs {grid.images} images "
                               f"in batches of {batch}")
    for attack in grid.attacks:
        said = manifest["attack"]["options"][attack]
        try:
            (spec,) = [s for s in _specs([attack], suite, profile) if s.name == attack]
        except (UserError, ValueError):
            optimizer = attack.partition(":")[0]
            budget = profile.steps.get(optimizer)
            if budget is not None and said.get("steps") not in (None, budget):
                verdict.reasons.append(f"manifest: {attack} ran with steps {said.get('steps')!r}; the profile {name} "
                                       f"gives {optimizer} {budget}")
            continue
        expected = dict(spec.options)
        if said != expected:
            verdict.reasons.append(f"manifest: {attack} ran with options {show(said)}; under the profile {name} it "
                                   f"runs with {show(expected)}")


def _check_attacks(verdict: BundleVerdict, manifest: dict) -> None:
    """A built-in attack's sources are mtlbench's own files (and, from this version, the same)."""
    from benchmark.version import __version__

    claimed = manifest["attack"]["sources"]
    for name in manifest["attack"]["names"]:
        try:
            from benchmark.attacks.spec import AttackSpec

            spec = AttackSpec.parse(name)
        except UserError:
            continue  # a plugin that is not installed here: its images are re-scored all the same
        if not spec.builtin:
            continue
        ours = attack_sources([name])
        missing = sorted(set(ours) - set(claimed))
        if missing:
            verdict.reasons.append(f"manifest: {name} is mtlbench's own attack, defined in {', '.join(sorted(ours))}; "
                                   f"the bundle's sources do not list {', '.join(missing)}")
        else:  # a built-in name stands for mtlbench's code: the same files, whatever version is claimed
            changed = [k for k in ours if claimed[k] != ours[k]]
            if changed:
                verdict.reasons.append(f"manifest: {name} is mtlbench's own attack, but the bundle's "
                                       f"{', '.join(changed)} is not this mtlbench {__version__}'s (sha256 "
                                       f"{claimed[changed[0]][:12]} against {ours[changed[0]][:12]}); a changed "
                                       "attack needs a name of its own")


def _contexts(verdict, suite, grid, device, data_root, console):
    """Each model's loaded target, evaluation batches and clean metrics (or why it cannot load)."""
    from benchmark.runner.context import prepare_context
    from benchmark.targets import Target

    out = {}
    for model in grid.models:
        try:
            out[model] = prepare_context(Target.of(suite.path or suite.name, model), grid.images, grid.batch_size,
                                         data_root, device=device, console=console)
        except UserError as exc:
            out[model] = exc
    return out


def _rescore(verdict: BundleVerdict, reader: Archive, claimed, grid: Grid, suite, *, device, data_root,
             arp_tolerance, metric_tolerance, console, progress) -> None:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    from benchmark.runner.cells import per_image_record, score_batch
    from benchmark.runner.context import clean_inspection
    from benchmark.runner.inspection import encode_adversarial
    from benchmark.scoring import arp, task_arp

    ids = verdict.manifest["data"]["image_ids"]
    contexts = _contexts(verdict, suite, grid, device, data_root, console)
    members = verdict.manifest["suite"]["members"]
    for done, (cell, rel, digest) in enumerate(claimed):
        progress(done, len(claimed), "re-scored")
        where = _where(cell)
        ctx = contexts[cell.model]
        if isinstance(ctx, Exception):
            verdict.reasons.append(f"{where}: cannot load the model to re-score it ({ctx})")
            continue
        scored = members[cell.model]["scored_revision"]
        if cell.model_revision != ctx.model_revision or scored != ctx.model_revision:
            verdict.reasons.append(
                f"{where}: scored on weights revision {cell.model_revision} (manifest: {scored}), but this "
                f"suite's {cell.model} is {ctx.model_revision}: another model's numbers")
            continue
        if list(ids) != list(ctx.image_ids or []) or cell.per_image["ids"] != ids:
            verdict.reasons.append(f"{where}: the bundle's image ids are not the suite's evaluation images "
                                   f"({(ids or [None])[0]} ... vs {(ctx.image_ids or [None])[0]} ...)")
            continue
        if rel not in reader.sizes:
            verdict.reasons.append(f"{where}: images file {rel} is missing from the bundle")
            continue
        raw = reader.read(rel, reader.sizes[rel])
        if hashlib.sha256(raw).hexdigest() != digest:
            verdict.reasons.append(f"{where}: {rel} does not have the sha256 cells.json gives it")
            continue
        try:
            adv = load_tensors(raw)["adversarial"]
        except (SafetensorError, KeyError, OSError, ValueError) as exc:
            verdict.reasons.append(f"{where}: images file {rel} cannot be read ({exc})")
            continue
        clean = torch.cat([b["image"] for b in ctx.batches]).cpu()
        if adv.shape != clean.shape or adv.dtype != torch.float32:
            verdict.reasons.append(f"{where}: images of shape {tuple(adv.shape)} {adv.dtype}, expected "
                                   f"{tuple(clean.shape)} float32")
            continue
        problem = _image_problem(adv, clean, cell.eps, ids)
        if problem:
            verdict.reasons.append(f"{where}: {problem}")
            continue
        metrics = TaskMetrics.of(ctx.tasks)
        image_metrics: list[dict] = []
        inspect = _inspected_images(suite, cell)
        inspected: list[bytes] = []
        for i, part in enumerate(adv.split([b["image"].shape[0] for b in ctx.batches])):
            first = score_batch(ctx, i, part.to(device), cell.seed, metrics, image_metrics)
            seen = sum(b["image"].shape[0] for b in ctx.batches[:i])
            if inspect > seen:  # the inspection pages show a verified bundle's images too
                inspected += encode_adversarial(ctx.batches[i]["image"], part.to(device), first, ctx.tasks,
                                                inspect - seen)
        adversarial = metrics.compute()
        record = per_image_record(ctx, image_metrics)
        got_arp, got_task_arp = arp(ctx.clean, adversarial, ctx.tasks), task_arp(ctx.clean, adversarial, ctx.tasks)
        reasons = _compare_cell(cell, ctx, adversarial, record, got_arp, got_task_arp, arp_tolerance,
                                metric_tolerance)
        if reasons:
            verdict.reasons += [f"{where}: {r}" for r in reasons]
            continue
        # what is ranked follows from the images: the re-scored numbers, not the claims
        cell.adversarial, cell.arp, cell.task_arp, cell.clean = adversarial, got_arp, got_task_arp, ctx.clean
        cell.per_image = record
        if inspected:
            cell.inspection = inspected
            cell.config = {**cell.config, "inspection": {"images": len(inspected), "clean": ctx.clean_key}}
            if ctx.clean_key not in verdict.clean_inspection:
                verdict.clean_inspection[ctx.clean_key] = clean_inspection(ctx, len(inspected))
        verdict.checked += 1
        verdict.models[cell.model] = {"revision": ctx.model_revision,
                                      "info": {**ctx.target.describe(), "clean": ctx.clean}}
    progress(len(claimed), len(claimed), "re-scored")


def _inspected_images(suite, cell: CellResult) -> int:
    """How many of a bundle cell's images its profile keeps for the inspection pages."""
    try:
        return suite.profile(cell.profile).inspect_images
    except UserError:
        return 0


def _image_problem(adv: torch.Tensor, clean: torch.Tensor, eps: float, ids: list[str]) -> str:
    """The validator's output checks (:func:`output_problem`), said of a bundle's image (eps 0-255)."""
    p = output_problem(adv, clean, unit_eps(eps))
    if p is None:
        return ""
    if p.kind == "non-finite":
        return f"image {p.image} holds NaN or inf values"
    if p.kind == "range":
        return f"image {p.image} is outside [0, 1] (values in [{p.low:.6f}, {p.high:.6f}])"
    return f"image {p.image} ({ids[p.image]}) leaves the eps-ball: max |delta| {p.delta:.4f}/255 > eps {eps:g}/255"


def _compare_cell(cell: CellResult, ctx, adversarial, per_image, got_arp, got_task_arp, arp_tolerance,
                  metric_tolerance) -> list[str]:
    """Every re-scored quantity against the cell's claim: metrics, clean metrics, ARP, each task's
    ARP, and per image its metrics and score (a jackknife pseudo-value: N - 1 times the ARP's
    rounding, so its tolerance is (N - 1) x the ARP's)."""
    reasons = []
    for task, values in adversarial.items():
        for metric, value in values.items():
            said = cell.adversarial.get(task, {}).get(metric)
            if not _close(said, value, metric_tolerance, relative=True):
                reasons.append(f"{task} {metric} is {value:.6g} re-scored, the bundle claims {said!r}")
    for task, said in cell.clean.items():
        for metric, value in said.items():
            if metric not in ctx.clean[task] or not _close(value, ctx.clean[task][metric], metric_tolerance,
                                                           relative=True):
                reasons.append(f"clean {task} {metric} is {ctx.clean[task].get(metric, float('nan')):.6g}, the "
                               f"bundle claims {value!r}")
    if not _close(cell.arp, got_arp, arp_tolerance):
        reasons.append(f"ARP is {got_arp:.4f} re-scored, the bundle claims {cell.arp!r} (tolerance {arp_tolerance:g})")
    for task, value in got_task_arp.items():
        if not _close(cell.task_arp.get(task), value, arp_tolerance):
            reasons.append(f"ARP of {task} is {value:.4f} re-scored, the bundle claims {cell.task_arp.get(task)!r}")
    n = len(per_image["score"])
    score_tolerance = SCORE_TOLERANCE_PER_IMAGE * n
    for i, (said, value) in enumerate(zip(cell.per_image["score"], per_image["score"], strict=True)):
        if not _close(said, value, score_tolerance):
            reasons.append(f"image {i} ({per_image['ids'][i]}): score is {value:.4f} re-scored, the bundle claims "
                           f"{said!r} (tolerance {score_tolerance:.3g})")
            break
    if "state" in cell.per_image:
        reasons += _compare_states(cell.per_image["state"], per_image.get("state"), ctx, IMAGE_METRIC_TOLERANCE)
    for task, table in per_image["metrics"].items():
        for metric, series in table.items():
            claims = cell.per_image["metrics"].get(task, {}).get(metric)
            if claims is None:
                reasons.append(f"per-image {task} {metric} is missing")
                continue
            for i, (said, value) in enumerate(zip(claims, series, strict=True)):
                if not _close(said, value, IMAGE_METRIC_TOLERANCE, relative=True):
                    reasons.append(f"image {i} ({per_image['ids'][i]}): {task} {metric} is {value:.6g} re-scored, "
                                   f"the bundle claims {said!r}")
                    break
    return reasons


def _compare_states(claimed: str, ours: str | None, ctx, tolerance: float) -> list[str]:
    """The per-image metric statistics a cell claims (the worst case per image is scored from
    them) against the re-derived ones, by what they say: each image's metrics computed from them
    (a histogram's count may sit in the neighbouring bin when another thread count or instruction
    set rounds one pixel's value differently; the median it gives moves within the tolerance)."""
    from benchmark.metric_base import decode_states

    if ours is None:
        return ["per-image statistics are claimed, but this suite's metrics keep none per image"]
    factories = {t.name: t.new_metric for t in ctx.tasks}
    try:
        theirs = decode_states(claimed, factories)
    except ValueError as exc:
        return [f"per_image.state: {exc}"]
    mine = decode_states(ours, factories)
    if len(theirs) != len(mine):
        return [f"per_image.state holds {len(theirs)} images, the cell {len(mine)}"]
    for i, (a, b) in enumerate(zip(theirs, mine, strict=True)):
        for task in b:
            if task not in a:
                return [f"image {i}: per_image.state has no statistics of {task}"]
            for name, value in b[task].state().items():
                if a[task].state().get(name) is None or a[task].state()[name].shape != value.shape:
                    return [f"image {i}: the statistics of {task} ({name}) are not of this metric's shape"]
            said, derived = a[task].compute(), b[task].compute()
            for metric, value in derived.items():
                if not _close(said.get(metric), value, tolerance, relative=True):
                    return [f"image {i}: the statistics of {task} give {metric} {said.get(metric)!r}, the re-scored "
                            f"ones {value:.6g}"]
    return []


def _recount(verdict: BundleVerdict, reader: Archive, claimed, suite, *, device, data_root, console,
             sample: int | None, seed: int, progress) -> None:
    """Run each attack again, where its code is installed here with the bundle's sources, on every
    cell (or on ``sample`` cells drawn with ``seed``, over every eps): its counted passes must be
    the bundle's and its images the bundle's (module docstring)."""
    import random

    from safetensors.torch import load as load_tensors

    from benchmark.attacks.spec import AttackSpec
    from benchmark.runner.cells import Cell, evaluate_cell
    from benchmark.runner.context import prepare_context
    from benchmark.targets import Target

    manifest = verdict.manifest
    runnable, skipped = [], {}
    for cell, rel, _ in claimed:
        try:
            spec = AttackSpec.parse(cell.attack).with_options(**manifest["attack"]["options"][cell.attack])
            ours = attack_sources([cell.attack])
        except UserError:
            skipped[cell.attack] = "its code is not installed here"
            continue
        if any(manifest["attack"]["sources"].get(k) != v for k, v in ours.items()):
            skipped[cell.attack] = "the code installed here is not the version that made the bundle"
            continue
        runnable.append((cell, rel, spec))
    chosen = sorted(runnable, key=lambda c: (c[0].model, c[0].attack, c[0].eps, c[0].seed))
    if sample is not None and sample < len(chosen):
        chosen = random.Random(seed).sample(chosen, sample)
    contexts: dict[str, Any] = {}
    notes: dict[str, list[str]] = {}
    failed: set[str] = set()
    for done, (cell, rel, spec) in enumerate(chosen):
        progress(done, len(chosen), "recounted")
        target = Target.of(suite.path or suite.name, cell.model)
        if cell.model not in contexts:
            contexts[cell.model] = prepare_context(target, cell.images, int(cell.config["batch_size"]), data_root,
                                                   device=device, console=console)
        again = evaluate_cell(Cell(target, spec, cell.eps, cell.seed, cell.profile, images=cell.images,
                                   batch_size=int(cell.config["batch_size"]), check_determinism=False,
                                   data_root=data_root, keep_images=True), contexts[cell.model])
        where = _where(cell)
        if again.status != Status.VALID:
            verdict.reasons.append(f"{where}: running the attack again gave a {again.status} cell ({again.reason})")
            failed.add(cell.attack)
            continue
        adv = load_tensors(reader.read(rel, reader.sizes[rel]))["adversarial"]
        gap = (again.adversarial_images.cpu() - adv).abs() * 255
        share = float((gap > 0.5).float().mean())
        if share > RECOUNT_PIXEL_SHARE:
            verdict.reasons.append(f"{where}: running {cell.attack} again gives other images ({share:.1%} of the "
                                   f"pixels differ, by up to {float(gap.max()):.3g}/255): the bundle's images are not "
                                   "this attack's")
            failed.add(cell.attack)
            continue
        if (again.forward_passes, again.backward_passes) != (cell.forward_passes, cell.backward_passes):
            verdict.reasons.append(f"{where}: the bundle claims {cell.forward_passes} forward and "
                                   f"{cell.backward_passes} backward passes; running the attack again counted "
                                   f"{again.forward_passes} and {again.backward_passes}")
            failed.add(cell.attack)
            continue
        notes.setdefault(cell.attack, []).append(f"{cell.model} eps {cell.eps:g} seed {cell.seed}")
    progress(len(chosen), len(chosen), "recounted")
    of = {a: sum(1 for c, _, _ in claimed if c.attack == a) for a in notes}
    how = "every cell" if sample is None else f"a sample of {sample} cells drawn with seed {seed}"
    for attack, cells in notes.items():
        if attack not in failed:
            verdict.recounted[attack] = (f"recounted: {len(cells)} of its {of[attack]} cells run again ({how}) gave "
                                         "the same passes and the same images")
    for attack, why in skipped.items():
        verdict.skipped_recount[attack] = f"not recounted: {why}; its numbers are re-scored only"
