"""Per-image results (the paired unit of `mtlbench check`) and the schema step that added them."""

import math
import sqlite3

import numpy as np
import pytest
import torch

from benchmark.errors import UserError
from benchmark.evaluation import per_image_metrics
from benchmark.runner import RunOptions, run
from benchmark.runner.store import SCHEMA_VERSION, ResultsStore
from benchmark.scoring import arp, image_scores, paired_bootstrap
from benchmark.tasks import get_tasks


def _outputs_and_batch(n=6, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    tasks = get_tasks("nyuv2")
    batch = {"image": torch.rand(n, 3, size, size, generator=gen),
             "segment_semantic": torch.randint(0, 40, (n, size, size), generator=gen),
             "normal": torch.nn.functional.normalize(torch.randn(n, 3, size, size, generator=gen), dim=1),
             "depth_zbuffer": torch.rand(n, 1, size, size, generator=gen) + 0.5}
    outputs = {t.name: torch.randn(n, t.channels, size, size, generator=gen) for t in tasks}
    outputs["depth_zbuffer"] = outputs["depth_zbuffer"].abs() + 0.5
    return tasks, outputs, batch


def test_image_scores_average_to_the_cell_arp():
    tasks, outputs, batch = _outputs_and_batch()
    images = per_image_metrics(tasks, outputs, batch)
    pooled = {t.name: t.new_metric() for t in tasks}
    for t in tasks:
        pooled[t.name].update(outputs[t.name], batch)
    adv = {k: m.compute() for k, m in pooled.items()}
    clean = {k: {m: v * 1.3 + 0.1 for m, v in values.items()} for k, values in adv.items()}
    # merged per-image statistics are the batch's statistics
    for t in tasks:
        merged = t.new_metric()
        for one in images:
            merged.merge(one[t.name])
        assert merged.compute() == pytest.approx(adv[t.name], rel=1e-12, abs=1e-9)
    # depth's metrics are pixel means and every image has the same pixels: the pseudo-values are exact
    depth = [t for t in tasks if t.name == "depth_zbuffer"]
    scores = image_scores(clean, [{"depth_zbuffer": one["depth_zbuffer"]} for one in images], depth)
    assert np.mean(scores) == pytest.approx(arp(clean, adv, depth), abs=1e-9)
    # with pooled metrics (mIoU, a median) they average to the ARP up to the jackknife's bias correction
    scores = image_scores(clean, images, tasks)
    assert len(scores) == 6 and all(math.isfinite(s) for s in scores)
    assert np.mean(scores) == pytest.approx(arp(clean, adv, tasks), abs=2.0)


def test_paired_bootstrap_detects_a_shift_and_not_noise():
    rng = np.random.default_rng(0)
    before = [rng.normal(30, 5, size=8) for _ in range(4)]
    noise = [b + rng.normal(0, 1, size=8) for b in before]
    weaker = [b - 3 + rng.normal(0, 1, size=8) for b in before]
    d, low, high, p = paired_bootstrap(before, weaker, seed=1)
    assert d == pytest.approx(np.mean(np.concatenate(weaker) - np.concatenate(before)))
    assert high < 0 and p < 0.001
    d, low, high, p = paired_bootstrap(before, noise, seed=1)
    assert low < 0 < high and p > 0.05
    same = paired_bootstrap(before, before)
    assert same[0] == 0 and same[3] > 0.5


def test_cells_store_per_image_scores(mini, tmp_path):
    db = tmp_path / "r.db"
    run(RunOptions(suite=str(mini), attacks=["pgd:gb-mta"], eps=[8], results=str(db), defenses=["none"]))
    with ResultsStore(db) as store:
        cells = store.cells()
    assert cells
    for c in cells:
        assert c.per_image["ids"] == [f"synthetic-nyuv2/test/seed0/{i}" for i in range(4)]
        assert len(c.per_image["score"]) == 4 and set(c.per_image["metrics"]) == set(c.adversarial)
        assert all(math.isfinite(v) for v in c.per_image["score"]) and len(set(c.per_image["score"])) > 1
        # the image's own metrics, each from that image alone
        assert all(len(values) == 4 for metrics in c.per_image["metrics"].values() for values in metrics.values())


def _v2_database(path):
    """A results database as schema version 2 wrote it (no per_image column), with one cell."""
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '2');
        CREATE TABLE cells (key TEXT PRIMARY KEY, suite TEXT NOT NULL, model TEXT NOT NULL, attack TEXT NOT NULL,
            eps REAL NOT NULL, seed INTEGER NOT NULL, profile TEXT NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL,
            arp REAL, task_arp TEXT, clean TEXT, adversarial TEXT, images INTEGER, batches INTEGER, wall_s REAL,
            attack_s REAL, time_per_image_s REAL, forward_passes INTEGER, backward_passes INTEGER,
            peak_memory_bytes INTEGER, peak_memory_kind TEXT, max_perturbation REAL, device TEXT, torch_version TEXT,
            mtlbench_version TEXT, git_commit TEXT, model_revision TEXT, config TEXT NOT NULL, created TEXT NOT NULL);
        INSERT INTO cells (key, suite, model, attack, eps, seed, profile, status, reason, arp, task_arp, clean,
            adversarial, config, created) VALUES ('k1', 's', 'AS', 'pgd:gb-mta', 8, 0, 'quick', 'valid', '', 12.5,
            '{"depth": 12.5}', '{}', '{}', '{}', '2026-01-01');
    """)
    conn.commit()
    conn.close()


def test_a_version_2_database_is_migrated_and_keeps_its_cells(tmp_path):
    db = tmp_path / "old.db"
    _v2_database(db)
    with ResultsStore(db, readonly=True) as store:  # read as it is, without writing
        assert store.cells()[0].arp == 12.5 and store.cells()[0].per_image == {}
    with ResultsStore(db) as store:
        (cell,) = store.cells()
        assert cell.arp == 12.5 and cell.per_image == {}
        version = store.conn.execute("SELECT value FROM meta WHERE name='schema_version'").fetchone()[0]
        assert int(version) == SCHEMA_VERSION == 3


@pytest.mark.parametrize("version, words", [("1", "too old to migrate"), ("99", "written by a newer mtlbench")])
def test_other_schema_versions_are_refused_untouched(tmp_path, version, words):
    db = tmp_path / "other.db"
    _v2_database(db)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = ? WHERE name = 'schema_version'", (version,))
    conn.commit()
    conn.close()
    before = db.read_bytes()
    with pytest.raises(UserError, match=words):
        ResultsStore(db)
    assert db.read_bytes() == before
