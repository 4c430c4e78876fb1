"""The runner: grid expansion, the results store (resume, kill -9, concurrent readers, export),
failed and invalid cells, missing weights, and the Ray executor."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.runner import ResultsStore, RunOptions, expand_grid, run
from benchmark.suites import load_suite

TESTS = Path(__file__).parent
PLUGIN = str(TESTS / "plugin_bad_attacks.py")


def test_grid_expansion():
    suite = load_suite("tiny-nyuv2-resnet34")
    profile = suite.profile("quick")
    cells = expand_grid(suite, profile)
    # (25 models + AS with FAT and with bit-depth reduction) x (fgsm:gb-mta, pgd:total, pgd:signtotal,
    # pgd:gb-mta, 3 x pgd:single-*) x 2 eps x 1 seed, Square (the defense attack) on AS and its two defended
    # targets at both eps, and the budget curves' points: PGD at 1 and 2 steps on AS and IND
    # (6 PGD attacks x 2 budgets x 2 eps x 2 models)
    # and each defended target the 7 attacks crafted on the undefended AS (its transfer attack) at both eps
    curve = [c for c in cells if c.budget_point]
    square = [c for c in cells if c.attack.name == "square:gb-mta"]
    crafted = [c for c in cells if c.source]
    assert len(cells) - len(curve) - len(square) - len(crafted) == (25 + 2) * 7 * 2 and len(curve) == 6 * 2 * 2 * 2
    assert len(crafted) == 2 * 7 * 2 and {(c.target.name, c.source) for c in crafted} == {
        ("AS+fat:pgd:gb-mta", "AS"), ("AS+bitdepth:4", "AS")}
    assert all(c.inspect == 4 for c in cells if not c.budget_point) and all(c.inspect == 0 for c in curve)
    assert sorted({c.target.name for c in square}) == ["AS", "AS+bitdepth:4", "AS+fat:pgd:gb-mta"]
    assert len(square) == 3 * 2
    assert {c.target.name for c in curve} == {"AS", "IND"} and {dict(c.attack.options)["steps"] for c in curve} == {
        1, 2}
    assert {c.target.name for c in cells if c.target.defense} == {"AS+fat:pgd:gb-mta", "AS+bitdepth:4"}
    pgd = next(c for c in cells if c.attack.name == "pgd:gb-mta")
    assert dict(pgd.attack.options) == {"steps": 5} and pgd.images == 32
    assert dict(next(c for c in cells if c.attack.name == "fgsm:gb-mta").attack.options) == {}
    single = next(c for c in cells if c.attack.name == "pgd:single-depth")
    assert (single.attack.optimizer, single.attack.objective, single.attack.task) == ("pgd", "single-depth",
                                                                                      "depth_zbuffer")
    # mtlbench's own attacks on its own models are not re-run on the CPU (deterministic by construction,
    # tests/test_attacks.py); on a GPU determinism is checked once per (model, attack, seed): in the
    # cells of the first eps at the profile's budget (a budget curve's points share that verdict)
    assert not any(c.check_determinism for c in cells)
    on_gpu = expand_grid(suite, profile, device="cuda")
    assert {c.eps for c in on_gpu if c.check_determinism} == {4.0}
    assert len([c for c in on_gpu if c.check_determinism]) == (25 + 2) * 7 + 3  # + Square on AS's 3 targets
    assert not any(c.check_determinism for c in on_gpu if c.budget_point)
    cells = expand_grid(suite, profile, attacks=["apgd:single-*"], eps=[2, 16], models=["AS"], seeds=[0, 1],
                        defenses=["none"])
    assert {c.attack.name for c in cells} == {"apgd:single-segment", "apgd:single-normal", "apgd:single-depth"}
    assert len(cells) == 3 * 2 * 2
    # the profile's defenses apply to its defended models only; explicit defenses to every model asked for
    assert len(expand_grid(suite, profile, attacks=["pgd:total"], eps=[8], models=["IND"])) == 1
    explicit = expand_grid(suite, profile, attacks=["pgd:total"], eps=[8], models=["IND"], defenses=["median:3"])
    assert [c.target.name for c in explicit] == ["IND+median:3"]
    # the table3 profile names its models: AS without and with FAT trained by each of five attacks
    table3 = expand_grid(suite, suite.profile("table3"))
    assert len(table3) == 6 * 5 and {c.target.member for c in table3} == {"AS"}
    with pytest.raises(UserError, match="matches nothing"):
        expand_grid(suite, profile, attacks=["pgd:single-keypoint"])
    with pytest.raises(UserError, match="outside"):
        expand_grid(suite, profile, eps=[0])


def test_determinism_is_checked_wherever_the_code_or_the_device_is_not_ours(tiny_nyu):
    """The re-run that checks determinism is skipped only for built-in attacks and objectives on
    built-in models and defenses on the CPU: a plugin's attack, a user's objective with a built-in
    optimizer, a defense that is not ours, an external model and a GPU are each checked."""
    from benchmark.attacks import Attack, register_attack
    from benchmark.attacks.objectives import GBMTA, OBJECTIVES, register_objective
    from benchmark.defenses.inference import BitDepth
    from benchmark.defenses.registry import DEFENSES, register_defense
    from benchmark.runner.cells import needs_determinism_check
    from benchmark.targets import Target

    suite = load_suite("tiny-nyuv2-resnet34")
    profile = suite.profile("quick")

    def checked(attacks, **kw):
        return {c.attack.name for c in expand_grid(suite, profile, attacks=attacks, eps=[8], models=["AS"], **kw)
                if c.check_determinism}

    ours = ["none", "bitdepth:4", "median:3", "resize"]
    assert checked(["pgd:gb-mta", "fgsm:total", "autoattack"], defenses=ours) == set()
    assert checked(["pgd:gb-mta", "autoattack"], device="cuda") == {"pgd:gb-mta", "autoattack"}
    model, _, _ = tiny_nyu
    external = expand_grid(suite, profile, attacks=["pgd:gb-mta"], eps=[8], external=model)
    assert external and all(c.check_determinism for c in external)

    class Mine(Attack):
        __module__ = "my_attacks"

        def perturb(self, model, images, targets, *, tasks, eps, generator):
            return images

    class MyObjective(GBMTA):
        __module__ = "my_attacks"

    class MyBitDepth(BitDepth):
        __module__ = "my_defenses"

    register_attack("my-attack")(Mine)
    register_objective("my-objective")(MyObjective)
    register_defense("my-bitdepth")(MyBitDepth)
    try:
        assert checked(["my-attack", "pgd:my-objective", "pgd:total"]) == {"my-attack", "pgd:my-objective"}
        spec = expand_grid(suite, profile, attacks=["pgd:total"], eps=[8], models=["AS"])[0].attack
        assert needs_determinism_check(Target.of(suite.ref, "AS", defense="my-bitdepth:4"), spec, "cpu")
        assert not needs_determinism_check(Target.of(suite.ref, "AS", defense="bitdepth:4"), spec, "cpu")
    finally:
        from benchmark.attacks.registry import ATTACKS

        ATTACKS.pop("my-attack", None)
        OBJECTIVES.pop("my-objective", None)
        DEFENSES.pop("my-bitdepth", None)


def test_memory_column_is_what_the_attack_adds(mini, tmp_path, monkeypatch):
    """The memory an attack adds over the resting model, whatever ran before it: a 200 MB attack
    shows about 200 MB, and an FGSM run after it does not inherit its peak."""
    monkeypatch.setenv("MTLBENCH_PLUGINS", PLUGIN)
    db = tmp_path / "r.db"
    run(RunOptions(suite=str(mini), results=str(db), attacks=["test-hog", "fgsm:total"], eps=[8], models=["AS"]))
    with ResultsStore(db, readonly=True) as store:
        added = {c.attack: c.peak_memory_bytes for c in store.cells()}
    # VmHWM counts file-backed pages too: code of libtorch that the system had evicted and the cell
    # faulted back in shows up beside the attack's own 200 MB (up to 421 MB seen on a loaded CI
    # machine; about 210 MB on an idle one), never less than the attack's allocation
    assert 180e6 < added["test-hog"] < 600e6
    assert added["fgsm:total"] < 50e6


def test_run_stores_every_field_and_resumes(mini, tmp_path):
    db = tmp_path / "r.db"
    summary = run(RunOptions(suite=str(mini), results=str(db)))
    assert summary.total == 2 * 2 * 2 and summary.done["valid"] == 8 and summary.skipped == 0
    with ResultsStore(db, readonly=True) as store:
        cells = store.cells()
        assert len(cells) == 8 and {c.status for c in cells} == {"valid"}
        pgd = next(c for c in cells if c.attack == "pgd:gb-mta" and c.eps == 8 and c.model == "layout-9")
        # PGD-2 on 2 batches of 2 images: counted passes, not assumed ones
        assert (pgd.forward_passes, pgd.backward_passes, pgd.images, pgd.batches) == (4, 4, 4, 2)
        assert pgd.arp > 0 and set(pgd.task_arp) == {"segment_semantic", "normal", "depth_zbuffer"}
        assert pgd.peak_memory_bytes is not None and pgd.peak_memory_kind == "cpu-rss-added"
        assert 0 < pgd.max_perturbation <= 8 + 1e-3 and pgd.time_per_image_s > 0 and pgd.wall_s >= pgd.attack_s
        assert pgd.model_revision.startswith("local-sha256:") and pgd.torch_version and pgd.mtlbench_version
        assert pgd.config["options"] == {"steps": 2} and pgd.config["code_version"] == pgd.mtlbench_version
        assert pgd.clean == next(c for c in cells if c.model == "layout-9").clean
        assert store.conn.execute("SELECT COUNT(*) FROM clean").fetchone()[0] == 2  # once per model
        # (one-step FGSM need not rise with eps on a barely trained model; multi-step PGD does)
        pgd4 = next(c for c in cells if c.attack == "pgd:gb-mta" and c.eps == 4 and c.model == "AS")
        pgd8 = next(c for c in cells if c.attack == "pgd:gb-mta" and c.eps == 8 and c.model == "AS")
        assert pgd8.arp > pgd4.arp
    # a second run has nothing to do; a deleted row is the only thing run again
    assert run(RunOptions(suite=str(mini), results=str(db))).skipped == 8
    conn = sqlite3.connect(db)
    conn.execute("DELETE FROM cells WHERE model='AS' AND attack='fgsm:total' AND eps=4")
    conn.commit()
    conn.close()
    again = run(RunOptions(suite=str(mini), results=str(db)))
    assert again.skipped == 7 and again.done["valid"] == 1


def test_export(mini, tmp_path):
    db = tmp_path / "r.db"
    run(RunOptions(suite=str(mini), results=str(db), attacks=["fgsm:total"], eps=[8]))
    assert main(["results", "export", str(db), str(tmp_path / "cells.csv")]) == 0
    assert main(["results", "export", str(db), str(tmp_path / "cells.json")]) == 0
    import pandas as pd

    frame = pd.read_csv(tmp_path / "cells.csv")
    assert len(frame) == 2 and {"arp", "arp_normal", "adv_depth_zbuffer_abs_err", "clean_normal_mean"} <= set(frame)
    data = json.loads((tmp_path / "cells.json").read_text())
    assert {d["model"] for d in data} == {"AS", "layout-9"}
    with ResultsStore(db, readonly=True) as store:
        assert store.to_pandas()["arp"].tolist() == frame["arp"].tolist()
    assert main(["results", "export", str(db), str(tmp_path / "cells.xlsx")]) == 2
    assert main(["results", "export", str(tmp_path / "missing.db"), str(tmp_path / "x.csv")]) == 2


def test_failed_and_invalid_attacks_do_not_stop_the_run(mini, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MTLBENCH_PLUGINS", raising=False)
    db = tmp_path / "r.db"
    code = main(["run", "--suite", str(mini), "--results", str(db), "--attacks", "test-nan,test-crash,fgsm:total",
                 "--eps", "8", "--plugins", PLUGIN, "--device", "cpu", "--workers", "2"])
    # the plugin module reached the worker processes with their cells, not through the environment
    assert "MTLBENCH_PLUGINS" not in os.environ
    assert code == 1  # 2 models x (1 invalid + 1 failed): exit status 1, the count in the message
    assert "4 cell(s) of this request are stored failed or invalid (2 failed, 2 invalid" in " ".join(
        capsys.readouterr().err.split())
    # a run again computes the failed cells again (and keeps the invalid verdicts); the exit status
    # counts the stored failures, whichever run made them
    code = main(["run", "--suite", str(mini), "--results", str(db), "--attacks", "test-nan,test-crash,fgsm:total",
                 "--eps", "8", "--plugins", PLUGIN, "--device", "cpu", "--workers", "1"])
    out = capsys.readouterr().out
    assert code == 1 and "2 failed" in out and "4 already in" in out
    code = main(["run", "--suite", str(mini), "--results", str(db), "--attacks", "test-nan,test-crash,fgsm:total",
                 "--eps", "8", "--plugins", PLUGIN, "--device", "cpu", "--no-retry"])
    assert code == 1 and "nothing left to run" in capsys.readouterr().out
    with ResultsStore(db, readonly=True) as store:
        by = {(c.model, c.attack): c for c in store.cells()}
    assert by[("AS", "test-nan")].status == "invalid" and "non-finite" in by[("AS", "test-nan")].reason
    assert by[("AS", "test-crash")].status == "failed" and "RuntimeError: boom" in by[("AS", "test-crash")].reason
    assert by[("AS", "fgsm:total")].status == "valid" and by[("layout-9", "fgsm:total")].arp > 0


def test_a_full_suite_without_data_or_weights_runs_nothing_and_says_why(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "home"))
    code = main(["run", "--suite", "nyuv2-resnet34", "--models", "AS,layout-9", "--results", str(tmp_path / "r.db"),
                 "--attacks", "fgsm:total", "--eps", "8", "--device", "cpu"])
    err = " ".join(capsys.readouterr().err.split())
    # a full suite with neither its data nor its weights says both up front, and runs nothing
    assert code == 2 and not (tmp_path / "r.db").exists()
    assert "pass --data-root DIR" in err and "2 of its 2 models have no weights here" in err
    assert "zoo train nyuv2-resnet34" in err and "--weights-dir DIR" in err


def _rows(db: Path) -> list[dict]:
    """Read every row with a fresh connection (as the leaderboard would) and parse it fully."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        rows = [dict(r) for r in conn.execute("SELECT * FROM cells")]
    finally:
        conn.close()
    for r in rows:
        for col in ("clean", "adversarial", "config", "task_arp"):
            json.loads(r[col])
        assert r["status"] == "valid" and r["arp"] is not None
    return rows


def test_kill_minus_9_loses_no_finished_cell(mini, tmp_path):
    db = tmp_path / "r.db"
    env = {**os.environ, "MTLBENCH_PLUGINS": PLUGIN, "MTLBENCH_TEST_SLEEP": "0.3"}
    cmd = [sys.executable, "-m", "benchmark", "run", "--suite", str(mini), "--results", str(db), "--attacks",
           "test-slow", "--eps", "1,2,3,4,5,6,7,8", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        seen = 0
        while time.time() < deadline and seen < 5:
            time.sleep(0.2)
            if db.exists():
                seen = len(_rows(db))  # a concurrent reader never sees a half-written row
        assert seen >= 5, "the run did not get going"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    before = {r["key"]: r for r in _rows(db)}
    assert 5 <= len(before) < 16
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    done = subprocess.run(cmd, env={**env, "MTLBENCH_TEST_SLEEP": "0"}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{len(before)} already in" in done.stdout
    after = {r["key"]: r for r in _rows(db)}
    assert len(after) == 16
    for key, row in before.items():
        assert after[key] == row  # finished cells were not run again



@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_ray_executor_gives_identical_results_and_retries_lost_workers(mini, ray_cluster, tmp_path, monkeypatch):
    local, remote = tmp_path / "local.db", tmp_path / "ray.db"
    common = {"suite": str(mini), "attacks": ["fgsm:total", "pgd:gb-mta"], "eps": [8]}
    run(RunOptions(results=str(local), **common))
    summary = run(RunOptions(results=str(remote), executor="ray", **common))
    assert summary.done["valid"] == 4
    with ResultsStore(local, readonly=True) as a, ResultsStore(remote, readonly=True) as b:
        ca, cb = {c.key: c for c in a.cells()}, {c.key: c for c in b.cells()}
    assert ca.keys() == cb.keys()
    for key in ca:
        assert ca[key].adversarial == cb[key].adversarial and ca[key].arp == cb[key].arp
        assert ca[key].forward_passes == cb[key].forward_passes

    # a worker that dies in the middle of a cell is replaced and the cell retried
    monkeypatch.setenv("MTLBENCH_TEST_MARKER", str(tmp_path / "marker"))
    monkeypatch.setenv("MTLBENCH_PLUGINS", PLUGIN)
    from benchmark.runner.executors import RayExecutor

    ray_cluster.shutdown()  # restart so the workers see the test plugin in their environment
    executor = RayExecutor()
    assert executor.ray.is_initialized()
    summary = run(RunOptions(results=str(remote), executor="ray", suite=str(mini), attacks=["test-dies-once"],
                             eps=[8], models=["AS"]))
    assert (tmp_path / "marker").read_text() == "died"
    assert summary.done["valid"] == 1


def test_ray_schedules_one_worker_per_gpu_and_keeps_a_models_cells_on_it(mini, tmp_path, monkeypatch):
    """On a cluster of 2 (fake) GPUs: 2 workers, one GPU each; every cell of a model on the worker
    that loaded it; the results those of a local run. Ray's fake resources stand in for the cards
    (the cells themselves run on the CPU)."""
    ray = pytest.importorskip("ray")
    from benchmark.runner.executors import RayExecutor

    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        common = {"suite": str(mini), "attacks": ["fgsm:total", "pgd:gb-mta", "mim:total"], "eps": [4, 8]}
        run(RunOptions(results=str(tmp_path / "local.db"), workers=1, **common))
        executor = RayExecutor(device="cpu", gpus_per_worker=1.0)
        assert executor.max_workers == 2
        import sys

        monkeypatch.setattr(sys.modules["benchmark.runner.run"], "make_executor", lambda *args, **kwargs: executor)
        summary = run(RunOptions(results=str(tmp_path / "ray.db"), executor="ray", **common))
        assert summary.done == {"valid": 12}
        where = executor.where()
        assert sorted(g for w in where for g in w["gpus"]) == ["0", "1"]  # one GPU each, none shared
        with ResultsStore(tmp_path / "local.db", readonly=True) as a, ResultsStore(tmp_path / "ray.db",
                                                                                   readonly=True) as b:
            ca, cb = {c.key: c for c in a.cells()}, {c.key: c for c in b.cells()}
        assert ca.keys() == cb.keys()
        assert all(ca[k].adversarial == cb[k].adversarial and ca[k].arp == cb[k].arp for k in ca)
        # a model's cells on the worker that was given it, but for those an idle worker took at the end
        model_of = {k: c.model for k, c in cb.items()}
        cells_on = {}
        for w, placed in enumerate(executor.placements):
            for key in placed["cells"]:
                cells_on.setdefault(model_of[key], {}).setdefault(w, 0)
                cells_on[model_of[key]][w] += 1
        taken = sum(p.get("taken", 0) for p in executor.placements)
        assert sum(sorted(n.values())[-1] for n in cells_on.values()) == 12 - taken, (cells_on, taken)
        assert taken < 6 and len({max(n, key=n.get) for n in cells_on.values()}) == 2  # both workers used
    finally:
        ray.shutdown()


def test_worker_processes_give_identical_results_and_replace_a_dead_worker(mini, tmp_path, monkeypatch):
    one, two = tmp_path / "one.db", tmp_path / "two.db"
    common = {"suite": str(mini), "attacks": ["fgsm:total", "pgd:gb-mta"], "eps": [4, 8]}
    run(RunOptions(results=str(one), workers=1, **common))
    summary = run(RunOptions(results=str(two), workers=2, **common))
    assert summary.done == {"valid": 8}
    with ResultsStore(one, readonly=True) as a, ResultsStore(two, readonly=True) as b:
        ca, cb = {c.key: c for c in a.cells()}, {c.key: c for c in b.cells()}
    assert ca.keys() == cb.keys()
    for key in ca:
        assert (ca[key].adversarial, ca[key].arp, ca[key].forward_passes) == (
            cb[key].adversarial, cb[key].arp, cb[key].forward_passes)
    # a worker that dies in the middle of a cell is replaced and its cells are retried
    monkeypatch.setenv("MTLBENCH_TEST_MARKER", str(tmp_path / "marker"))
    monkeypatch.setenv("MTLBENCH_PLUGINS", PLUGIN)
    summary = run(RunOptions(results=str(tmp_path / "three.db"), workers=2, suite=str(mini),
                             attacks=["test-dies-once", "fgsm:total"], eps=[8], models=["AS"], seeds=[0, 1]))
    assert (tmp_path / "marker").read_text() == "died"
    assert summary.done == {"valid": 4}


def test_worker_processes_start_the_next_target_before_the_last_cells_of_the_previous_one(mini):
    """The cells of consecutive targets share one queue: the next target is asked for while the
    previous one still has cells running, and every result comes back under its own target."""
    import torch

    from benchmark.runner.context import prepare_context
    from benchmark.runner.executors import ProcessExecutor

    suite = load_suite(str(mini))
    cells = expand_grid(suite, suite.profile("quick"), attacks=["fgsm:total", "pgd:gb-mta"], eps=[4, 8])
    by_target: dict[str, list] = {}
    for cell in cells:
        by_target.setdefault(cell.target.member, []).append(cell)
    assert len(by_target) == 2
    results: list[tuple[str, object]] = []
    asked: dict[str, int] = {}  # target -> results yielded before the executor asked for it

    def groups():
        for member, group in by_target.items():
            asked[member] = len(results)
            yield member, group, prepare_context(*group[0].data_key, device=torch.device("cpu"))

    executor = ProcessExecutor(2)
    try:
        for key, result in executor.run_groups(groups()):
            results.append((key, result))
    finally:
        executor.close()
    first, second = by_target
    assert asked[second] < len(by_target[first])  # asked for before the first target's cells were all back
    assert sorted(r.model for k, r in results if k == first) == [first] * len(by_target[first])
    assert sorted(r.model for k, r in results if k == second) == [second] * len(by_target[second])
    assert all(r.status == "valid" for _, r in results)


def test_killing_a_run_leaves_no_worker_processes(mini, tmp_path):
    db = tmp_path / "r.db"
    env = {**os.environ, "MTLBENCH_PLUGINS": PLUGIN, "MTLBENCH_TEST_SLEEP": "0.5", "MTLBENCH_WORKERS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "benchmark", "run", "--suite", str(mini), "--results", str(db),
                             "--attacks", "test-slow", "--eps", "1,2,3,4,5,6,7,8", "--device", "cpu"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, workers = time.time() + 120, []
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.2)
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            workers = [int(p) for p in children.read_text().split()] if children.exists() else []
            workers = [p for p in workers if "multiprocessing" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(workers) >= 2, "the run did not start its worker processes"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    deadline = time.time() + 20
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.2)
    alive = [p for p in workers if Path(f"/proc/{p}").exists()
             and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]]
    assert not alive, f"orphaned workers: {alive}"


def test_a_real_data_suite_needs_its_data_root(mini_suite, tmp_path, capsys, monkeypatch, wide_console):
    manifest, home = mini_suite
    monkeypatch.setenv("MTLBENCH_HOME", str(home))
    real = tmp_path / "real.toml"
    real.write_text(manifest.read_text().replace('data = "synthetic-nyuv2"', 'data = "nyuv2"'))
    weights = home / "zoo" / "mini-run"
    code = main(["run", "--suite", str(real), "--weights-dir", str(weights), "--attacks", "fgsm:total", "--eps", "8",
                 "--results", str(tmp_path / "r.db"), "--device", "cpu"])
    assert code == 2 and "pass --data-root DIR" in capsys.readouterr().err


def test_an_attack_that_kills_its_worker_fails_only_its_own_cells(mini, tmp_path, monkeypatch):
    """`run --workers 2` with a plugin whose attack ends its process: the other attacks' cells in
    flight beside it are run again alone and stored valid; only the killer's cells are failed."""
    monkeypatch.delenv("MTLBENCH_PLUGINS", raising=False)
    db = tmp_path / "r.db"
    code = main(["run", "--suite", str(mini), "--results", str(db), "--attacks", "test-exit,fgsm:total,pgd:gb-mta",
                 "--eps", "4,8", "--plugins", PLUGIN, "--device", "cpu", "--workers", "2"])
    assert code == 1
    with ResultsStore(db, readonly=True) as store:
        cells = store.cells()
    bad = {(c.model, c.attack, c.eps) for c in cells if c.status != "valid"}
    assert bad == {(m, "test-exit", e) for m in ("AS", "layout-9") for e in (4.0, 8.0)}
    assert all("died" in c.reason for c in cells if c.status != "valid")
    assert sum(c.status == "valid" for c in cells) == 8


def test_no_code_path_below_the_plan_trains(mini, tmp_path, capsys, wide_console):
    """Every kind of target (a member, one under a training defense, one behind an inference-time
    defense, an external checkpoint directory) is loaded in worker processes whose training
    functions fail; every cell is valid. A target that is not built is an error naming the
    command, never a training run."""
    import shutil

    from benchmark.runner.plan import make_plan
    from benchmark.zoo.defend import defend_suite

    defend_suite(str(mini), "fat:pgd:gb-mta", ["AS"])  # built before, in this process, as a plan would
    suite = load_suite(str(mini))
    external = tmp_path / "my-net"
    shutil.copytree(Path(os.environ["MTLBENCH_HOME"]) / "zoo" / "mini-run" / "layout-9", external)
    plugin = str(Path(__file__).parent / "plugin_no_training.py")
    db = tmp_path / "r.db"
    common = ["--suite", str(mini), "--results", str(db), "--attacks", "fgsm:total", "--eps", "8", "--device", "cpu",
              "--workers", "2", "--plugins", plugin]
    assert main(["run", *common, "--models", "AS", "--defenses", "none,fat:pgd:gb-mta,bitdepth:4"]) == 0
    assert main(["run", *common, "--model", str(external)]) == 0
    with ResultsStore(db, readonly=True) as store:
        cells = store.cells()
    assert {c.model for c in cells} == {"AS", "AS+fat:pgd:gb-mta", "AS+bitdepth:4", "my-net"}
    assert all(c.status == "valid" for c in cells)
    plan = make_plan(RunOptions(suite=str(mini), models=["AS"], defenses=["none", "fat:pgd:gb-mta"]))
    assert plan.builds == [] and len(plan.cells) == 8 and plan.suite.name == suite.name
    # a target that is not built: the loader names the command; it does not train
    from benchmark.targets import Target, resolve
    from benchmark.zoo.hub import MissingWeightsError

    with pytest.raises(MissingWeightsError, match=r"is not trained yet: run `mtlbench defend mini-run --defense "
                                                  r"pgdat:pgd:total --models AS`"):
        resolve(Target.of(str(mini), "AS", defense="pgdat:pgd:total"))
    loaded_plan = make_plan(RunOptions(suite=str(mini), models=["AS"], defenses=["pgdat:pgd:total"]))
    assert [str(b) for b in loaded_plan.builds] == ["AS+pgdat:pgd:total"]
