"""The one scheduler of local worker processes (benchmark.workers.WorkerPool): results come back
tagged, a worker that dies is replaced and its jobs are retried, and a job that kills its worker
every time comes back lost instead of stopping the others."""

import os
from pathlib import Path

from benchmark.workers import WorkerPool


def square(x: int) -> int:
    return x * x


def die_once(marker: str) -> str:
    """Kill the worker the first time (as the OOM killer would), succeed the second."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os._exit(9)
    return "second try"


def always_die() -> None:
    os._exit(9)


def _drain(pool: WorkerPool) -> dict:
    out = {}
    while len(pool):
        for done in pool.wait():
            out[done.tag] = done
    return out


def test_jobs_come_back_with_their_tags():
    pool = WorkerPool(2)
    try:
        assert not pool.started
        for i in range(5):
            pool.submit(("n", i), square, i)
        assert pool.started
        assert {tag: d.result for tag, d in _drain(pool).items()} == {("n", i): i * i for i in range(5)}
    finally:
        pool.close()


def test_a_dead_worker_is_replaced_and_its_jobs_retried_once(tmp_path):
    pool = WorkerPool(2, max_retries=1)
    try:
        pool.submit("flaky", die_once, str(tmp_path / "marker"))
        pool.submit("fine", square, 3)
        done = _drain(pool)
        assert done["flaky"].result == "second try" and done["flaky"].lost == 0
        assert done["fine"].result == 9  # lost with the first pool if it was in flight, run again in the new one
        pool.submit("doomed", always_die)
        done = _drain(pool)
        assert done["doomed"].lost == 2 and done["doomed"].result is None  # tried twice, then given up
        pool.submit("after", square, 4)  # the pool goes on working
        assert _drain(pool)["after"].result == 16
    finally:
        pool.close()


def slow_square(x: int) -> int:
    import time

    time.sleep(0.3)
    return x * x


def test_only_the_job_that_kills_its_worker_is_charged():
    """Beside a job that kills its worker every time, the innocent jobs in flight are run again
    alone and come back with their results; only the killer comes back lost."""
    pool = WorkerPool(2, max_retries=1)
    try:
        pool.submit("doomed", always_die)
        for i in range(4):
            pool.submit(("n", i), slow_square, i)
        done = _drain(pool)
        assert done["doomed"].lost == 2
        assert {tag: d.result for tag, d in done.items() if tag != "doomed"} == {("n", i): i * i for i in range(4)}
        assert all(d.lost == 0 for tag, d in done.items() if tag != "doomed")
    finally:
        pool.close()


def test_workers_are_capped_by_cores_and_memory(capsys):
    from benchmark.threads import WORKERS_PER_CORE, choose_workers, usable_cores

    assert choose_workers(256, small_model=True) <= WORKERS_PER_CORE * usable_cores()
    assert "--workers 256: capped at" in capsys.readouterr().err
    assert choose_workers(1, small_model=True) == 1
