"""``mtlbench verify``: re-score a result bundle and check every claim it makes.

A bundle (:mod:`benchmark.runner.bundle`) is third-party input: everything in it is checked
before it is believed, in this order, and a bundle that fails any check is rejected with the
reason, naming the file, the cell and the field:

1. **What it may cost.** A bundle is read in place (a zip is never extracted): only
   ``manifest.json``, ``cells.json`` and the images files of the cells the manifest declares may be
   in it, no links, and each file is bounded by what the manifest's grid needs (images x 3 x H x W
   float32 per cell), so a small zip cannot expand into gigabytes.
2. **Types and ranges.** The manifest and every cell are validated field by field (integers are
   integers in range, numbers finite, names valid) before any value is used; the suite is named,
   never a path: a bundle opens nothing outside itself (``--suite PATH`` is the verifier's own
   choice).
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
import json
import math
import re
import stat
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch

from benchmark.attacks.validate import output_problem
from benchmark.enums import Status
from benchmark.errors import UserError
from benchmark.runner.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, attack_sources, images_file
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
#: the most one cell's record may take in cells.json, per image and fixed
CELL_BYTES_PER_IMAGE, CELL_BYTES_FIXED = 8 * 2**10, 256 * 2**10
_SHA256 = re.compile(r"[0-9a-f]{64}")
_INT_MAX = 2**53  # JSON's exact integers


class BundleError(UserError):
    """A bundle that cannot be verified; the message names the file, the cell and the field."""


# ---------------------------------------------------------------------- reading, bounded
class _Reader:
    """A bundle's files read in place (a directory, or a zip that is never extracted): their
    names and sizes, and their bytes read with a bound."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.sizes: dict[str, int] = {}
        if path.is_dir():
            self._list_dir()
        elif path.is_file():
            self._list_zip()
        else:
            raise BundleError(f"bundle {path} does not exist")

    def _list_dir(self) -> None:
        for entry in sorted(self.path.rglob("*")):
            rel = entry.relative_to(self.path).as_posix()
            if entry.is_symlink():
                raise BundleError(f"bundle {self.path}: {rel} is a link; a bundle holds plain files only")
            if entry.is_file():
                self.sizes[rel] = entry.stat().st_size
            elif not entry.is_dir():
                raise BundleError(f"bundle {self.path}: {rel} is not a plain file")

    def _list_zip(self) -> None:
        if not zipfile.is_zipfile(self.path):
            raise BundleError(f"bundle {self.path} is neither a directory nor a .zip file")
        try:
            self.zip = zipfile.ZipFile(self.path)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise BundleError(f"bundle {self.path}: not a readable zip file ({exc})") from None
        for info in infos:
            name = info.filename
            parts = Path(name).parts
            if name.startswith("/") or Path(name).is_absolute() or ".." in parts or "\\" in name:
                raise BundleError(f"bundle {self.path}: member {name!r} points outside the bundle")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise BundleError(f"bundle {self.path}: member {name!r} is a link; a bundle holds plain files only")
            if info.is_dir():
                continue
            if name in self.sizes:
                raise BundleError(f"bundle {self.path}: member {name!r} appears twice")
            self.sizes[name] = info.file_size

    def read(self, name: str, limit: int) -> bytes:
        size = self.sizes.get(name)
        if size is None:
            raise BundleError(f"bundle {self.path}: no {name}")
        if size > limit:
            raise BundleError(f"bundle {self.path}: {name} is {size:,} bytes, more than the {limit:,} its grid "
                              "can need")
        try:
            if self.zip is not None:
                with self.zip.open(name) as f:
                    data = f.read(limit + 1)
            else:
                with open(self.path / name, "rb") as f:
                    data = f.read(limit + 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise BundleError(f"bundle {self.path}: {name} cannot be read ({exc})") from None
        if len(data) > limit:
            raise BundleError(f"bundle {self.path}: {name} holds more than the {limit:,} bytes it declares")
        return data

    def json(self, name: str, limit: int) -> Any:
        try:
            return json.loads(self.read(name, limit))
        except ValueError as exc:
            raise BundleError(f"bundle {self.path}: {name} is not valid JSON ({exc})") from None
        except RecursionError:
            raise BundleError(f"bundle {self.path}: {name} nests its values too deeply to be a bundle's") from None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


@contextmanager
def _reader(path: Path) -> Iterator[_Reader]:
    reader = _Reader(path)
    try:
        yield reader
    finally:
        reader.close()


# ---------------------------------------------------------------------- typed validation
class _Check:
    """Typed access to untrusted JSON: each accessor names the field it refuses."""

    def __init__(self, where: str, prefix: str = "") -> None:
        self.where, self.prefix = where, prefix

    def at(self, key: str) -> _Check:
        """The same checks inside the table ``key`` (messages name ``key.field``)."""
        return _Check(self.where, f"{self.prefix}{key}.")

    def fail(self, key: str, message: str) -> BundleError:
        return BundleError(f"{self.where}: {self.prefix}{key}: {message}")

    def table(self, table: Any, key: str) -> dict:
        value = table.get(key) if isinstance(table, dict) else None
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_show(value)}")
        return value

    def text(self, table: dict, key: str, *, pattern: re.Pattern | None = None, limit: int = 1000,
             default: Any = ...) -> str:
        value = table.get(key, default)
        if value is ... or not isinstance(value, str) or len(value) > limit:
            raise self.fail(key, f"expected a string, got {_show(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.fail(key, f"{value!r} is not valid here")
        return value

    def integer(self, table: dict, key: str, low: int, high: int, *, optional: bool = False) -> int | None:
        value = table.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"expected an integer in [{low}, {high}], got {_show(value)}")
        return value

    def number(self, table: dict, key: str, low: float, high: float, *, optional: bool = False,
               nan: bool = False) -> float | None:
        value = table.get(key)
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(key, f"expected a number, got {_show(value)}")
        if math.isnan(value) and nan:
            return float(value)
        if not math.isfinite(value) or not low <= value <= high:
            raise self.fail(key, f"expected a number in [{low:g}, {high:g}], got {_show(value)}")
        return float(value)

    def numbers(self, values: Any, key: str, *, length: int | None = None, nan: bool = True) -> list[float]:
        """A list of numbers (NaN allowed where a quantity can be undefined, never inf)."""
        if not isinstance(values, list) or (length is not None and len(values) != length):
            raise self.fail(key, f"expected a list of {length if length is not None else ''} numbers, got "
                                 f"{_show(values)}")
        for v in values:
            if isinstance(v, bool) or not isinstance(v, int | float) or (math.isinf(v) or (math.isnan(v) and not nan)):
                raise self.fail(key, f"expected numbers, found {_show(v)}")
        return [float(v) for v in values]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _metrics(check: _Check, table: Any, key: str) -> dict[str, dict[str, float]]:
    """``{task: {metric: number}}`` (NaN allowed: a metric can be undefined; never inf)."""
    if not isinstance(table, dict):
        raise check.fail(key, f"expected a table of task metrics, got {_show(table)}")
    out = {}
    for task, values in table.items():
        if not isinstance(values, dict):
            raise check.fail(f"{key}.{task}", f"expected a table of metrics, got {_show(values)}")
        out[task] = {m: check.number(values, m, -1e12, 1e12, nan=True) for m in values}
    return out


@dataclass(frozen=True)
class _Grid:
    models: tuple[str, ...]
    attacks: tuple[str, ...]
    eps: tuple[float, ...]
    seeds: tuple[int, ...]
    images: int
    batch_size: int

    def cells(self) -> list[tuple[str, str, float, int]]:
        return [(m, a, e, s) for m in self.models for a in self.attacks for e in self.eps for s in self.seeds]


def _manifest(raw: Any, path: Path) -> tuple[dict, _Grid]:
    """The manifest, type-checked; the grid of cells it declares."""
    from benchmark.suites import MAX_EVAL_SIZE, VALID_NAME

    check = _Check(f"bundle {path}: manifest.json")
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"bundle {path}: manifest.json is not an mtlbench result bundle manifest")
    if raw.get("version") != BUNDLE_VERSION:
        raise BundleError(f"bundle {path}: bundle version {_show(raw.get('version'))}; this mtlbench reads "
                          f"{BUNDLE_VERSION}")
    suite = check.table(raw, "suite")
    check.at("suite").text(suite, "name", pattern=VALID_NAME, limit=200)
    members = check.at("suite").table(suite, "members")
    if not members or len(members) > 10_000:
        raise check.fail("suite.members", f"expected the models the bundle was scored on, got {len(members)}")
    for name, entry in members.items():
        if not isinstance(name, str) or not VALID_NAME.fullmatch(name):
            raise check.fail("suite.members", f"{_show(name)} is not a model name")
        if not isinstance(entry, dict):
            raise check.fail(f"suite.members.{name}", "expected a table")
        for key in ("repo_id", "revision", "sha256", "scored_revision"):
            check.at(f"suite.members.{name}").text(entry, key, limit=200)
    attack = check.table(raw, "attack")
    names = attack.get("names")
    if not isinstance(names, list) or not names or len(names) > 1000 or not all(isinstance(n, str) for n in names):
        raise check.fail("attack.names", f"expected a list of attack names, got {_show(names)}")
    if len(set(names)) != len(names):
        raise check.fail("attack.names", "an attack is named twice")
    options = check.at("attack").table(attack, "options")
    for name in names:
        if not isinstance(options.get(name), dict):
            raise check.fail(f"attack.options.{name}", f"expected the attack's options, got {_show(options.get(name))}")
    sources = check.at("attack").table(attack, "sources")
    for key, digest in sources.items():
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise check.fail(f"attack.sources.{key}", f"expected a sha256, got {_show(digest)}")
    data = check.table(raw, "data")
    images = check.at("data").integer(data, "images", 1, MAX_EVAL_SIZE)
    batch_size = check.at("data").integer(data, "batch_size", 1, 65_536)
    ids = data.get("image_ids")
    if not isinstance(ids, list) or len(ids) != images or not all(isinstance(i, str) and len(i) < 500 for i in ids):
        raise check.fail("data.image_ids", f"expected {images} image ids (strings), got {_show(ids)}")
    eps = raw.get("eps")
    if (not isinstance(eps, list) or not eps or len(eps) > 1000 or len(set(map(str, eps))) != len(eps)
            or not all(isinstance(e, int | float) and not isinstance(e, bool) and math.isfinite(e) and 0 < e <= 255
                       for e in eps)):
        raise check.fail("eps", f"expected distinct numbers in (0, 255] (0-255 units), got {_show(eps)}")
    seeds = raw.get("seeds")
    if (not isinstance(seeds, list) or not seeds or len(seeds) > 1000 or len(set(map(str, seeds))) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**63 for s in seeds)):
        raise check.fail("seeds", f"expected distinct integers in [0, 2^63), got {_show(seeds)}")
    for key in ("device", "torch", "created"):
        check.text(raw, key, limit=500)
    check.at("mtlbench").text(check.table(raw, "mtlbench"), "version", limit=100)
    grid = _Grid(tuple(members), tuple(names), tuple(float(e) for e in eps), tuple(seeds), images, batch_size)
    if len(grid.cells()) > 100_000:
        raise check.fail("", f"declares {len(grid.cells()):,} cells; a bundle holds at most 100,000")
    return raw, grid


def _cell(raw: Any, i: int, path: Path, tasks: list[str]) -> tuple[CellResult, str, str]:
    """Cell ``i`` of cells.json, every field type-checked; its images file and that file's sha256."""
    from benchmark.suites import MAX_EVAL_SIZE

    if not isinstance(raw, dict):
        raise BundleError(f"bundle {path}: cells.json: cell {i} is not a table")
    label = f"{raw.get('model')} {raw.get('attack')} eps {raw.get('eps')} seed {raw.get('seed')}"
    check = _Check(f"bundle {path}: cells.json: cell {i} ({_show(label)[:120]})")
    known = {f.name for f in fields(CellResult)} | {"images_file", "images_sha256"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise check.fail(unknown[0], "not a field of a cell")
    values: dict[str, Any] = {}
    for key in ("key", "images_sha256"):
        check.text(raw, key, pattern=_SHA256)
    for key in ("key", "suite", "model", "attack", "profile", "status"):
        values[key] = check.text(raw, key, limit=200)
    for key in ("reason", "peak_memory_kind", "device", "torch_version", "mtlbench_version", "git_commit",
                "model_revision", "created"):
        values[key] = check.text(raw, key, limit=2000, default="")
    values["eps"] = check.number(raw, "eps", 1e-9, 255.0)
    values["seed"] = check.integer(raw, "seed", 0, 2**63 - 1)
    values["images"] = check.integer(raw, "images", 1, MAX_EVAL_SIZE)
    values["batches"] = check.integer(raw, "batches", 1, values["images"])
    for key in ("wall_s", "attack_s", "time_per_image_s"):
        values[key] = check.number(raw, key, 0.0, 1e9)
    for key in ("forward_passes", "backward_passes"):
        values[key] = check.integer(raw, key, 0, _INT_MAX)
    values["peak_memory_bytes"] = check.integer(raw, "peak_memory_bytes", 0, _INT_MAX, optional=True)
    values["max_perturbation"] = check.number(raw, "max_perturbation", 0.0, 255.0, optional=True)
    values["arp"] = check.number(raw, "arp", -1e9, 1e9)
    task_arp = raw.get("task_arp")
    if not isinstance(task_arp, dict) or sorted(task_arp) != sorted(tasks):
        raise check.fail("task_arp", f"expected the ARP of each task ({', '.join(tasks)}), got {_show(task_arp)}")
    values["task_arp"] = {t: check.number(task_arp, t, -1e9, 1e9) for t in tasks}
    for key in ("clean", "adversarial"):
        values[key] = _metrics(check, raw.get(key), key)
        if sorted(values[key]) != sorted(tasks):
            raise check.fail(key, f"expected the metrics of {', '.join(tasks)}, got {_show(sorted(values[key]))}")
    if not isinstance(raw.get("config"), dict):
        raise check.fail("config", f"expected a table, got {_show(raw.get('config'))}")
    values["config"] = raw["config"]
    per = raw.get("per_image")
    n = values["images"]
    if not isinstance(per, dict) or not {"ids", "score", "metrics"} <= set(per) <= {"ids", "score", "metrics", "state"}:
        raise check.fail("per_image", "expected ids, score, metrics (and the metrics' statistics) per image")
    if "state" in per and (not isinstance(per["state"], str) or len(per["state"]) > n * CELL_BYTES_PER_IMAGE):
        raise check.fail("per_image.state", "expected the per-image statistics as a base64 string")
    if not isinstance(per["ids"], list) or len(per["ids"]) != n or not all(isinstance(x, str) for x in per["ids"]):
        raise check.fail("per_image.ids", f"expected {n} image ids")
    check.numbers(per["score"], "per_image.score", length=n)
    if not isinstance(per["metrics"], dict) or sorted(per["metrics"]) != sorted(tasks):
        raise check.fail("per_image.metrics", f"expected each task's metrics per image ({', '.join(tasks)})")
    for task, table in per["metrics"].items():
        if not isinstance(table, dict):
            raise check.fail(f"per_image.metrics.{task}", "expected a table of metrics")
        for metric, series in table.items():
            check.numbers(series, f"per_image.metrics.{task}.{metric}", length=n)
    values["per_image"] = per
    return CellResult(**values), check.text(raw, "images_file", limit=1000), raw["images_sha256"]


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
        with _reader(Path(path)) as reader:
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
    with _reader(path) as reader:
        manifest, grid = _manifest(reader.json("manifest.json", MANIFEST_MAX_BYTES), path)
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
        claimed = [_cell(raw, i, path, tasks) for i, raw in enumerate(records)]
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


def _check_grid(verdict: BundleVerdict, claimed, grid: _Grid, suite) -> None:
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
                reasons.append(f"{where}: config.{key} is {_show(config.get(key))}, the manifest says {_show(value)}")
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


def _check_protocol(verdict: BundleVerdict, claimed, grid: _Grid, suite) -> None:
    """The bundle ran a profile of its suite as that profile says: the profile exists, every eps is
    one of its eps (compared exactly: 8.0000001 is not 8), every attack has the options the profile
    gives it (presets and step budget; an attack not installed here is checked on its budget only),
    and the batch size is the profile's."""
    from benchmark.runner.cells import _specs

    manifest = verdict.manifest
    profile_table = manifest.get("profile")
    name = profile_table.get("name") if isinstance(profile_table, dict) else None
    if not isinstance(name, str) or name not in suite.profiles:
        verdict.reasons.append(f"manifest: profile {_show(name)} is not a profile of {suite.name} (its profiles: "
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
            verdict.reasons.append(f"manifest: {attack} ran with options {_show(said)}; under the profile {name} it "
                                   f"runs with {_show(expected)}")


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


def _rescore(verdict: BundleVerdict, reader: _Reader, claimed, grid: _Grid, suite, *, device, data_root,
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
        metrics = {t.name: t.new_metric() for t in ctx.tasks}
        images: list[dict] = []
        inspect = _inspected_images(suite, cell)
        inspected: list[bytes] = []
        for i, part in enumerate(adv.split([b["image"].shape[0] for b in ctx.batches])):
            first = score_batch(ctx, i, part.to(device), cell.seed, metrics, images)
            seen = sum(b["image"].shape[0] for b in ctx.batches[:i])
            if inspect > seen:  # the inspection pages show a verified bundle's images too
                inspected += encode_adversarial(ctx.batches[i]["image"], part.to(device), first, ctx.tasks,
                                                inspect - seen)
        adversarial = {name: m.compute() for name, m in metrics.items()}
        record = per_image_record(ctx, images)
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
    p = output_problem(adv, clean, eps / 255.0)
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


def _recount(verdict: BundleVerdict, reader: _Reader, claimed, suite, *, device, data_root, console,
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
