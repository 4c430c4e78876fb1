"""``mtlbench run``: expand a suite's grid, skip the cells the store already has, evaluate the
rest with an executor, and write each finished cell at once."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from rich.console import Console
from rich.text import Text

from benchmark.attacks.sandbox import watch_user_interrupts
from benchmark.attacks.validate import NONDETERMINISTIC
from benchmark.enums import Status
from benchmark.errors import UserError
from benchmark.progress import make_console, progress
from benchmark.provenance import git_commit
from benchmark.runner.batching import batch_cells, use_batching
from benchmark.runner.cells import Cell
from benchmark.runner.context import CellContext, ensure_clean_inspection, prepare_context
from benchmark.runner.executors import Executor, LocalExecutor, ProcessExecutor, RayExecutor
from benchmark.runner.plan import NoWeightsError, Places, Plan, Request, execute_builds, make_plan
from benchmark.runner.store import CellResult, Owner, ResultsStore
from benchmark.threads import choose_threads, choose_workers, set_threads
from benchmark.zoo.hub import MissingWeightsError

__all__ = ["NoWeightsError", "RunOptions", "RunSummary", "build_targets", "make_executor", "run"]


@dataclass
class RunOptions(Request):
    """A :class:`~benchmark.runner.plan.Request` and where and how it runs."""

    device: str = "cpu"
    results: str = "results.db"
    weights_dir: str | None = None
    data_root: str | None = None
    executor: str = "local"
    ray_address: str | None = None
    gpus_per_worker: float | None = None  # Ray: GPUs per worker (None: 1 on a GPU run, 0 on CPUs)
    cell_timeout: float | None = None  # seconds (None: the profile's; 0: no limit)
    threads: int | None = None  # torch threads per process (None: benchmark.threads decides)
    workers: int | None = None  # local worker processes (None: one per usable core for tiny suites on CPU)
    keep_images: bool = False  # results carry their adversarial images (``adversarial_images``; a submission)
    retry_failed: bool = True  # run cells stored as failed again (invalid verdicts stay)
    #: attack cells that differ only by eps in one batch (benchmark.runner.batching): "auto" (on a
    #: GPU only), "on" or "off"
    batch_cells: str = "auto"

    @property
    def places(self) -> Places:
        return Places(weights_dir=self.weights_dir, data_root=self.data_root, device=self.device,
                      cell_timeout=self.cell_timeout)


@dataclass
class RunSummary:
    total: int = 0
    skipped: int = 0  # already in the store
    done: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # status -> count
    missing_models: dict[str, str] = field(default_factory=dict)  # not run: no weights (named before the run)
    missing_cells: int = 0  # the grid's cells of those models (not in ``total``)
    keys: list[str] = field(default_factory=list)  # store keys of the grid's cells (run now or before)
    elsewhere: int = 0  # cells another live run on the same store had claimed (left to it)
    seconds: float = 0.0
    stored: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # status -> the grid's cells in the store

    @property
    def bad(self) -> int:
        """Failed or invalid cells of this run."""
        return self.done[Status.FAILED] + self.done[Status.INVALID]

    @property
    def stored_bad(self) -> int:
        """Failed or invalid cells of the grid in the store, whichever run computed them."""
        return self.stored[Status.FAILED] + self.stored[Status.INVALID]


def _todo(cells: list[Cell], store: ResultsStore, ctx: CellContext, *, retry_failed: bool = True) -> list[Cell]:
    """Cells whose key (which includes the weights version) is not in the store yet, and (unless
    ``retry_failed`` is off) those stored ``failed``: a failure (a crash, a time limit, a worker
    that died) may not happen again, while an ``invalid`` verdict is the attack's and stays."""
    stored = store.statuses()
    return [cell for cell in cells
            if (key := cell.store_key(ctx)) not in stored or (retry_failed and stored[key] == Status.FAILED)]


def _verdict_key(cell: Cell) -> tuple:
    """What a determinism check speaks for: the attack with its options except the step budget
    (a budget curve's point shares the verdict of the profile's budget), and the seed."""
    option = getattr(cell.attack.attack_class, "budget_option", None)
    return cell.attack.name, tuple((k, v) for k, v in cell.attack.options if k != option), cell.seed


def _spread_nondeterminism(group: list[Cell], ctx: CellContext, store: ResultsStore, summary: RunSummary,
                           ran: set[str] = frozenset()) -> int:
    """The determinism check runs in one cell per (target, attack, seed), the first eps at the
    profile's step budget; its verdict holds for every eps and step budget of that attack and
    seed, so their stored valid cells become invalid too (``ran``: keys of the cells this run
    evaluated, counted in ``summary``). Returns how many cells changed."""
    def stored(cell: Cell) -> CellResult | None:
        return store.get(cell.store_key(ctx))

    failed = {}
    for cell in group:
        if cell.check_determinism:
            r = stored(cell)
            if r is not None and r.status == Status.INVALID and NONDETERMINISTIC in r.reason:
                failed[_verdict_key(cell)] = cell
    changed = 0
    for cell in group:
        if cell.check_determinism or _verdict_key(cell) not in failed:
            continue
        r = stored(cell)
        if r is None or r.status != Status.VALID:
            continue
        checked = failed[_verdict_key(cell)]
        budget = "" if checked.attack == cell.attack else f" at {dict(checked.attack.options)}"
        r.status, r.arp, r.task_arp = Status.INVALID, None, {}
        r.reason = (f"{NONDETERMINISTIC}: the same seed gave a different output (checked in the eps "
                    f"{checked.eps:g} cell of this attack{budget} and seed)")
        store.put(r)
        summary.done[Status.INVALID] += 1
        if r.key in ran:
            summary.done["valid"] -= 1
        changed += 1
    return changed


@contextlib.contextmanager
def _released(store: ResultsStore, owner: Owner):
    """The run's claims are released when it ends, however it ends (a killed run's are stale)."""
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            store.release(owner)


def build_targets(run_options: RunOptions, *, console: Console | None = None, whole_suite: bool = False) -> None:
    """Train, before the run, what ``run_options`` describe needs and a tiny suite builds on
    first use (the builds of its plan; ``whole_suite``: every member too)."""
    request = replace(run_options, models=None) if whole_suite else run_options
    plan = make_plan(request, run_options.places)
    set_threads(run_options.threads, small_model=plan.suite.tiny)
    execute_builds(plan, threads=run_options.threads, workers=run_options.workers,
                   console=console or make_console(stderr=True))


@dataclass
class _Running:
    """A target whose cells are being evaluated: what its summary line needs."""

    group: list[Cell]
    ctx: CellContext
    left: int
    start: float = field(default_factory=time.perf_counter)
    arps: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    ran: set[str] = field(default_factory=set)

    def add(self, result: CellResult) -> None:
        self.left -= 1
        self.ran.add(result.key)
        self.statuses[result.status] += 1
        if result.arp is not None:
            self.arps.append(result.arp)

    def line(self) -> Text:
        mean = f"mean ARP {sum(self.arps) / len(self.arps):6.2f}" if self.arps else "no valid cell"
        bad = ", ".join(f"{n} {s}" for s, n in self.statuses.items() if n and s != Status.VALID)
        line = Text(f"{self.ctx.target.name:>12}: {len(self.ran)} cells in {time.perf_counter() - self.start:5.1f} s, "
                    f"{mean}")
        if bad:
            line.append(f", {bad}", style="red")
        return line


def make_executor(run_options: RunOptions, *, small_model: bool = False, in_memory: bool = False) -> Executor:
    if run_options.executor == "ray":
        return RayExecutor(device=run_options.device, address=run_options.ray_address,
                           gpus_per_worker=run_options.gpus_per_worker,
                           threads=run_options.threads or 1, workers=run_options.workers)  # one CPU (thread) per worker
    workers = choose_workers(run_options.workers, small_model=small_model, device=run_options.device)
    if workers > 1 and not in_memory:
        return ProcessExecutor(workers, device=run_options.device,
                               threads=choose_threads(run_options.threads, small_model=small_model, workers=workers))
    return LocalExecutor()


#: seconds between two nudges of the progress display while cells run
TICK_S = 5.0


@contextlib.contextmanager
def _ticking(bar, task, every: float | None = None):
    """While the block runs, tell ``bar`` every ``every`` seconds (from a background thread; the
    cells keep the main thread, where their time limits and Ctrl-C work): off a terminal, it then
    prints a line with the count, the elapsed time and an estimate of what is left, also while one
    long cell runs."""
    import threading

    stop = threading.Event()

    def tick():
        while not stop.wait(every):
            bar.update(task)

    every = TICK_S if every is None else every
    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run(run_options: RunOptions, *, console: Console | None = None, module: torch.nn.Module | None = None,
        on_result: Callable[[CellResult], None] | None = None) -> RunSummary:
    """Evaluate the grid ``run_options`` describe into the results store. ``module``: an ``nn.Module``
    evaluated instead of the suite's members (:func:`benchmark.evaluate`; local executor only).
    ``on_result`` is called with each cell evaluated by this run, once it is stored."""
    console = console or make_console(stderr=True)
    if module is not None and run_options.model_dir is not None:
        raise UserError("give an nn.Module or a model directory, not both")
    if module is not None and run_options.executor != "local":
        raise UserError("an nn.Module of this process runs with the local executor; save it as a checkpoint "
                        "directory (`mtlbench run --model DIR`) to run it on Ray")
    batched = use_batching(run_options.batch_cells, run_options.device)
    plan = make_plan(run_options, run_options.places, module=module)
    suite, profile = plan.suite, plan.profile
    set_threads(run_options.threads, small_model=suite.tiny)
    if plan.missing:
        _say_missing(console, suite.name, plan.missing, plan.left_out)
    cells = [replace(cell, keep_images=True) for cell in plan.cells] if run_options.keep_images else plan.cells
    device = torch.device(run_options.device)
    _say_size(console, plan)
    summary = RunSummary(total=len(cells), missing_models=dict(plan.missing), missing_cells=plan.left_out)
    start = time.perf_counter()
    commit = git_commit()
    unpublished = {m.name for m in suite.unpublished()}
    # group by target (and data) so each model is loaded once; the store decides what is left to do
    groups: dict[tuple, list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[cell.data_key].append(cell)
    execute_builds(plan, threads=run_options.threads, workers=run_options.workers, console=console)
    owner = Owner.this_process()
    # a claim whose run sent no heartbeat for longer than a cell may take is abandoned
    timeout = run_options.cell_timeout
    stale_after = (timeout if timeout is not None else profile.cell_timeout) or 86400.0
    with ResultsStore(run_options.results) as store, watch_user_interrupts(), _released(store, owner), \
            contextlib.ExitStack() as stack:
        executor = make_executor(run_options, small_model=suite.tiny, in_memory=module is not None)
        stack.callback(executor.close)
        with progress(console) as bar:
            overall = bar.add_task(f"{suite.name} [{profile.name}]", total=len(cells))
            stack.enter_context(_ticking(bar, overall))
            running: dict[int, _Running] = {}

            def to_run():
                """The groups with cells left to this run, each prepared when the executor asks."""
                for index, group in enumerate(groups.values()):
                    target = group[0].target
                    try:
                        ctx = prepare_context(*group[0].data_key, device=device, store=store, console=console,
                                              git_commit=commit, module=module)
                    except MissingWeightsError as exc:
                        if (target.member not in unpublished and run_options.weights_dir is None
                                and not target.trained_defense):
                            raise
                        summary.missing_models[target.name] = str(exc)
                        bar.update(overall, advance=len(group))
                        continue
                    ensure_clean_inspection(ctx, store, max(cell.inspect for cell in group))
                    summary.keys += [cell.store_key(ctx) for cell in group]
                    todo = _todo(group, store, ctx, retry_failed=run_options.retry_failed)
                    summary.skipped += len(group) - len(todo)
                    bar.update(overall, advance=len(group) - len(todo))
                    if todo:  # cells another run is computing are left to it
                        keyed = {cell.store_key(ctx): cell for cell in todo}
                        claimed = set(store.claim(list(keyed), owner, stale_after_s=stale_after + 120.0))
                        summary.elsewhere += len(keyed) - len(claimed)
                        bar.update(overall, advance=len(keyed) - len(claimed))
                        todo = [cell for key, cell in keyed.items() if key in claimed]
                    if not todo:
                        _spread_nondeterminism(group, ctx, store, summary)
                        continue
                    running[index] = _Running(group, ctx, len(todo))
                    yield index, batch_cells(todo) if batched else todo, ctx

            for index, result in executor.run_groups(to_run()):
                store.put(result)
                store.heartbeat(owner)
                if on_result is not None:
                    on_result(result)
                summary.done[result.status] += 1
                bar.update(overall, advance=1)
                state = running[index]
                state.add(result)
                if state.left == 0:
                    del running[index]
                    state.statuses[Status.INVALID] += _spread_nondeterminism(state.group, state.ctx, store, summary,
                                                                        state.ran)
                    bar.console.print(state.line())
        for status in store.statuses(summary.keys).values():
            summary.stored[status] += 1
    summary.seconds = time.perf_counter() - start
    return summary


#: a grid this large gets a word of warning before it runs
LARGE_GRID = 500


def _say_size(console: Console, plan: Plan) -> None:
    """The size of the request before anything runs: cells, and what they multiply out of."""
    if not plan.cells:
        return
    text = plan.summary() + "; an estimate of the time left follows once the first cells are done"
    if len(plan.cells) > LARGE_GRID:
        text += (". A large grid: on 2 CPU cores the tiny suites' cells take a few seconds each (PGD-10 and APGD "
                 "more); narrow it with --models, --attacks, --eps or --seeds (`mtlbench run --plan` shows it)")
    console.print(Text(text), soft_wrap=True)


def _say_missing(console: Console, suite: str, missing: dict[str, str], cells: int) -> None:
    """One table, before the run, of the members that have no weights (their cells are not run)."""
    from rich.table import Table

    table = Table(title=f"{suite}: {len(missing)} model(s) have no weights here; their {cells} cells are not run")
    table.add_column("model")
    table.add_column("why", overflow="fold")
    for name, why in missing.items():
        table.add_row(name, why.split("; ", 1)[0])
    console.print(table)
    ways = next(iter(missing.values())).split("; ", 1)[1]
    console.print(Text(ways[0].upper() + ways[1:]), soft_wrap=True)
