"""Result bundles: what a submitted attack hands over, and how anyone re-scores it.

``mtlbench submit ATTACK`` runs the attack through the validator (every output), the determinism
check (every attack that is not mtlbench's own, and any on a GPU:
:func:`~benchmark.runner.cells.needs_determinism_check`) and a suite profile's protocol on the
suite's own (undefended) members, and writes::

    BUNDLE/manifest.json     attack names, options and source sha256s; mtlbench version and commit;
                             suite, each member's pinned revision/sha256 and the weights revision
                             scored; data split and image ids; eps, seeds; device and torch version
    BUNDLE/cells.json        every cell's result (metrics, ARP, per-image scores, passes, time)
    BUNDLE/images/<model>/<attack>/eps<e>-seed<s>.safetensors
                             the adversarial images of the cell (float32, batch order)

(or ``BUNDLE.zip`` with the same files). A submission with an invalid or failed cell gets a
report of what failed instead.

``mtlbench verify BUNDLE`` re-scores the images against the weights this installation loads for
the same members (pinned Hub revisions for the full suites, the local build for the tiny ones) and
the same clean images: it checks the weights revision, the image ids, [0, 1] and the eps-ball,
recomputes every metric and the ARP, and compares with the claims. Tolerances: ARP and each
task's ARP within ``arp_tolerance`` points (default 0.01), every metric within ``metric_tolerance``
relative (default 1e-4) — on the device the bundle was made on the numbers are the same; on
another, floating-point differences may move a few argmax pixels.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import math
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import UserError
from benchmark.runner.store import CellResult
from benchmark.zoo.checkpoint import file_sha256

__all__ = ["BundleVerdict", "SubmitResult", "attack_sources", "find_bundles", "open_bundle", "submit", "verify_bundle"]

BUNDLE_FORMAT = "mtlbench-bundle"
BUNDLE_VERSION = 1
ARP_TOLERANCE = 0.01  # ARP points
METRIC_TOLERANCE = 1e-4  # relative
BALL_TOLERANCE = 1e-5  # on the [0, 1] scale, as the validator's


def attack_sources(names: list[str]) -> dict[str, str]:
    """sha256 of the source files that define the attacks ``names``: every ``.py`` file of a
    plugin's top-level package (or its single module), for a built-in optimizer its module and
    the shared objective and base modules."""
    from benchmark.attacks.spec import AttackSpec

    files: dict[str, Path] = {}
    for name in names:
        cls = AttackSpec.parse(name).attack_class
        module_file = Path(inspect.getfile(cls)).resolve()
        top = cls.__module__.split(".")[0]
        if top == "benchmark":
            attacks_dir = module_file.parent
            for path in (module_file, attacks_dir / "objectives.py", attacks_dir / "base.py"):
                files[f"benchmark/attacks/{path.name}"] = path
        elif module_file.name == "__init__.py" or "." in cls.__module__:
            package = module_file.parent
            while (package.parent / "__init__.py").exists():
                package = package.parent
            for path in sorted(package.rglob("*.py")):
                files[f"{package.name}/{path.relative_to(package).as_posix()}"] = path
        else:
            files[module_file.name] = module_file
    return {key: file_sha256(path) for key, path in sorted(files.items())}


def _safe_name(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in text)


def _images_file(cell: CellResult) -> str:
    return f"images/{_safe_name(cell.model)}/{_safe_name(cell.attack)}/eps{cell.eps:g}-seed{cell.seed}.safetensors"


@dataclass
class SubmitResult:
    bundle: Path | None
    cells: int
    failures: list[str] = field(default_factory=list)
    report: Path | None = None
    seconds: float = 0.0


def submit(attacks: list[str], *, suite: str = "tiny-nyuv2-resnet34", profile: str = "quick", out: str | Path,
           models: list[str] | None = None, eps: list[float] | None = None, seeds: list[int] | None = None,
           device: str = "cpu", threads: int | None = None, workers: int | None = None, data_root: str | None = None,
           as_zip: bool = False, console=None) -> SubmitResult:
    """Run ``attacks`` under the suite's ``profile`` and write a result bundle to ``out`` (a
    directory, or ``out`` + ``.zip`` with ``as_zip``); on a failed or invalid cell, write
    ``out``-report.json instead and return the failures."""
    import time

    from safetensors.torch import save_file

    from benchmark.provenance import git_commit
    from benchmark.runner.run import RunOptions, run
    from benchmark.suites import list_suites, load_suite

    start = time.perf_counter()
    target = Path(out)
    final = target.with_suffix(".zip") if as_zip else target
    if final.exists():
        raise UserError(f"{final} exists; give a new --out (a bundle is never overwritten)")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"--out {target}: cannot create the folder {target.parent} ({exc.strerror})") from None
    suite_obj = load_suite(suite)
    prof = suite_obj.profile(profile)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        def keep(result: CellResult) -> None:
            images = getattr(result, "adversarial_images", None)
            if images is None:
                return
            path = staging / _images_file(result)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"adversarial": images.contiguous()}, str(path),
                      metadata={"model": result.model, "attack": result.attack, "eps": f"{result.eps:g}",
                                "seed": str(result.seed)})

        options = RunOptions(suite=suite, profile=profile, attacks=attacks, eps=eps, models=models, seeds=seeds,
                             device=device, results=str(staging / "cells.db"), data_root=data_root,
                             defenses=["none"], threads=threads, workers=workers, keep_images=True)
        summary = run(options, console=console, on_result=keep)
        from benchmark.runner.store import ResultsStore

        with ResultsStore(options.results, readonly=True) as store:
            cells = [c for c in map(store.get, summary.keys) if c is not None]
        failures = [f"{c.model} {c.attack} eps {c.eps:g} seed {c.seed}: {c.status}: {c.reason}"
                    for c in cells if c.status != "valid"]
        failures += [f"{name}: not run ({why})" for name, why in summary.missing_models.items()]
        if failures or not cells:
            report = target.parent / f"{target.name}-report.json"
            report.write_text(json.dumps({"attacks": attacks, "suite": suite_obj.name, "profile": prof.name,
                                          "failures": failures or ["no cell was run"],
                                          "cells": len(cells)}, indent=1) + "\n")
            return SubmitResult(None, len(cells), failures or ["no cell was run"], report,
                                time.perf_counter() - start)
        names = list(dict.fromkeys(c.attack for c in cells))
        scored = {c.model: c.model_revision for c in cells}
        first = cells[0]
        manifest = {
            "format": BUNDLE_FORMAT, "version": BUNDLE_VERSION,
            "attack": {"names": names,
                       "options": {n: next(c.config.get("options", {}) for c in cells if c.attack == n) for n in names},
                       "sources": attack_sources(names)},
            "mtlbench": {"version": first.mtlbench_version, "commit": git_commit()},
            "suite": {"name": suite_obj.name, **({} if suite_obj.name in list_suites() or suite_obj.path is None
                                                 else {"ref": str(suite_obj.path.resolve())}),
                      "manifest_sha256": file_sha256(suite_obj.path) if suite_obj.path is not None else "",
                      "members": {m.name: {"repo_id": m.repo_id, "revision": m.revision, "sha256": m.sha256,
                                           "scored_revision": scored[m.name]}
                                  for m in suite_obj.members if m.name in scored}},
            "data": {"source": suite_obj.data_source, "split": suite_obj.split, "images": first.images,
                     "batch_size": first.config.get("batch_size"), "image_ids": first.per_image.get("ids", [])},
            "profile": {"name": prof.name, "steps": dict(prof.steps)},
            "eps": sorted({c.eps for c in cells}), "seeds": sorted({c.seed for c in cells}),
            "device": first.device, "torch": first.torch_version,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "cells": len(cells),
        }
        records = []
        for c in cells:
            rel = _images_file(c)
            records.append({**asdict(c), "images_file": rel, "images_sha256": file_sha256(staging / rel)})
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        (staging / "cells.json").write_text(json.dumps(records, indent=1, sort_keys=True) + "\n")
        for extra in staging.glob("cells.db*"):
            extra.unlink()
        if as_zip:
            with zipfile.ZipFile(final, "w", zipfile.ZIP_DEFLATED) as zf:
                for path in sorted(staging.rglob("*")):
                    if path.is_file():
                        zf.write(path, path.relative_to(staging).as_posix())
        else:
            staging.rename(final)
        return SubmitResult(final, len(cells), [], None, time.perf_counter() - start)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# ---------------------------------------------------------------------- verify
@contextmanager
def open_bundle(path: str | Path) -> Iterator[Path]:
    """The bundle's directory: ``path`` itself, or a zip extracted to a temporary one (members
    that would land outside it are refused)."""
    p = Path(path)
    if p.is_dir():
        yield p
        return
    if not p.is_file():
        raise UserError(f"bundle {p} does not exist")
    if not zipfile.is_zipfile(p):
        raise UserError(f"bundle {p} is neither a directory nor a .zip file")
    with tempfile.TemporaryDirectory(prefix="mtlbench-bundle-") as tmp:
        with zipfile.ZipFile(p) as zf:
            for name in zf.namelist():
                parts = Path(name).parts
                if Path(name).is_absolute() or ".." in parts:
                    raise UserError(f"bundle {p}: member {name!r} points outside the bundle")
            zf.extractall(tmp)
        yield Path(tmp)


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"bundle {path.parent}: no {path.name} ({what})") from None
    except ValueError as exc:
        raise UserError(f"bundle {path.parent}: {path.name} is not valid JSON ({exc})") from None


@dataclass
class BundleVerdict:
    """The outcome of re-scoring a bundle: ``verified`` when every cell checks out."""

    path: Path
    manifest: dict[str, Any]
    cells: list[CellResult]
    reasons: list[str] = field(default_factory=list)
    checked: int = 0
    models: dict[str, dict[str, Any]] = field(default_factory=dict)  # re-scored: {model: {revision, info}}

    @property
    def verified(self) -> bool:
        return not self.reasons and self.checked == len(self.cells) > 0

    @property
    def name(self) -> str:
        return self.path.name


def _claimed_cells(root: Path) -> tuple[dict[str, Any], list[tuple[CellResult, str]]]:
    manifest = _read_json(root / "manifest.json", "the bundle's manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise UserError(f"bundle {root}: manifest.json is not an mtlbench result bundle manifest")
    if manifest.get("version") != BUNDLE_VERSION:
        raise UserError(f"bundle {root}: bundle version {manifest.get('version')!r}; this mtlbench reads "
                        f"{BUNDLE_VERSION}")
    records = _read_json(root / "cells.json", "the bundle's cells")
    if not isinstance(records, list):
        raise UserError(f"bundle {root}: cells.json must hold a list of cells")
    fields = set(CellResult.__dataclass_fields__)
    cells = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("images_file"), str):
            raise UserError(f"bundle {root}: cell {i} of cells.json has no images_file")
        try:
            cell = CellResult(**{k: v for k, v in rec.items() if k in fields})
        except TypeError as exc:
            raise UserError(f"bundle {root}: cell {i} of cells.json is not a cell ({exc})") from None
        cells.append((cell, rec["images_file"]))
    return manifest, cells


def _close(claimed: float | None, actual: float, tol: float, relative: bool = False) -> bool:
    if claimed is None or not isinstance(claimed, int | float):
        return False
    if not (math.isfinite(claimed) and math.isfinite(actual)):
        return math.isnan(claimed) == math.isnan(actual) and (math.isnan(actual) or claimed == actual)
    bound = tol * max(abs(actual), 1e-12) if relative else tol
    return abs(claimed - actual) <= bound + 1e-12


def verify_bundle(path: str | Path, *, suite: str | None = None, device: str = "cpu", data_root: str | None = None,
                  arp_tolerance: float = ARP_TOLERANCE, metric_tolerance: float = METRIC_TOLERANCE,
                  console=None) -> BundleVerdict:
    """Re-score the bundle at ``path`` on its suite (by name, or ``suite``: a manifest's path for a
    suite that is not a standard one); see the module docstring."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from benchmark.evaluation import evaluate
    from benchmark.runner.context import prepare_context
    from benchmark.scoring import arp, task_arp
    from benchmark.suites import list_suites, load_suite
    from benchmark.targets import Target
    from benchmark.zoo.hub import MissingWeightsError

    with open_bundle(path) as root:
        manifest, claimed = _claimed_cells(root)
        suite_name = manifest.get("suite", {}).get("name")
        if not isinstance(suite_name, str):
            raise UserError(f"bundle {path}: the manifest names no suite")
        ref = manifest["suite"].get("ref")  # the manifest's path, for a suite that is not a standard one
        if suite is None and suite_name not in list_suites() and isinstance(ref, str) and Path(ref).is_file():
            suite = ref
        suite = load_suite(suite or suite_name)
        if suite.name != suite_name:
            raise UserError(f"bundle {path} is of the suite {suite_name}, not {suite.name}")
        verdict = BundleVerdict(Path(path), manifest, [c for c, _ in claimed])
        members = manifest["suite"].get("members", {})
        ids = manifest.get("data", {}).get("image_ids")
        contexts: dict[str, Any] = {}
        dev = torch.device(device)
        for cell, rel in claimed:
            where = f"{cell.model} {cell.attack} eps {cell.eps:g} seed {cell.seed}"
            reasons: list[str] = []
            if cell.status != "valid":
                verdict.reasons.append(f"{where}: the bundle holds a {cell.status} cell ({cell.reason})")
                continue
            if cell.suite != suite.name:
                verdict.reasons.append(f"{where}: the cell is of suite {cell.suite}, the bundle's is {suite.name}")
                continue
            if cell.model not in contexts:
                try:
                    target = Target.of(suite.path or suite.name, cell.model)
                    contexts[cell.model] = prepare_context(target, cell.config.get("images"),
                                                           int(cell.config.get("batch_size") or 8), data_root,
                                                           device=dev, console=console)
                except (MissingWeightsError, UserError) as exc:
                    contexts[cell.model] = exc
            ctx = contexts[cell.model]
            if isinstance(ctx, Exception):
                verdict.reasons.append(f"{where}: cannot load the model to re-score it ({ctx})")
                continue
            pinned = members.get(cell.model, {}).get("scored_revision")
            if cell.model_revision != ctx.model_revision or pinned != ctx.model_revision:
                verdict.reasons.append(
                    f"{where}: scored on weights revision {cell.model_revision} (manifest: {pinned}), but this "
                    f"suite's {cell.model} is {ctx.model_revision}: another model's numbers")
                continue
            if ids is not None and (list(ids) != list(ctx.image_ids or []) or cell.per_image.get("ids") != ids):
                verdict.reasons.append(f"{where}: the bundle's image ids are not the suite's evaluation images "
                                       f"({(ids or [None])[0]} ... vs {(ctx.image_ids or [None])[0]} ...)")
                continue
            file = (root / rel).resolve()
            if not file.is_relative_to(root.resolve()) or not file.is_file():
                verdict.reasons.append(f"{where}: images file {rel} is missing from the bundle")
                continue
            try:
                adv = load_file(str(file))["adversarial"]
            except (SafetensorError, KeyError, OSError) as exc:
                verdict.reasons.append(f"{where}: images file {rel} cannot be read ({exc})")
                continue
            clean = torch.cat([b["image"] for b in ctx.batches]).cpu()
            if adv.shape != clean.shape or adv.dtype != torch.float32:
                verdict.reasons.append(f"{where}: images of shape {tuple(adv.shape)} {adv.dtype}, expected "
                                       f"{tuple(clean.shape)} float32")
                continue
            if not torch.isfinite(adv).all():
                bad = int((~torch.isfinite(adv)).flatten(1).any(1).nonzero()[0])
                verdict.reasons.append(f"{where}: image {bad} holds NaN or inf values")
                continue
            low, high = adv.flatten(1).min(1).values, adv.flatten(1).max(1).values
            outside = ((low < -BALL_TOLERANCE) | (high > 1 + BALL_TOLERANCE)).nonzero()
            if len(outside):
                i = int(outside[0])
                reasons.append(f"image {i} is outside [0, 1] (values in [{float(low[i]):.6f}, {float(high[i]):.6f}])")
            delta = (adv - clean).abs().flatten(1).max(1).values * 255.0
            over = (delta > cell.eps + BALL_TOLERANCE * 255.0).nonzero()
            if len(over):
                i = int(over[0])
                reasons.append(f"image {i} ({ids[i] if ids else i}) leaves the eps-ball: max |delta| "
                               f"{float(delta[i]):.4f}/255 > eps {cell.eps:g}/255")
            if reasons:
                verdict.reasons += [f"{where}: {r}" for r in reasons]
                continue
            # the suite's evaluation batches with the bundle's images in place of the clean ones
            parts = adv.split([b["image"].shape[0] for b in ctx.batches])
            adversarial = evaluate(ctx.model, ctx.tasks, [{**b, "image": part} for b, part in zip(ctx.batches, parts,
                                                                                                  strict=True)],
                                   device=dev)
            for task, values in adversarial.items():
                for metric, value in values.items():
                    said = cell.adversarial.get(task, {}).get(metric)
                    if not _close(said, value, metric_tolerance, relative=True):
                        reasons.append(f"{task} {metric} is {value:.6g} re-scored, the bundle claims {said!r}")
            for task, said in cell.clean.items():
                for metric, value in said.items():
                    if not _close(value, ctx.clean[task][metric], metric_tolerance, relative=True):
                        reasons.append(f"clean {task} {metric} is {ctx.clean[task][metric]:.6g}, the bundle "
                                       f"claims {value!r}")
            got_arp = arp(ctx.clean, adversarial, ctx.tasks)
            if not _close(cell.arp, got_arp, arp_tolerance):
                reasons.append(f"ARP is {got_arp:.4f} re-scored, the bundle claims {cell.arp!r} "
                               f"(tolerance {arp_tolerance:g})")
            for task, value in task_arp(ctx.clean, adversarial, ctx.tasks).items():
                if not _close(cell.task_arp.get(task), value, arp_tolerance):
                    reasons.append(f"ARP of {task} is {value:.4f} re-scored, the bundle claims "
                                   f"{cell.task_arp.get(task)!r}")
            if reasons:
                verdict.reasons += [f"{where}: {r}" for r in reasons]
                continue
            verdict.checked += 1
            verdict.models[cell.model] = {"revision": ctx.model_revision,
                                          "info": {**ctx.target.describe(), "clean": ctx.clean}}
    return verdict


def find_bundles(folder: str | Path) -> list[Path]:
    """The bundles in ``folder``: its sub-directories with a manifest.json and its .zip files."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--bundles {root}: not a directory (give the folder that holds the bundles)")
    found = [p for p in sorted(root.iterdir())
             if (p.is_dir() and (p / "manifest.json").is_file()) or (p.is_file() and p.suffix == ".zip")]
    return found
