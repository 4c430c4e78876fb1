"""The results store: one SQLite file in WAL mode, one row per cell.

A row is keyed by the cell's full configuration plus the code and weights versions (``key``, a
sha256 of them). Each row is written in one transaction, so a ``kill -9`` loses at most the cell in
flight and a concurrent reader (the leaderboard) never sees half a row. Clean metrics are cached
per (model, weights version, split, images) in their own table.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmark.enums import Status
from benchmark.errors import UserError
from benchmark.schema import setting, text_rule

__all__ = ["CellResult", "Owner", "ResultsStore", "cell_key", "storage_error"]

SCHEMA_VERSION = 3
# version 2 -> 3 added the per-image results of a cell (``per_image``); older versions are refused
_MIGRATIONS = {2: ("ALTER TABLE cells ADD COLUMN per_image TEXT",)}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    suite TEXT NOT NULL, model TEXT NOT NULL, attack TEXT NOT NULL, eps REAL NOT NULL, seed INTEGER NOT NULL,
    profile TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL,
    arp REAL, task_arp TEXT, clean TEXT, adversarial TEXT,
    images INTEGER, batches INTEGER, wall_s REAL, attack_s REAL, time_per_image_s REAL,
    forward_passes INTEGER, backward_passes INTEGER, peak_memory_bytes INTEGER, peak_memory_kind TEXT,
    max_perturbation REAL, device TEXT, torch_version TEXT, mtlbench_version TEXT, git_commit TEXT,
    model_revision TEXT, config TEXT NOT NULL, created TEXT NOT NULL, per_image TEXT
);
CREATE INDEX IF NOT EXISTS cells_by_suite ON cells (suite, eps, attack);
CREATE TABLE IF NOT EXISTS models (
    suite TEXT NOT NULL, model TEXT NOT NULL, model_revision TEXT NOT NULL, info TEXT NOT NULL,
    PRIMARY KEY (suite, model, model_revision)
);
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY, owner TEXT NOT NULL, host TEXT NOT NULL, pid INTEGER NOT NULL, heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS clean (
    key TEXT PRIMARY KEY, suite TEXT NOT NULL, model TEXT NOT NULL, model_revision TEXT NOT NULL,
    split TEXT NOT NULL, images INTEGER NOT NULL, metrics TEXT NOT NULL, device TEXT, created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inspection (
    key TEXT NOT NULL, image INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (key, image)
);
"""
_JSON_COLUMNS = ("task_arp", "clean", "adversarial", "config", "per_image")


#: entries of a cell's stored configuration that describe it without keying it: which option is the
#: step budget and whether the cell is a budget curve's point, where the real data were read, the
#: time limit it grew to, its inspected images and, behind a detector, what the detector rejected
UNKEYED = frozenset({"budget", "data_root", "timeout_s", "inspection", "detection"})


def cell_key(config: dict[str, Any]) -> str:
    """The one store key of a cell: sha256 of its canonical JSON configuration (which includes the
    code and weights versions) without the :data:`UNKEYED` entries. The runner, the resume and the
    bundle verifier all key cells with it."""
    keyed = {k: v for k, v in config.items() if k not in UNKEYED}
    return hashlib.sha256(json.dumps(keyed, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def storage_error(path: Path, exc: sqlite3.OperationalError) -> str:
    """What an SQLite operational error means for the user's results database."""
    text = str(exc).lower()
    if "readonly" in text or "read-only" in text:
        return (f"results database {path} is read-only (file or folder permissions, or a read-only file system): "
                "cannot write results; give a writable --results path")
    if "disk is full" in text or "database or disk is full" in text:
        return f"results database {path}: the disk is full; free space and run again (finished cells resume)"
    if "unable to open" in text:
        return f"results database {path} cannot be opened (its folder is missing or not writable)"
    if "locked" in text or "busy" in text:
        return f"results database {path} is locked by another process for more than 30 s; try again"
    return f"results database {path}: {exc}"


@dataclass(frozen=True)
class Owner:
    """Who claims cells: one run of one process on one host."""

    id: str
    host: str
    pid: int

    @classmethod
    def this_process(cls) -> Owner:
        import os
        import socket
        import uuid

        return cls(f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}", socket.gethostname(), os.getpid())

    def is_live(self, claim: sqlite3.Row, now: float, stale_after_s: float) -> bool:
        """Whether another owner's claim still holds: its heartbeat is recent and, on this host,
        its process is alive (a run killed with -9 leaves claims that are stale at once)."""
        if now - claim["heartbeat"] > stale_after_s:
            return False
        if claim["host"] == self.host and claim["pid"] == self.pid:
            return False  # an earlier run of this process, which is over
        if claim["host"] == self.host:
            return pid_alive(claim["pid"])
        return True


def pid_alive(pid: int) -> bool:
    """Whether the process ``pid`` of this host is running (another user's counts as running)."""
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _json_object(text: Any) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


SHA256 = re.compile(r"[0-9a-f]{64}")
_INT_MAX = 2**53  # JSON's exact integers


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def images_rule(value: int) -> str | None:
    from benchmark.suites import MAX_EVAL_SIZE

    return None if value <= MAX_EVAL_SIZE else f"expected an integer in [0, {MAX_EVAL_SIZE}], got {_show(value)}"


def _number_problem(value: Any, nan: bool, bound: float) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"expected a number, got {_show(value)}"
    if math.isnan(value):
        return None if nan else f"expected a number, got {_show(value)}"
    return None if abs(value) <= bound else f"expected a number in [{-bound:g}, {bound:g}], got {_show(value)}"


def _task_numbers(value: dict) -> tuple[str, str] | None:
    """A task's ARP per task: finite numbers."""
    for task, x in value.items():
        if (problem := _number_problem(x, nan=False, bound=1e9)) is not None:
            return str(task), problem
    return None


def _metric_tables(value: dict) -> tuple[str, str] | None:
    """``{task: {metric: number}}``: NaN allowed (a metric can be undefined), never inf."""
    for task, metrics in value.items():
        if not isinstance(metrics, dict):
            return str(task), f"expected a table of metrics, got {_show(metrics)}"
        for name, x in metrics.items():
            if (problem := _number_problem(x, nan=True, bound=1e12)) is not None:
                return f"{task}.{name}", problem
    return None


@dataclass
class CellResult:
    """Everything stored about one evaluated cell. Each field declares what it may hold
    (:func:`~benchmark.schema.setting`): a cell read from a third party (a bundle's cells.json) is
    checked against these rules before any value is used."""

    key: str = setting(check=text_rule(64, SHA256))
    suite: str = setting(check=text_rule(200))
    model: str = setting(check=text_rule(200))
    attack: str = setting(check=text_rule(200))
    eps: float = setting(low=0.0, open_low=True, high=255.0)  # 0-255 units
    seed: int = setting(low=0, high=2**63 - 1)
    profile: str = setting(check=text_rule(200))
    status: str = setting(choices=tuple(Status))
    reason: str = setting("", check=text_rule(2000))
    arp: float | None = setting(None, low=-1e9, high=1e9)
    task_arp: dict[str, float] = setting(factory=dict, check=_task_numbers)
    clean: dict[str, dict[str, float]] = setting(factory=dict, check=_metric_tables)
    adversarial: dict[str, dict[str, float]] = setting(factory=dict, check=_metric_tables)
    images: int = setting(0, low=0, check=images_rule)
    batches: int = setting(0, low=0, check=images_rule)
    wall_s: float = setting(0.0, low=0.0, high=1e9)
    attack_s: float = setting(0.0, low=0.0, high=1e9)
    time_per_image_s: float = setting(0.0, low=0.0, high=1e9)
    forward_passes: int = setting(0, low=0, high=_INT_MAX)  # model calls made by the attack, over all batches
    backward_passes: int = setting(0, low=0, high=_INT_MAX)
    peak_memory_bytes: int | None = setting(None, low=0, high=_INT_MAX)
    peak_memory_kind: str = setting("", check=text_rule(2000))
    max_perturbation: float | None = setting(None, low=0.0, high=255.0)  # 0-255 units
    device: str = setting("", check=text_rule(2000))
    torch_version: str = setting("", check=text_rule(2000))
    mtlbench_version: str = setting("", check=text_rule(2000))
    git_commit: str = setting("", check=text_rule(2000))
    model_revision: str = setting("", check=text_rule(2000))
    config: dict[str, Any] = setting(factory=dict)
    created: str = setting("", check=text_rule(2000))
    # per image, in batch order: {"ids": [...], "score": [...], "metrics": {task: {metric: [...]}}}
    per_image: dict[str, Any] = setting(factory=dict)

    @property
    def passes_per_image(self) -> float | None:
        """Counted forward+backward passes per image: a model call on a batch is one pass of each
        of its images (the leaderboard and ``mtlbench check`` both count them so)."""
        return (self.forward_passes + self.backward_passes) / self.batches if self.batches else None

    def to_row(self) -> dict[str, Any]:
        row = asdict(self)
        for col in _JSON_COLUMNS:
            row[col] = json.dumps(row[col], sort_keys=True)
        return row

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> CellResult:
        """The cell of a stored row. A row that cannot be what it claims (a JSON column that does
        not parse, a non-finite ARP in a valid cell) is read as an invalid cell with the reason,
        so one damaged row never hides the others."""
        data = dict(row)
        damaged = []
        for col in _JSON_COLUMNS:
            try:
                data[col] = json.loads(data[col]) if data.get(col) is not None else {}
            except (TypeError, ValueError):
                data[col], damaged = {}, [*damaged, f"column {col} is not valid JSON"]
            if not isinstance(data[col], dict):
                data[col], damaged = {}, [*damaged, f"column {col} is not a JSON object"]
        arp = data.get("arp")
        if data.get("status") == Status.VALID and (not isinstance(arp, int | float) or not math.isfinite(arp)
                                              or not all(isinstance(v, int | float) and math.isfinite(v)
                                                         for v in data["task_arp"].values())):
            damaged.append(f"ARP is not a finite number ({arp!r})")
        if damaged:
            data.update(status=Status.INVALID, arp=None, task_arp={},
                        reason=f"damaged row in the results database: {'; '.join(damaged)}")
        return cls(**data)


class ResultsStore:
    """A results database. Safe for one writer and any number of concurrent readers."""

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"results database {self.path} is a directory; give a file name such as results.db")
        if readonly and not self.path.exists():
            raise UserError(f"results database {self.path} does not exist; run `mtlbench run` first")
        if not readonly:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"results database {self.path}: cannot create its folder ({exc.strerror})") from None
        uri = f"file:{self.path}?mode=ro" if readonly else str(self.path)
        try:
            self.conn = sqlite3.connect(uri, uri=readonly, timeout=30.0, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            try:
                tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            except sqlite3.OperationalError:
                if not readonly:
                    raise
                # read-only media: a WAL database's reader cannot create its shared-memory file there;
                # read it as a file that nothing changes (what a finished run left on a DVD or a ro mount)
                self.conn.close()
                self.conn = sqlite3.connect(f"file:{self.path}?mode=ro&immutable=1", uri=True, timeout=30.0,
                                            isolation_level=None)
                self.conn.row_factory = sqlite3.Row
                tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                # never add our tables to (or switch the journal of) someone else's database
                raise UserError(f"{self.path} is an SQLite database of something else (tables: "
                                f"{', '.join(sorted(tables)[:5])}); mtlbench does not write into it: give the name of "
                                "a new file or of an mtlbench results database")
            version = None
            if "meta" in tables:
                row = self.conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()
                version = int(row[0]) if row is not None and str(row[0]).isdigit() else -1
            self._check_version(version)
            if not readonly:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=NORMAL")
                self._migrate(version)
                self.conn.executescript(_SCHEMA)
                self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except sqlite3.OperationalError as exc:
            raise UserError(storage_error(self.path, exc)) from None
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not an mtlbench results database ({exc})") from None

    def _check_version(self, version: int | None) -> None:
        """A database of another schema is migrated when a migration exists, never misread."""
        if version is None or version == SCHEMA_VERSION or version in _MIGRATIONS:
            return
        if version > SCHEMA_VERSION:
            raise UserError(f"{self.path}: results schema version {version} was written by a newer mtlbench "
                            f"(this one reads version {SCHEMA_VERSION}); upgrade mtlbench to read it")
        raise UserError(f"{self.path}: results schema version {version} is too old to migrate (this mtlbench "
                        f"reads version {SCHEMA_VERSION} and migrates {', '.join(map(str, sorted(_MIGRATIONS)))}); "
                        "run the cells again into a new --results file")

    def _migrate(self, version: int | None) -> None:
        """Bring an older database to this schema in one transaction (its cells are kept; cells of
        an older schema have no per-image results)."""
        while version is not None and version != SCHEMA_VERSION:
            with self._transaction():
                for statement in _MIGRATIONS[version]:
                    self.conn.execute(statement)
                version += 1
                self.conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (str(version),))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ cells
    def get(self, key: str) -> CellResult | None:
        row = self.conn.execute("SELECT * FROM cells WHERE key = ?", (key,)).fetchone()
        return None if row is None else CellResult.from_row(row)

    def done_keys(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT key FROM cells")}

    def statuses(self, keys: list[str] | None = None) -> dict[str, str]:
        """The stored status of each cell (of ``keys`` only, when given): key -> valid, invalid or failed."""
        rows = self.conn.execute("SELECT key, status FROM cells").fetchall()
        wanted = None if keys is None else set(keys)
        return {k: st for k, st in rows if wanted is None or k in wanted}

    def put(self, result: CellResult) -> None:
        """Insert one finished cell atomically (a row is either fully there or not at all)."""
        row = result.to_row()
        cols = ", ".join(row)
        marks = ", ".join(f":{c}" for c in row)
        blobs = getattr(result, "inspection", None) or []  # its inspected images (benchmark.runner.inspect)
        with self._transaction():
            self.conn.execute(f"INSERT OR REPLACE INTO cells ({cols}) VALUES ({marks})", row)
            self.conn.execute("DELETE FROM inspection WHERE key = ?", (result.key,))
            self.conn.executemany("INSERT INTO inspection VALUES (?, ?, ?)",
                                  [(result.key, i, blob) for i, blob in enumerate(blobs)])

    def put_inspection(self, key: str, blobs: list[bytes]) -> None:
        """Store the inspected images of a target's clean evaluation under its clean key."""
        with self._transaction():
            self.conn.execute("DELETE FROM inspection WHERE key = ?", (key,))
            self.conn.executemany("INSERT INTO inspection VALUES (?, ?, ?)",
                                  [(key, i, blob) for i, blob in enumerate(blobs)])

    def inspection(self, key: str) -> list[bytes]:
        """The inspected images stored under ``key`` (a cell's or a clean evaluation's), in order;
        none in a database written before they were kept."""
        try:
            rows = self.conn.execute("SELECT data FROM inspection WHERE key = ? ORDER BY image", (key,)).fetchall()
        except sqlite3.OperationalError:  # no such table: an older database opened read-only
            return []
        return [bytes(r[0]) for r in rows]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One atomic write; a failure of the storage (read-only, full disk, locked) is a message,
        and every row committed before it is kept."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise UserError(storage_error(self.path, exc)) from None
        try:
            yield
        except sqlite3.OperationalError as exc:
            self._rollback()
            raise UserError(storage_error(self.path, exc) + "; the results stored before are kept") from None
        except BaseException:
            self._rollback()
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            self._rollback()
            raise UserError(storage_error(self.path, exc) + "; the results stored before are kept") from None

    def _rollback(self) -> None:
        # SQLite has rolled back already after some errors (a full disk): nothing is left to undo
        with contextlib.suppress(sqlite3.OperationalError):
            self.conn.execute("ROLLBACK")

    # ------------------------------------------------------------------ claims
    def claim(self, keys: list[str], owner: Owner, *, stale_after_s: float) -> list[str]:
        """Claim the cells ``keys`` for ``owner`` (a run), atomically: a key is claimed when no other
        live run holds it and it is not done. Another run's claim is live while its process is
        alive (same host) and its heartbeat is younger than ``stale_after_s``. Returns the keys
        claimed, so that two runs on one store (or two machines on shared storage) split the work.
        A cell stored as failed can be claimed again (a run retries it)."""
        now = time.time()
        got = []
        with self._transaction():
            done = {r[0] for r in self.conn.execute("SELECT key FROM cells WHERE status != 'failed'")}
            held = {r["key"]: r for r in self.conn.execute("SELECT * FROM claims")}
            for key in keys:
                if key in done:
                    continue
                other = held.get(key)
                if other is not None and other["owner"] != owner.id and owner.is_live(other, now, stale_after_s):
                    continue
                self.conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?, ?, ?, ?)",
                                  (key, owner.id, owner.host, owner.pid, now))
                got.append(key)
        return got

    def heartbeat(self, owner: Owner) -> None:
        with self._transaction():
            self.conn.execute("UPDATE claims SET heartbeat = ? WHERE owner = ?", (time.time(), owner.id))

    def release(self, owner: Owner) -> None:
        with self._transaction():
            self.conn.execute("DELETE FROM claims WHERE owner = ?", (owner.id,))

    def cells(self, **where: Any) -> list[CellResult]:
        unknown = set(where) - set(CellResult.__dataclass_fields__)
        if unknown:
            raise ValueError(f"no cell column {sorted(unknown)[0]!r}")
        clause = " AND ".join(f"{k} = :{k}" for k in where)
        sql = ("SELECT * FROM cells" + (f" WHERE {clause}" if clause else "")
               + " ORDER BY suite, model, attack, eps, seed")
        return [CellResult.from_row(r) for r in self.conn.execute(sql, where)]

    def count(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.conn.execute("SELECT status, COUNT(*) FROM cells GROUP BY status")}

    # ------------------------------------------------------------------ clean metrics
    def get_clean(self, key: str) -> dict[str, dict[str, float]] | None:
        row = self.conn.execute("SELECT metrics FROM clean WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put_clean(self, key: str, *, suite: str, model: str, model_revision: str, split: str, images: int,
                  metrics: dict, device: str, created: str) -> None:
        with self._transaction():
            self.conn.execute("INSERT OR REPLACE INTO clean VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              (key, suite, model, model_revision, split, images, json.dumps(metrics), device, created))

    def put_model(self, suite: str, model: str, model_revision: str, info: dict[str, Any]) -> None:
        """What the leaderboard shows about a model (layout, paper index, parameters, ...)."""
        with self._transaction():
            self.conn.execute("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?)",
                              (suite, model, model_revision, json.dumps(info, sort_keys=True)))

    def models(self) -> list[dict[str, Any]]:
        """What was stored about each model (a damaged JSON column reads as nothing known)."""
        return [{"suite": r[0], "model": r[1], "model_revision": r[2], **_json_object(r[3])}
                for r in self.conn.execute("SELECT * FROM models ORDER BY suite, model")]

    # ------------------------------------------------------------------ export
    def to_pandas(self, keys: list[str] | None = None):
        """One row per cell (only those with ``keys``, in that order, when given); per-task ARP and
        metrics flattened into columns."""
        import pandas as pd

        rows = []
        cells = self.cells() if keys is None else [c for c in map(self.get, keys) if c is not None]
        for c in cells:
            row = {k: v for k, v in asdict(c).items() if k not in _JSON_COLUMNS}
            row.update({f"arp_{t}": v for t, v in c.task_arp.items()})
            for kind, metrics in (("clean", c.clean), ("adv", c.adversarial)):
                for task, values in metrics.items():
                    row.update({f"{kind}_{task}_{m}": v for m, v in values.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def export(self, path: str | Path) -> Path:
        """Write the cells to ``.csv`` or ``.json`` (by the file's suffix)."""
        out = Path(path)
        if out.is_dir():
            raise UserError(f"export to {out}: it is a directory; give a file name ending in .csv or .json")
        if not out.parent.is_dir():
            raise UserError(f"export to {out}: the folder {out.parent} does not exist")
        if out.suffix not in (".csv", ".json"):
            raise UserError(f"export to {out}: use a .csv or .json file name")
        try:
            if out.suffix == ".csv":
                self.to_pandas().to_csv(out, index=False)
            else:
                out.write_text(json.dumps([asdict(c) for c in self.cells()], indent=1, sort_keys=True, default=str))
        except OSError as exc:
            raise UserError(f"export to {out}: cannot write it ({exc.strerror or exc}; a read-only folder?)") from None
        return out
