"""The results of record: every built-in (and contributed) attack and defense on the tiny suites,
computed from the code and committed as text, so that CI can recompute a submission instead of
trusting it.

A suite's record is its ``record`` profile, cut into **entries**: one per attack (the attack on
every member, undefended) and one per defense of the members the suite defends (the profile's
``defense_attacks`` on them). Each entry is one file, ``records/<suite>/<kind>s/<name>.jsonl``:
a header line (what the entry evaluates, the inputs it depends on, and where it was computed),
then one line per cell (its configuration and key, ARP, each task's ARP, the adversarial metrics,
counted passes, and per image its score and, on the defended members, its metric statistics),
numbers rounded to 7 significant digits. ``records/<suite>/targets.json`` holds each target's
description and clean metrics. One line per cell, sorted keys: a recomputation that changes one
cell changes one line of the diff.

An entry is **stale** when an input it was computed from changed: the pins of the weights it
attacks (every member's for an attack; the defended members' and their defended checkpoints' for a
defense), the suite's training recipe, the record profile's settings it runs with (eps, images,
seeds, batch, its optimizers' steps and options; a defense's also its attacks, members and EOT
samples), or the source files of its attack (or of a defense's code). Adding an attack or a defense
to the record adds a missing entry and leaves the others current. :func:`recompute` writes entries
(all, one suite's, those named, or only the stale and missing ones); :func:`check_records`
recomputes entries and names every cell that differs from the committed one, and by how much.
Bit-identical is expected where the CPU instruction set, the torch build and the thread count are
the record's (its header says them); elsewhere a number may differ by the spread measured for
re-scoring (:data:`benchmark.runner.verify.ARP_TOLERANCE` and the per-image score tolerance), while
the images themselves were bit-identical across thread counts and instruction sets.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmark.enums import Status
from benchmark.errors import UserError
from benchmark.paths import safe_name
from benchmark.runner.plan import Request
from benchmark.runner.store import CellResult, ResultsStore
from benchmark.suites import Suite, load_suite
from benchmark.version import __version__

__all__ = ["RECORD_FORMAT", "RECORD_PROFILE", "Entry", "RecordDiff", "check_records", "entries", "read_entry",
           "recompute", "record_status", "records_store", "write_entry"]

RECORD_FORMAT = "mtlbench-record"
RECORD_VERSION = 1
#: the profile of a suite's manifest that defines its record
RECORD_PROFILE = "record"
#: significant digits of a recorded number (a float32 metric carries about 7)
DIGITS = 7
#: the module names of contributed plugins live here, by file (``contrib/<name>.py``)
CONTRIB = "contrib"


@dataclass(frozen=True)
class Entry:
    """One file of a suite's record: an attack on every member (``kind = "attack"``), or a
    defense of the defended members under the record's defense attacks (``kind = "defense"``).
    ``plugin``: the contributed module (a ``.py`` file) that defines the attack, if it is not
    mtlbench's own."""

    suite: str
    kind: str
    name: str
    plugin: str | None = None

    @property
    def path(self) -> str:
        """The entry's file, relative to the records folder."""
        return f"{self.suite}/{self.kind}s/{safe_name(self.name)}.jsonl"

    def request(self, suite: Suite) -> Request:
        profile = suite.profile(RECORD_PROFILE)
        if self.kind == "attack":
            return Request(suite=suite.ref, profile=RECORD_PROFILE, attacks=[self.name], defenses=["none"])
        return Request(suite=suite.ref, profile=RECORD_PROFILE, attacks=list(profile.defense_attacks),
                       models=list(profile.defended_models or []), defenses=[self.name])


def _record_profile(suite: Suite):
    if RECORD_PROFILE not in suite.profiles:
        raise UserError(f"{suite.name} has no [profiles.{RECORD_PROFILE}] in its manifest: it has no record")
    return suite.profile(RECORD_PROFILE)


def entries(suite: Suite, *, plugins: Iterable[str] = ()) -> list[Entry]:
    """Every entry of ``suite``'s record: its record profile's attacks (patterns expanded for the
    suite's tasks), then its defenses (other than none); with ``plugins``, the attacks each
    contributed module lists in its ``RECORD_ATTACKS``."""
    from benchmark.runner.cells import _specs

    profile = _record_profile(suite)
    out = [Entry(suite.name, "attack", s.name) for s in _specs(profile.attacks, suite, profile)]
    out += [Entry(suite.name, "defense", d) for d in profile.defenses if d != "none"]
    for plugin in plugins:
        for name in _declared_attacks(plugin):
            out.append(Entry(suite.name, "attack", name, plugin=str(plugin)))
    return out


def _declared_attacks(plugin: str | Path) -> list[str]:
    """The attacks a contributed module asks to be recorded (its ``RECORD_ATTACKS`` list), read
    without importing it."""
    import ast

    tree = ast.parse(Path(plugin).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "RECORD_ATTACKS" for t in node.targets):
            value = ast.literal_eval(node.value)
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
    raise UserError(f"{plugin}: a contribution lists the attacks it records in RECORD_ATTACKS = [\"name:objective\", "
                    "...] (a list of strings at the top of the module)")


# ---------------------------------------------------------------------- the inputs of an entry
def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


#: the record profile's settings every entry's cells depend on; a defense entry's also depend on
#: the defense settings. Which other entries the profile lists is not an input of an entry: adding
#: an attack or a defense to the record leaves the committed entries current.
_SETTINGS = ("eps", "eval_size", "seeds", "batch_size", "score_draws")
_DEFENSE_SETTINGS = ("defended_models", "defense_attacks", "eot_samples")


def inputs(entry: Entry, suite: Suite) -> dict[str, Any]:
    """What the entry's numbers depend on besides the scoring code: the pins of the weights it
    attacks (an attack entry: every member's; a defense entry: its defended members' and their
    checkpoints under the defense), the suite's training recipe, the record profile's settings it
    runs with (its optimizers' steps and options among them), and the source files of the attacks
    (and the defense) it runs. A change of any makes the entry stale."""
    from benchmark.runner.bundle import attack_sources

    profile = _record_profile(suite)
    if entry.kind == "attack":
        attacks = [entry.name]
        pins = {m.name: m.sha256 for m in suite.members}
    else:
        attacks = _expanded(profile.defense_attacks, suite, profile)
        models = profile.defended_models or [m.name for m in suite.members]
        defended = suite.defended_sha256.get(entry.name, {})
        pins = {m: suite.member(m).sha256 for m in models}
        pins.update({f"{m}+{entry.name}": defended[m] for m in models if m in defended})
    sources = (attack_sources(attacks) if entry.plugin is None
               else {Path(entry.plugin).name: _sha256(Path(entry.plugin))})
    if entry.kind == "defense":
        from benchmark.defenses import create_defense

        module = type(create_defense(entry.name)).__module__
        sources.update(_module_source(module))
    optimizers = sorted({a.partition(":")[0] for a in attacks})  # or complete attacks
    table = {k: getattr(profile, k) for k in _SETTINGS + (_DEFENSE_SETTINGS if entry.kind == "defense" else ())}
    table["steps"] = {o: profile.steps[o] for o in optimizers if o in profile.steps}
    table["options"] = {o: profile.options[o] for o in optimizers if o in profile.options}
    return {"pins": _digest(pins), "recipe": suite.training_id, "profile": _digest(table), "sources": sources}


def _expanded(patterns, suite: Suite, profile) -> list[str]:
    from benchmark.runner.cells import _specs

    return [s.name for s in _specs(patterns, suite, profile)]


def _module_source(module: str) -> dict[str, str]:
    import importlib

    path = Path(importlib.import_module(module).__file__)
    return {f"{module.replace('.', '/')}.py": _sha256(path)}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------- reading and writing
def _round(value: Any) -> Any:
    """Numbers to :data:`DIGITS` significant digits (NaN and infinities as null), recursively."""
    if isinstance(value, bool) or value is None or isinstance(value, str | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return float(f"{value:.{DIGITS}g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_round(v) for v in value]
    return value


#: the fields of a cell a record keeps (the rest is the store's: its provenance is the header's)
_CELL_FIELDS = ("key", "model", "attack", "eps", "seed", "profile", "status", "reason", "arp", "task_arp",
                "adversarial", "images", "batches", "forward_passes", "backward_passes", "time_per_image_s",
                "peak_memory_bytes", "peak_memory_kind", "max_perturbation", "model_revision", "config")


def _cell_line(cell: CellResult, keep_state: bool) -> dict[str, Any]:
    line = {k: getattr(cell, k) for k in _CELL_FIELDS}
    per = cell.per_image or {}
    line["per_image"] = {"score": per.get("score", []), **({"state": per["state"]} if keep_state and
                                                          per.get("state") else {})}
    return _round(line)


def write_entry(path: Path, header: dict[str, Any], cells: list[CellResult], *, keep_state: set[str]) -> None:
    """An entry's file: its header, then one line per cell in a stable order (model, attack, eps,
    seed); ``keep_state``: the targets whose cells keep their per-image metric statistics."""
    cells = sorted(cells, key=lambda c: (c.model, c.attack, c.eps, c.seed))
    lines = [json.dumps(header, sort_keys=True, separators=(",", ":"))]
    lines += [json.dumps(_cell_line(c, c.model in keep_state), sort_keys=True, separators=(",", ":")) for c in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def read_entry(path: Path) -> tuple[dict[str, Any], list[CellResult]]:
    """An entry's header and its cells (as results, with the header's image ids and provenance)."""
    try:
        raw = path.read_text().splitlines()
        header = json.loads(raw[0])
        lines = [json.loads(line) for line in raw[1:] if line.strip()]
    except (OSError, IndexError, ValueError, RecursionError) as exc:
        raise UserError(f"record {path}: cannot be read ({type(exc).__name__}: {exc})") from None
    if not isinstance(header, dict) or header.get("format") != RECORD_FORMAT:
        raise UserError(f"record {path}: not an mtlbench record (its first line is not a record header)")
    if header.get("version") != RECORD_VERSION:
        raise UserError(f"record {path}: record version {header.get('version')!r}; this mtlbench reads "
                        f"{RECORD_VERSION}")
    prov, ids = header.get("provenance", {}), header.get("image_ids", [])
    cells = []
    for i, line in enumerate(lines):
        try:
            per = dict(line.pop("per_image", {}))
            cells.append(CellResult(**line, suite=header["suite"], per_image={"ids": list(ids), **per},
                                    device=prov.get("device", ""), torch_version=prov.get("torch", ""),
                                    mtlbench_version=prov.get("mtlbench", ""), git_commit=prov.get("commit", ""),
                                    created=header.get("created", "")))
        except TypeError as exc:
            raise UserError(f"record {path}: cell {i + 1} is not a cell of a record ({exc})") from None
    return header, cells


def _targets_path(records: Path, suite: str) -> Path:
    return records / suite / "targets.json"


def _write_targets(records: Path, suite: str, infos: dict[str, dict]) -> None:
    path = _targets_path(records, suite)
    known = json.loads(path.read_text()) if path.exists() else {}
    known.update({name: _round(info) for name, info in infos.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dict(sorted(known.items())), sort_keys=True, indent=1) + "\n")


# ---------------------------------------------------------------------- status
@dataclass
class EntryStatus:
    entry: Entry
    state: str  # "current", "stale", "missing"
    why: str = ""


def record_status(suite: Suite, records: Path, *, plugins: Iterable[str] = ()) -> list[EntryStatus]:
    """Each entry of ``suite``'s record: current, stale (naming the input that changed) or missing."""
    out = []
    for entry in entries(suite, plugins=plugins):
        path = records / entry.path
        if not path.exists():
            out.append(EntryStatus(entry, "missing", f"no {entry.path}"))
            continue
        header, _ = read_entry(path)
        now = inputs(entry, suite)
        then = header.get("inputs", {})
        changed = [k for k in ("pins", "recipe", "profile") if then.get(k) != now[k]]
        changed += [f"the source {f}" for f in sorted(set(now["sources"]) | set(then.get("sources", {})))
                    if now["sources"].get(f) != then.get("sources", {}).get(f)]
        names = {"pins": "the suite's pinned weights", "recipe": "its training recipe", "profile": "the record profile"}
        if changed:
            out.append(EntryStatus(entry, "stale", "changed since it was recorded: "
                                   + ", ".join(names.get(c, c) for c in changed)))
        else:
            out.append(EntryStatus(entry, "current"))
    return out


# ---------------------------------------------------------------------- recompute
def _provenance(threads: int) -> dict[str, Any]:
    import torch

    from benchmark.provenance import cpu_capability, git_commit

    return {"mtlbench": __version__, "commit": git_commit(), "torch": torch.__version__, "cpu": cpu_capability(),
            "threads": threads, "device": "cpu"}


def _run_entry(entry: Entry, suite: Suite, store_path: Path, *, workers: int | None, console: Console | None,
               data_root: str | None = None) -> list[CellResult]:
    """The cells of one entry, computed into the store at ``store_path`` (cells already there are
    reused: a kill loses only the cell in flight)."""
    from benchmark.runner.run import RunOptions, run

    request = entry.request(suite)
    run_options = RunOptions(**{f: getattr(request, f) for f in Request.__dataclass_fields__}, results=str(store_path),
                         threads=1, workers=workers, data_root=data_root,
                         batch_cells="off")  # each cell alone: the record's numbers whatever the device
    if entry.plugin is not None:
        from benchmark.registry import load_plugin_modules

        load_plugin_modules([str(Path(entry.plugin).resolve())])
    summary = run(run_options, console=console)
    with ResultsStore(store_path, readonly=True) as store:
        return [c for c in map(store.get, summary.keys) if c is not None]


def recompute(suite_names: Iterable[str], records: Path, *, only: Iterable[str] | None = None, stale_only: bool = False,
              plugins: Iterable[str] = (), workers: int | None = None, scratch: Path | None = None,
              console: Console | None = None, on_entry: Callable[[Entry, float], None] | None = None) -> list[Entry]:
    """Compute entries and write them under ``records``: every entry of each suite, the entries
    named in ``only`` (attack names or defense specs), or (``stale_only``) the stale and missing
    ones. ``scratch``: a results database kept between calls (a killed recompute goes on from it).
    Returns the entries written."""
    written = []
    for name in suite_names:
        suite = load_suite(name)
        wanted = set(only) if only is not None else None
        statuses = record_status(suite, records, plugins=plugins)
        todo = [s.entry for s in statuses if (wanted is None or s.entry.name in wanted)
                and (not stale_only or s.state != "current")]
        unknown = (wanted or set()) - {s.entry.name for s in statuses}
        if unknown:
            raise UserError(f"{suite.name}'s record has no entry {sorted(unknown)[0]!r} (its entries: the record "
                            f"profile's attacks and defenses, and the contributed attacks)")
        defended = set(_record_profile(suite).defended_models or [])
        with tempfile.TemporaryDirectory(prefix="mtlbench-records-") as tmp:
            store_path = (scratch or Path(tmp)) / f"{suite.name}.db"
            store_path.parent.mkdir(parents=True, exist_ok=True)
            for entry in todo:
                start = time.perf_counter()
                cells = _run_entry(entry, suite, store_path, workers=workers, console=console)
                bad = [c for c in cells if c.status != Status.VALID]
                if bad:  # nothing is written: a record holds valid cells only
                    raise UserError(f"{entry.path}: not recorded: {len(bad)} cell(s) are {bad[0].status} "
                                    f"({bad[0].model} {bad[0].attack} eps {bad[0].eps:g}: {bad[0].reason})")
                header = _header(entry, suite, cells)
                keep = {c.model for c in cells if c.model.split("+")[0] in defended}
                write_entry(records / entry.path, header, cells, keep_state=keep)
                with ResultsStore(store_path, readonly=True) as store:
                    infos = {row["model"]: {k: v for k, v in row.items() if k not in ("suite", "model")}
                             for row in store.models() if row["model"] in {c.model for c in cells}}
                _write_targets(records, suite.name, infos)
                written.append(entry)
                if on_entry is not None:
                    on_entry(entry, time.perf_counter() - start)
    return written


def _header(entry: Entry, suite: Suite, cells: list[CellResult]) -> dict[str, Any]:
    import datetime as _dt

    ids = next((c.per_image.get("ids") for c in cells if c.per_image.get("ids")), [])
    return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "suite": suite.name, "kind": entry.kind,
            "name": entry.name, "plugin": entry.plugin, "profile": RECORD_PROFILE,
            "inputs": inputs(entry, suite), "provenance": _provenance(threads=1), "image_ids": ids,
            "cells": len(cells), "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# ---------------------------------------------------------------------- check
@dataclass
class RecordDiff:
    """How a recomputed entry compares with its committed one: ``problems`` names every cell that
    differs (and by how much), or a missing/extra cell; ``exact`` says whether bit-identity was
    expected (the same CPU instruction set, torch build and threads as the record's)."""

    entry: Entry
    exact: bool
    problems: list[str] = field(default_factory=list)
    cells: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def compare_entry(entry: Entry, committed: tuple[dict, list[CellResult]], recomputed: list[CellResult],
                  provenance: dict[str, Any]) -> RecordDiff:
    """Cell by cell, the committed entry against the recomputed one (both rounded as recorded)."""
    from benchmark.runner.verify import ARP_TOLERANCE, SCORE_TOLERANCE_PER_IMAGE

    header, old = committed
    then = header.get("provenance", {})
    exact = all(then.get(k) == provenance.get(k) for k in ("torch", "cpu", "threads"))
    diff = RecordDiff(entry, exact, cells=len(recomputed))
    by_key = {c.key: c for c in old}
    new_keys = set()
    for cell in recomputed:
        new = _cell_line(cell, keep_state=False)
        new_keys.add(cell.key)
        where = f"{entry.path}: {cell.model} {cell.attack} eps {cell.eps:g} seed {cell.seed}"
        mine = by_key.get(cell.key)
        if mine is None:
            diff.problems.append(f"{where}: not in the committed record (key {cell.key[:12]})")
            continue
        was = _cell_line(mine, keep_state=False)
        n = max(1, len(new["per_image"]["score"]))
        tolerances = {"arp": 0.0 if exact else ARP_TOLERANCE, "score": 0.0 if exact else SCORE_TOLERANCE_PER_IMAGE * n}
        for key in ("status", "forward_passes", "backward_passes", "images"):
            if was[key] != new[key]:
                diff.problems.append(f"{where}: {key} is {new[key]!r} recomputed, the record says {was[key]!r}")
        if was["arp"] is not None and new["arp"] is not None and abs(was["arp"] - new["arp"]) > tolerances["arp"]:
            diff.problems.append(f"{where}: ARP is {new['arp']} recomputed, the record says {was['arp']} (differs by "
                                 f"{abs(was['arp'] - new['arp']):.3g}; tolerance {tolerances['arp']:g})")
        for task, value in (new["task_arp"] or {}).items():
            old_value = (was["task_arp"] or {}).get(task)
            if old_value is None or abs(old_value - value) > tolerances["arp"]:
                diff.problems.append(f"{where}: ARP of {task} is {value} recomputed, the record says {old_value}")
        scores = list(zip(was["per_image"]["score"], new["per_image"]["score"], strict=False))
        worst = max((abs(a - b) for a, b in scores if a is not None and b is not None), default=0.0)
        if len(was["per_image"]["score"]) != len(new["per_image"]["score"]) or worst > tolerances["score"]:
            diff.problems.append(f"{where}: per-image scores differ by up to {worst:.3g} (tolerance "
                                 f"{tolerances['score']:g})")
    for key in sorted(set(by_key) - new_keys):
        c = by_key[key]
        diff.problems.append(f"{entry.path}: {c.model} {c.attack} eps {c.eps:g} seed {c.seed}: in the committed record "
                             "but not recomputed (another configuration, or a cell the record should not have)")
    return diff


def check_records(suite_names: Iterable[str], records: Path, *, only: Iterable[str] | None = None,
                  plugins: Iterable[str] = (), workers: int | None = None,
                  console: Console | None = None) -> list[RecordDiff]:
    """Recompute the committed entries (all of each suite, or those named in ``only``) and compare
    each with its file (:func:`compare_entry`); a stale entry is reported as such without
    recomputing it."""
    out = []
    for name in suite_names:
        suite = load_suite(name)
        wanted = set(only) if only is not None else None
        statuses = [s for s in record_status(suite, records, plugins=plugins)
                    if wanted is None or s.entry.name in wanted]
        with tempfile.TemporaryDirectory(prefix="mtlbench-check-") as tmp:
            for status in statuses:
                if status.state != "current":
                    out.append(RecordDiff(status.entry, False, [f"{status.entry.path}: {status.state}: {status.why}"]))
                    continue
                committed = read_entry(records / status.entry.path)
                cells = _run_entry(status.entry, suite, Path(tmp) / f"{suite.name}.db", workers=workers,
                                   console=console)
                out.append(compare_entry(status.entry, committed, cells, _provenance(threads=1)))
    return out


# ---------------------------------------------------------------------- a results store of the record
def records_store(records: Path, path: Path, suites: Iterable[str] | None = None) -> ResultsStore:
    """A results database at ``path`` holding every committed entry (of ``suites``, default all
    the folders of ``records``) and its targets' descriptions: what the site of record renders."""
    names = sorted(suites) if suites is not None else sorted(p.name for p in records.iterdir() if p.is_dir())
    store = ResultsStore(path)
    for suite in names:
        folder = records / suite
        if not folder.is_dir():
            raise UserError(f"{folder}: no record of {suite}")
        targets = json.loads(_targets_path(records, suite).read_text()) if _targets_path(records, suite).exists() \
            else {}
        for model, info in targets.items():
            info = dict(info)
            store.put_model(suite, model, info.pop("model_revision", ""), info)
        for entry_file in sorted(folder.glob("*/*.jsonl")):
            header, cells = read_entry(entry_file)
            for cell in cells:  # a cell's clean metrics are its target's (kept once, in targets.json)
                clean = (targets.get(cell.model) or {}).get("clean") or {}
                store.put(replace(cell, clean=clean,
                                  config={**cell.config, "record": f"{header['kind']} {header['name']}"}))
    return store
