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

``mtlbench verify BUNDLE`` checks every claim of a bundle and re-scores its images
(:mod:`benchmark.runner.verify`).
"""

from __future__ import annotations

import datetime as _dt
import inspect
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmark.enums import Status
from benchmark.errors import UserError
from benchmark.paths import safe_name
from benchmark.runner.store import CellResult, pid_alive
from benchmark.zoo.checkpoint import file_sha256

__all__ = ["BundleError", "SubmitResult", "attack_sources", "find_bundles", "images_file", "submit"]

BUNDLE_FORMAT = "mtlbench-bundle"
BUNDLE_VERSION = 1


class BundleError(UserError):
    """A bundle that cannot be verified; the message names the file, the cell and the field."""


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


def images_file(model: str, attack: str, eps: float, seed: int) -> str:
    """Where a bundle keeps the adversarial images of a cell."""
    return f"images/{safe_name(model)}/{safe_name(attack)}/eps{eps:g}-seed{seed}.safetensors"


def _images_file(cell: CellResult) -> str:
    return images_file(cell.model, cell.attack, cell.eps, cell.seed)


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
           as_zip: bool = False, cell_timeout: float | None = None, images: int | None = None,
           console=None) -> SubmitResult:
    """Run ``attacks`` under the suite's ``profile`` and write a result bundle to ``out`` (a
    directory, or ``out`` + ``.zip`` with ``as_zip``); on a failed or invalid cell, write
    ``out``-report.json instead and return the failures."""
    import time

    from safetensors.torch import save_file

    from benchmark.runner.run import RunOptions, run
    from benchmark.suites import load_suite

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
    _remove_abandoned(target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-{os.getpid()}-", dir=target.parent))
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

        run_options = RunOptions(suite=suite, profile=profile, attacks=attacks, eps=eps, models=models, seeds=seeds,
                             device=device, results=str(staging / "cells.db"), data_root=data_root,
                             defenses=["none"], threads=threads, workers=workers, keep_images=True,
                             cell_timeout=cell_timeout, images=images,
                             batch_cells="off")  # each cell alone, as the verifier recomputes it
        summary = run(run_options, console=console, on_result=keep)
        from benchmark.runner.store import ResultsStore

        with ResultsStore(run_options.results, readonly=True) as store:
            cells = [c for c in map(store.get, summary.keys) if c is not None]
        failures = [f"{c.model} {c.attack} eps {c.eps:g} seed {c.seed}: {c.status}: {c.reason}"
                    for c in cells if c.status != Status.VALID]
        failures += [f"{name}: not run ({why})" for name, why in summary.missing_models.items()]
        if failures or not cells:
            report = target.parent / f"{target.name}-report.json"
            report.write_text(json.dumps({"attacks": attacks, "suite": suite_obj.name, "profile": prof.name,
                                          "failures": failures or ["no cell was run"],
                                          "cells": len(cells)}, indent=1) + "\n")
            return SubmitResult(None, len(cells), failures or ["no cell was run"], report,
                                time.perf_counter() - start)
        manifest = _manifest(cells, suite_obj, prof)
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


def _manifest(cells: list[CellResult], suite_obj, prof) -> dict[str, Any]:
    """A bundle's manifest: what its cells ran (attacks and their options and sources, the suite
    and its members' pins, the data, the profile, eps and seeds) and where (device, torch)."""
    from benchmark.provenance import cpu_capability, git_commit
    from benchmark.suites import list_suites

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
        "device": first.device, "torch": first.torch_version, "cpu_capability": cpu_capability(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cells": len(cells),
    }
    return manifest


def _remove_abandoned(target: Path) -> None:
    """Remove what a submission to ``target`` that was killed (``kill -9``, a power cut) left: its
    staging folder ``.<name>.partial-<pid>-*``, when that process is gone."""
    for leftover in target.parent.glob(f".{target.name}.partial-*"):
        try:
            pid = int(leftover.name.removeprefix(f".{target.name}.partial-").split("-")[0])
        except ValueError:
            continue
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(leftover, ignore_errors=True)


def find_bundles(folder: str | Path) -> list[Path]:
    """The bundles in ``folder``: its sub-directories with a manifest.json and its .zip files."""
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"--bundles {root}: not a directory (give the folder that holds the bundles)")
    found = [p for p in sorted(root.iterdir())
             if (p.is_dir() and (p / "manifest.json").is_file()) or (p.is_file() and p.suffix == ".zip")]
    return found
