"""Rendering the leaderboard of 10,000 cells (25 models x 40 attacks x 10 eps): target < 10 s."""

import random

import pytest
from results_factory import TASKS, make_cell, put_models

from benchmark.runner import ResultsStore
from leaderboard import render_leaderboard

MODELS = [f"model-{i}" for i in range(25)]
ATTACKS = [f"{opt}:{obj}" for opt in ("fgsm", "pgd", "mim", "apgd", "autosaga")
           for obj in ("total", "signtotal", "gb-mta", "single-segment", "single-normal", "single-depth",
                       "variant-a", "variant-b")]
EPS = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 16.0]


@pytest.fixture(scope="module")
def big_db(tmp_path_factory):
    db = tmp_path_factory.mktemp("lb") / "10k.db"
    rng = random.Random(0)
    with ResultsStore(db) as store:
        put_models(store, "big", MODELS)
        store.conn.execute("BEGIN")
        for m in MODELS:
            for a in ATTACKS:
                for e in EPS:
                    arp = rng.uniform(1, 4) * e
                    cell = make_cell("big", m, a, e, arp, task_arp={t: arp * rng.uniform(0.5, 1.5) for t in TASKS})
                    row = cell.to_row()
                    store.conn.execute(f"INSERT INTO cells ({', '.join(row)}) VALUES "
                                       f"({', '.join(':' + c for c in row)})", row)
        store.conn.execute("COMMIT")
        assert sum(store.count().values()) == 10_000
    return db


def test_render_10k_cells(benchmark, big_db, tmp_path):
    benchmark.extra_info["cells"] = 10_000
    benchmark.pedantic(render_leaderboard, args=(big_db, tmp_path / "site"), rounds=2, iterations=1)
    benchmark.extra_info["seconds"] = benchmark.stats.stats.median
