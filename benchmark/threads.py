"""How many threads torch uses in a process of mtlbench, and how many worker processes run.

torch's default is one intra-op thread per core. On a machine that is busy with anything else
(another run, a build, a CI neighbour) those threads wait for each other: on 2 cores, one
forward+backward of the tiny AS model took 36 ms with 2 threads alone, 31 ms with 1 thread alone,
113 ms with 2 threads beside one busy process and 31 ms with 1 thread beside it. The tiny suites'
models are too small for a second thread to pay off even alone, so their default is one thread;
full-size models share out the cores this process may use (its CPU affinity and cgroup quota)
between the workers that run beside each other. ``--threads N`` overrides both.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from benchmark.errors import UserError
from benchmark.paths import mtlbench_home
from benchmark.registry import load_plugin_modules

__all__ = ["MAX_THREADS", "choose_threads", "choose_workers", "deterministic_kernels", "die_with_parent", "init_worker",
           "set_threads",
           "stop_pool", "usable_cores", "worker_env"]

MAX_THREADS = 256


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity, bounded by a cgroup (v2) CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def choose_threads(requested: int | None = None, *, small_model: bool, workers: int = 1) -> int:
    """Threads for one process: ``requested``, else 1 for small models (the tiny suites), else
    this process's usable cores shared among ``workers`` processes."""
    if requested is not None:
        if not 1 <= int(requested) <= MAX_THREADS:
            raise UserError(f"--threads {requested}: expected an integer in [1, {MAX_THREADS}]")
        return int(requested)
    if small_model:
        return 1
    return max(1, usable_cores() // max(1, workers))


def choose_workers(requested: int | None = None, *, small_model: bool, device: str = "cpu") -> int:
    """Local worker processes for a run: ``requested`` (or ``$MTLBENCH_WORKERS``), else one per
    usable core for small models on the CPU (faster than one process with every core's thread:
    see :mod:`benchmark.runner.executors`), else 1."""
    if requested is None and os.environ.get("MTLBENCH_WORKERS", "").strip():
        try:
            requested = int(os.environ["MTLBENCH_WORKERS"])
        except ValueError:
            raise UserError(f"MTLBENCH_WORKERS={os.environ['MTLBENCH_WORKERS']!r}: expected an integer") from None
    if requested is not None:
        if not 1 <= int(requested) <= MAX_THREADS:
            raise UserError(f"--workers {requested}: expected an integer in [1, {MAX_THREADS}]")
        return _capped(int(requested))
    if str(device).startswith("cuda") or not small_model:
        return 1
    return usable_cores()


#: memory one worker process may take (torch, a tiny model, its evaluation images and an attack)
WORKER_BYTES = 2**30
#: worker processes per usable core at most (more only time-slice the same cores)
WORKERS_PER_CORE = 2


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _capped(requested: int) -> int:
    """``requested`` worker processes, at most :data:`WORKERS_PER_CORE` per usable core and one per
    :data:`WORKER_BYTES` of available memory (a message says so when that caps it)."""
    import sys

    cores = usable_cores()
    memory = _available_memory()
    cap = cores * WORKERS_PER_CORE
    if memory is not None:
        cap = min(cap, max(1, memory // WORKER_BYTES))
    if requested <= cap:
        return requested
    room = f"{memory / 2**30:.1f} GiB available" if memory is not None else "memory unknown"
    sys.stderr.write(f"--workers {requested}: capped at {cap} (this machine: {cores} usable core(s), {room}; a "
                     f"worker takes up to {WORKER_BYTES / 2**30:.0f} GiB, and more than {WORKERS_PER_CORE} per core "
                     "only share the same cores)\n")
    return cap


def deterministic_kernels(device: str | torch.device) -> None:
    """On a GPU, the kernels that give the same output for the same input every time: cuDNN's
    deterministic convolution algorithms (its autotuner off) and cuBLAS with a fixed workspace
    (the variable only counts when it is set before the process's first matrix product, so the
    runner calls this before it loads a model). Without them a seeded attack is not repeatable on
    a GPU: the quick profile of tiny-nyuv2-resnet34 on an H200 had 28 of its 432 cells fail the
    determinism check (PGD's gradient signs flip where a backward kernel's sums differ). On the CPU
    torch's kernels are deterministic already; nothing changes there."""
    if torch.device(device).type != "cuda":
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def set_threads(requested: int | None = None, *, small_model: bool, workers: int = 1) -> int:
    """Choose (:func:`choose_threads`) and apply the thread count; returns it."""
    threads = choose_threads(requested, small_model=small_model, workers=workers)
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def stop_pool(pool) -> None:
    """Stop a process pool now: queued work is cancelled and the workers are ended, not waited
    for (after Ctrl-C, a worker may be in the middle of a long cell; its result is not kept)."""
    processes = list(getattr(pool, "_processes", {}).values())  # no public API lists them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=10)


def die_with_parent() -> None:
    """In a worker process: end it when the process that started it ends, even by ``kill -9``
    (Linux ``PR_SET_PDEATHSIG``), so that an interrupted run leaves no orphaned workers."""
    import signal
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent was already gone before the call
        os._exit(1)


def worker_env() -> dict[str, str]:
    """What a worker process must see as this one does: where the zoo lives and the Hub settings
    (``MTLBENCH_*`` and ``HF_*``, with ``MTLBENCH_HOME`` made absolute)."""
    env = {k: v for k, v in os.environ.items() if k.startswith(("MTLBENCH_", "HF_"))}
    env["MTLBENCH_HOME"] = str(mtlbench_home().resolve())
    return env


def init_worker(threads: int, env: dict[str, str], plugins: list[str] | tuple[str, ...] = (),
                parent: int | None = None) -> None:
    """The start of a local worker process: it ends with its parent (``parent``: its pid; a
    worker whose parent ended while it was starting ends at once), sees the parent's settings
    (:func:`worker_env`), uses ``threads`` torch threads and imports the parent's plugin modules
    (:func:`benchmark.registry.imported_plugin_modules`)."""
    die_with_parent()
    if parent is not None and os.getppid() != parent:  # orphaned before it could ask to die with it
        os._exit(1)
    os.environ.update(env)
    torch.set_num_threads(threads)
    load_plugin_modules(plugins)
