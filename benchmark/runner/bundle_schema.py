"""What a bundle's JSON may hold, declared once, and the validator that reads it.

A bundle's ``manifest.json`` and ``cells.json`` are third-party input. Each table is declared as a
dataclass whose fields carry their rules (:func:`~benchmark.schema.setting`): the manifest's tables
here, a cell by :class:`~benchmark.runner.store.CellResult` itself (the same declaration the store's
results have). :func:`read_manifest` and :func:`read_cell` check every value against them before
any is used (an unknown key, a wrong type, a number out of range or a malformed name is refused,
naming the file, the cell and the field), then what one field says about another (a list as long
as the image count, the options of every named attack, each task's metrics).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from benchmark.runner.bundle import BUNDLE_FORMAT, BUNDLE_VERSION, BundleError
from benchmark.runner.store import SHA256, CellResult, images_rule
from benchmark.schema import TableError, check_table, setting, text_rule

__all__ = ["BundleManifest", "Grid", "read_cell", "read_manifest"]

#: the most one cell's record may take in cells.json, per image and fixed
CELL_BYTES_PER_IMAGE, CELL_BYTES_FIXED = 8 * 2**10, 256 * 2**10
#: a bundle's grid at most (models x attacks x eps x seeds)
MAX_CELLS = 100_000


def _name(value: str) -> str | None:
    from benchmark.suites import VALID_NAME

    return text_rule(200, VALID_NAME)(value)


def _table_of(cls):
    """The rule of a table whose entries are tables of ``cls`` (keyed by a valid name)."""

    def check(value: dict) -> tuple[str, str] | str | None:
        if not value or len(value) > 10_000:
            return f"expected between 1 and 10,000 entries, got {len(value)}"
        for key, entry in value.items():
            if _name(key) is not None:
                return f"{show(key)} is not a name"
            try:
                check_table(cls, entry, "")
            except TableError as exc:
                return (f"{key}.{exc.key.lstrip('.')}" if exc.key else str(key)), exc.reason
        return None

    return check


def _distinct(kind: str, valid, limit: int = 1000):
    """The rule of a non-empty list of distinct values, each ``valid(value)``."""

    def check(value: list) -> str | None:
        ok = (0 < len(value) <= limit and len(set(map(repr, value))) == len(value)
              and all(not isinstance(v, bool) and valid(v) for v in value))
        return None if ok else f"expected distinct {kind}, got {show(value)}"

    return check


def _sources(value: dict) -> tuple[str, str] | None:
    for key, digest in value.items():
        if not isinstance(digest, str) or not SHA256.fullmatch(digest):
            return str(key), f"expected a sha256, got {show(digest)}"
    return None


def _options(value: dict) -> tuple[str, str] | None:
    for key, options in value.items():
        if not isinstance(options, dict):
            return str(key), f"expected the attack's options, got {show(options)}"
    return None


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _ids(value: list) -> str | None:
    ok = all(isinstance(i, str) and len(i) < 500 for i in value)
    return None if ok else "expected image ids (strings of fewer than 500 characters)"


@dataclass(frozen=True)
class MemberPin:
    """``suite.members.<model>``: the pin the model was scored under."""

    repo_id: str = setting(check=text_rule(200))
    revision: str = setting(check=text_rule(200))
    sha256: str = setting(check=text_rule(200))
    scored_revision: str = setting(check=text_rule(200))


@dataclass(frozen=True)
class SuiteEntry:
    name: str = setting(check=_name)
    members: dict = setting(check=_table_of(MemberPin))
    ref: str = setting("", check=text_rule(4096))  # the manifest's path, for a suite that is not a standard one
    manifest_sha256: str = setting("", check=text_rule(64))


@dataclass(frozen=True)
class AttackEntry:
    names: list = setting(check=_distinct("attack names", lambda n: isinstance(n, str) and 0 < len(n) <= 200))
    options: dict = setting(check=_options)
    sources: dict = setting(check=_sources)


@dataclass(frozen=True)
class DataEntry:
    images: int = setting(low=1, check=images_rule)
    batch_size: int = setting(low=1, high=65_536)
    image_ids: list = setting(check=_ids)
    source: str = setting("", check=text_rule(200))
    split: str = setting("", check=text_rule(200))


@dataclass(frozen=True)
class ProfileEntry:
    name: str = setting(check=text_rule(200))
    steps: dict = setting(factory=dict)


@dataclass(frozen=True)
class VersionEntry:
    version: str = setting(check=text_rule(100))
    commit: str = setting("", check=text_rule(100))


def _eps(e: Any) -> bool:
    return isinstance(e, int | float) and math.isfinite(e) and 0 < e <= 255


def _seed(s: Any) -> bool:
    return isinstance(s, int) and 0 <= s < 2**63


@dataclass(frozen=True)
class BundleManifest:
    """``manifest.json`` (:func:`benchmark.runner.bundle.submit` writes it)."""

    format: str = setting(choices=(BUNDLE_FORMAT,))
    version: int = setting(choices=(BUNDLE_VERSION,))
    attack: dict = setting(nested=AttackEntry)
    suite: dict = setting(nested=SuiteEntry)
    data: dict = setting(nested=DataEntry)
    profile: dict = setting(nested=ProfileEntry)
    eps: list = setting(check=_distinct("numbers in (0, 255] (0-255 units)", _eps))
    seeds: list = setting(check=_distinct("integers in [0, 2^63)", _seed))
    mtlbench: dict = setting(nested=VersionEntry)
    device: str = setting(check=text_rule(500))
    torch: str = setting(check=text_rule(500))
    created: str = setting(check=text_rule(500))
    cpu_capability: str = setting("", check=text_rule(500))
    cells: int = setting(0, low=0, high=MAX_CELLS)


@dataclass(frozen=True)
class Grid:
    """The cells a manifest declares."""

    models: tuple[str, ...]
    attacks: tuple[str, ...]
    eps: tuple[float, ...]
    seeds: tuple[int, ...]
    images: int
    batch_size: int

    def cells(self) -> list[tuple[str, str, float, int]]:
        return [(m, a, e, s) for m in self.models for a in self.attacks for e in self.eps for s in self.seeds]


def read_manifest(raw: Any, path: Path) -> tuple[dict, Grid]:
    """The manifest, checked against :class:`BundleManifest`; the grid of cells it declares."""
    where = f"bundle {path}: manifest.json"
    if not isinstance(raw, dict) or raw.get("format") != BUNDLE_FORMAT:
        raise BundleError(f"{where} is not an mtlbench result bundle manifest")
    if raw.get("version") != BUNDLE_VERSION:
        raise BundleError(f"bundle {path}: bundle version {show(raw.get('version'))}; this mtlbench reads "
                          f"{BUNDLE_VERSION}")
    try:
        check_table(BundleManifest, raw, "")
    except TableError as exc:
        raise BundleError(f"{where}: {exc.key.lstrip('.')}: {exc.reason}") from None
    attack, data = raw["attack"], raw["data"]
    missing = [n for n in attack["names"] if n not in attack["options"]]
    if missing:
        raise BundleError(f"{where}: attack.options.{missing[0]}: expected the attack's options, got nothing")
    if len(data["image_ids"]) != data["images"]:
        raise BundleError(f"{where}: data.image_ids: expected {data['images']} image ids, got "
                          f"{len(data['image_ids'])}")
    grid = Grid(tuple(raw["suite"]["members"]), tuple(attack["names"]), tuple(float(e) for e in raw["eps"]),
                tuple(raw["seeds"]), data["images"], data["batch_size"])
    if len(grid.cells()) > MAX_CELLS:
        raise BundleError(f"{where}: declares {len(grid.cells()):,} cells; a bundle holds at most {MAX_CELLS:,}")
    return raw, grid


#: what a bundle's cell must say, though a stored cell may leave it at its default
_REQUIRED_IN_BUNDLE = ("arp", "task_arp", "clean", "adversarial", "images", "batches", "wall_s", "attack_s",
                       "time_per_image_s", "forward_passes", "backward_passes", "config", "per_image")
_BUNDLE_ONLY = ("images_file", "images_sha256")


def read_cell(raw: Any, i: int, path: Path, tasks: list[str]) -> tuple[CellResult, str, str]:
    """Cell ``i`` of cells.json, checked against :class:`CellResult`'s declarations; its images
    file and that file's sha256."""
    if not isinstance(raw, dict):
        raise BundleError(f"bundle {path}: cells.json: cell {i} is not a table")
    label = f"{raw.get('model')} {raw.get('attack')} eps {raw.get('eps')} seed {raw.get('seed')}"
    where = f"bundle {path}: cells.json: cell {i} ({show(label)[:120]})"

    def fail(key: str, message: str) -> BundleError:
        return BundleError(f"{where}: {key}: {message}")

    fields_ = {f.name for f in fields(CellResult)}
    unknown = sorted(set(raw) - fields_ - set(_BUNDLE_ONLY))
    if unknown:
        raise fail(unknown[0], "not a field of a cell")
    for key in (*_REQUIRED_IN_BUNDLE, *_BUNDLE_ONLY):
        if raw.get(key) is None:
            raise fail(key, "expected a value, got nothing")
    try:
        values = check_table(CellResult, {k: v for k, v in raw.items() if k in fields_}, "")
    except TableError as exc:
        raise fail(exc.key.lstrip("."), exc.reason) from None
    if (problem := text_rule(64, SHA256)(raw["images_sha256"]) if isinstance(raw["images_sha256"], str)
            else "expected a sha256"):
        raise fail("images_sha256", problem)
    if not isinstance(raw["images_file"], str) or len(raw["images_file"]) > 1000:
        raise fail("images_file", f"expected a file name, got {show(raw['images_file'])}")
    cell = CellResult(**values)
    n = cell.images
    if n < 1:
        raise fail("images", f"expected at least 1 image, got {n}")
    if not 1 <= cell.batches <= n:
        raise fail("batches", f"expected an integer in [1, {n}], got {cell.batches}")
    if sorted(cell.task_arp) != sorted(tasks):
        raise fail("task_arp", f"expected the ARP of each task ({', '.join(tasks)}), got {show(cell.task_arp)}")
    for key in ("clean", "adversarial"):
        if sorted(getattr(cell, key)) != sorted(tasks):
            raise fail(key, f"expected the metrics of {', '.join(tasks)}, got {show(sorted(getattr(cell, key)))}")
    _check_per_image(cell.per_image, n, tasks, fail)
    return cell, raw["images_file"], raw["images_sha256"]


def _check_per_image(per: dict, n: int, tasks: list[str], fail) -> None:
    """``per_image``: ``n`` ids, scores, each task's metrics per image (and their statistics)."""
    if not {"ids", "score", "metrics"} <= set(per) <= {"ids", "score", "metrics", "state"}:
        raise fail("per_image", "expected ids, score, metrics (and the metrics' statistics) per image")
    if "state" in per and (not isinstance(per["state"], str) or len(per["state"]) > n * CELL_BYTES_PER_IMAGE):
        raise fail("per_image.state", "expected the per-image statistics as a base64 string")
    if not isinstance(per["ids"], list) or len(per["ids"]) != n or not all(isinstance(x, str) for x in per["ids"]):
        raise fail("per_image.ids", f"expected {n} image ids")
    _numbers(per["score"], n, "per_image.score", fail)
    if not isinstance(per["metrics"], dict) or sorted(per["metrics"]) != sorted(tasks):
        raise fail("per_image.metrics", f"expected each task's metrics per image ({', '.join(tasks)})")
    for task, table in per["metrics"].items():
        if not isinstance(table, dict):
            raise fail(f"per_image.metrics.{task}", "expected a table of metrics")
        for metric, series in table.items():
            _numbers(series, n, f"per_image.metrics.{task}.{metric}", fail)


def _numbers(values: Any, n: int, key: str, fail) -> None:
    """``n`` numbers (NaN allowed where a quantity can be undefined, never inf)."""
    if not isinstance(values, list) or len(values) != n:
        raise fail(key, f"expected a list of {n} numbers, got {show(values)}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or math.isinf(v):
            raise fail(key, f"expected numbers, found {show(v)}")
