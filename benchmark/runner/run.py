"""``mtlbench run``: expand a suite's grid, skip the cells the store already has, evaluate the
rest with an executor, and write each finished cell at once."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.text import Text

from benchmark.attacks.sandbox import watch_user_interrupts
from benchmark.attacks.validate import NONDETERMINISTIC
from benchmark.enums import Status
from benchmark.errors import UserError
from benchmark.progress import make_console, progress
from benchmark.provenance import git_commit
from benchmark.runner.cells import Cell, expand_grid
from benchmark.runner.context import CellContext, prepare_context
from benchmark.runner.executors import Executor, LocalExecutor, ProcessExecutor, RayExecutor
from benchmark.runner.store import CellResult, Owner, ResultsStore
from benchmark.suites import load_suite
from benchmark.targets import Target
from benchmark.threads import choose_threads, choose_workers, set_threads
from benchmark.zoo.hub import MissingWeightsError

__all__ = ["RunOptions", "RunSummary", "build_targets", "make_executor", "run"]


@dataclass
class RunOptions:
    suite: str
    profile: str = "quick"
    attacks: list[str] | None = None
    eps: list[float] | None = None
    models: list[str] | None = None
    seeds: list[int] | None = None
    device: str = "cpu"
    results: str = "results.db"
    weights_dir: str | None = None
    data_root: str | None = None
    executor: str = "local"
    ray_address: str | None = None
    gpus_per_cell: float = 1.0
    cell_timeout: float | None = None  # seconds (None: the profile's; 0: no limit)
    defenses: list[str] | None = None  # "none" and inference-time defenses (None: the profile's)
    eot_samples: int | None = None  # EOT draws per call on randomised defenses (None: the profile's)
    score_draws: int | None = None  # draws a randomised defense is scored over (None: the profile's)
    model_dir: str | None = None  # an external Hub-format checkpoint directory, run instead of the members
    model_name: str | None = None  # its name in results (default: the directory's name)
    threads: int | None = None  # torch threads per process (None: benchmark.threads decides)
    workers: int | None = None  # local worker processes (None: one per usable core for tiny suites on CPU)
    keep_images: bool = False  # results carry their adversarial images (``adversarial_images``; a submission)
    images: int | None = None  # evaluate the first N images of the split (None: the profile's eval_size)
    retry_failed: bool = True  # run cells stored as failed again (invalid verdicts stay)


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
        return self.done["failed"] + self.done["invalid"]

    @property
    def stored_bad(self) -> int:
        """Failed or invalid cells of the grid in the store, whichever run computed them."""
        return self.stored["failed"] + self.stored["invalid"]


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
        r.status, r.arp, r.task_arp = "invalid", None, {}
        r.reason = (f"{NONDETERMINISTIC}: the same seed gave a different output (checked in the eps "
                    f"{checked.eps:g} cell of this attack{budget} and seed)")
        store.put(r)
        summary.done["invalid"] += 1
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


def _grid(options: RunOptions, suite, profile, module: torch.nn.Module | None = None) -> list[Cell]:
    external = module if module is not None else options.model_dir
    return expand_grid(suite, profile, attacks=options.attacks, eps=options.eps, models=options.models,
                       seeds=options.seeds, weights_dir=options.weights_dir, data_root=options.data_root,
                       cell_timeout=options.cell_timeout, defenses=options.defenses,
                       eot_samples=options.eot_samples, score_draws=options.score_draws, images=options.images,
                       external=external,
                       external_name=options.model_name,
                       device=options.device)


def build_targets(options: RunOptions, *, console: Console | None = None, whole_suite: bool = False) -> None:
    """Train, before the run, what the run ``options`` describe needs and a tiny suite builds on
    first use: its members (``whole_suite``: every member), then their trained defenses."""
    suite = load_suite(options.suite)
    set_threads(options.threads, small_model=suite.tiny)
    cells = _grid(options, suite, suite.profile(options.profile))
    targets = [c.target for c in cells]
    if whole_suite and cells:
        targets += [Target.of(cells[0].target.suite, m.name, weights_dir=options.weights_dir) for m in suite.members]
    _build_missing(suite, list(dict.fromkeys(targets)), options, console or make_console(stderr=True))


def _build_missing(suite, targets: list, options: RunOptions, console: Console) -> None:
    """Train what a tiny suite builds on first use (its members, then their trained defenses)
    before the run's progress display starts: in worker processes, each defense as soon as its
    member is built; with one worker, one build per suite and defense."""
    if not suite.tiny:
        return
    from benchmark.zoo.build import build_suite
    from benchmark.zoo.defend import defend_suite, defense_job

    missing = [t for t in targets if not t.is_built()]
    members = list(dict.fromkeys(t.member for t in missing if not t.trained_defense))
    parents = [t.member for t in missing if t.trained_defense and not Target.of(t.suite, t.member).is_built()]
    members += [m for m in dict.fromkeys(parents) if m not in members]
    defended = list(dict.fromkeys((t.member, t.defense) for t in missing if t.trained_defense))
    workers = choose_workers(options.workers, small_model=suite.tiny, device=options.device)
    if workers > 1 and len(members) + len(defended) > 1:
        # the defenses train in the build's worker processes, each once its member is built
        jobs = [defense_job(suite, suite.member(m), d, device=options.device, data_root=options.data_root,
                            weights_dir=options.weights_dir, after_build=m in members) for m, d in defended]
        build_suite(suite, members, device=options.device, data_root=options.data_root, console=console,
                    threads=options.threads, workers=workers, then=jobs)
        return
    if members:
        build_suite(suite, members, device=options.device, data_root=options.data_root, console=console,
                    threads=options.threads)
    for defense in dict.fromkeys(t.defense for t in missing if t.trained_defense):
        defend_suite(suite, defense, [t.member for t in missing if t.defense == defense], device=options.device,
                     data_root=options.data_root, weights_dir=options.weights_dir, console=console,
                     threads=options.threads)


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
        bad = ", ".join(f"{n} {s}" for s, n in self.statuses.items() if n and s != "valid")
        line = Text(f"{self.ctx.target.name:>12}: {len(self.ran)} cells in {time.perf_counter() - self.start:5.1f} s, "
                    f"{mean}")
        if bad:
            line.append(f", {bad}", style="red")
        return line


def make_executor(options: RunOptions, *, small_model: bool = False, in_memory: bool = False) -> Executor:
    if options.executor == "ray":
        return RayExecutor(device=options.device, address=options.ray_address, gpus_per_cell=options.gpus_per_cell,
                           threads=options.threads or 1)  # one CPU (and thread) per Ray task by default
    workers = choose_workers(options.workers, small_model=small_model, device=options.device)
    if workers > 1 and not in_memory:
        return ProcessExecutor(workers, device=options.device,
                               threads=choose_threads(options.threads, small_model=small_model, workers=workers))
    return LocalExecutor()


class NoWeightsError(MissingWeightsError):
    """No member of a run has weights on this machine: ``missing`` maps each to its Hub repo."""

    def __init__(self, message: str, missing: dict[str, str], ways: str) -> None:
        super().__init__(message)
        self.missing, self.ways = missing, ways


def _refuse_what_cannot_run(suite, cells: list[Cell], options: RunOptions, module) -> dict[str, str]:
    """What cannot run, said before anything runs: a full suite's run needs the real data (an
    error naming the missing data root); members without weights (an error when none has any;
    else returned, member -> why, so the run leaves their cells out of its count and says so up
    front)."""
    if module is not None or options.model_dir is not None:
        return {}
    if options.data_root is not None and not Path(options.data_root).is_dir():
        raise UserError(f"--data-root {options.data_root}: no such directory (the real {suite.data_source} data set "
                        f"is read from it; its layout is in the README, \"Running the full suites\")")
    if options.weights_dir is not None and not Path(options.weights_dir).is_dir():
        raise UserError(f"--weights-dir {options.weights_dir}: no such directory (it holds one checkpoint directory "
                        "per model: DIR/<model>/model.safetensors and config.json)")
    if suite.synthetic and options.weights_dir is None:
        return {}
    members = list(dict.fromkeys(c.target.member for c in cells if not c.target.external))
    missing = {m: suite.member(m).repo_id or "(no Hub repo)" for m in members
               if not Target.of(cells[0].target.suite, m, weights_dir=options.weights_dir).is_built()}
    if suite.synthetic:  # a tiny member missing from --weights-dir is taken from the zoo (built if need be)
        return {}
    ways = (f"get weights by one of: `mtlbench zoo train {suite.name} --data-root DIR` (train them, from the ImageNet "
            f"backbone), `mtlbench zoo import {suite.name} WEIGHTROOT` (convert the paper authors' checkpoints), or "
            "`--weights-dir DIR` with checkpoint directories DIR/<model>/")
    if options.data_root is None:
        weights = (f"; and {len(missing)} of its {len(members)} models have no weights here ({ways})" if missing
                   else "")
        raise UserError(f"{suite.name} runs on the real {suite.data_source} data: pass --data-root DIR (the "
                        f"directory format is in the README, \"Running the full suites\"){weights}")
    if missing and len(missing) == len(members):
        raise NoWeightsError(f"no model of {suite.name} has weights on this machine ({len(missing)} models: "
                             f"{', '.join(missing)}); {ways}", missing, ways)
    return {m: f"no weights on this machine (Hub repo {repo}); {ways}" for m, repo in missing.items()}


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


def run(options: RunOptions, *, console: Console | None = None, module: torch.nn.Module | None = None,
        on_result: Callable[[CellResult], None] | None = None) -> RunSummary:
    """Evaluate the grid ``options`` describe into the results store. ``module``: an ``nn.Module``
    evaluated instead of the suite's members (:func:`benchmark.evaluate`; local executor only).
    ``on_result`` is called with each cell evaluated by this run, once it is stored."""
    console = console or make_console(stderr=True)
    suite = load_suite(options.suite)
    profile = suite.profile(options.profile)
    suite.check_data_root(options.data_root)
    if module is not None and options.model_dir is not None:
        raise UserError("give an nn.Module or a model directory, not both")
    if options.models and (module is not None or options.model_dir is not None):
        raise UserError("--models picks suite members; with --model DIR the external model is run instead")
    if module is not None and options.executor != "local":
        raise UserError("an nn.Module of this process runs with the local executor; save it as a checkpoint "
                        "directory (`mtlbench run --model DIR`) to run it on Ray")
    set_threads(options.threads, small_model=suite.tiny)
    cells = _grid(options, suite, profile, module)
    missing = _refuse_what_cannot_run(suite, cells, options, module)
    left_out = [c for c in cells if c.target.member in missing]
    cells = [c for c in cells if c.target.member not in missing]
    if missing:
        _say_missing(console, suite.name, missing, len(left_out))
    if options.keep_images:
        cells = [replace(cell, keep_images=True) for cell in cells]
    device = torch.device(options.device)
    _say_size(console, suite.name, profile.name, cells)
    summary = RunSummary(total=len(cells), missing_models=dict(missing), missing_cells=len(left_out))
    start = time.perf_counter()
    commit = git_commit()
    unpublished = {m.name for m in suite.unpublished()}
    # group by target (and data) so each model is loaded once; the store decides what is left to do
    groups: dict[tuple, list[Cell]] = defaultdict(list)
    for cell in cells:
        groups[cell.data_key].append(cell)
    _build_missing(suite, [g[0].target for g in groups.values()], options, console)
    owner = Owner.this_process()
    # a claim whose run sent no heartbeat for longer than a cell may take is abandoned
    stale_after = (options.cell_timeout if options.cell_timeout is not None else profile.cell_timeout) or 86400.0
    with ResultsStore(options.results) as store, watch_user_interrupts(), _released(store, owner), \
            contextlib.ExitStack() as stack:
        executor = make_executor(options, small_model=suite.tiny, in_memory=module is not None)
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
                        if (target.member not in unpublished and options.weights_dir is None
                                and not target.trained_defense):
                            raise
                        summary.missing_models[target.name] = str(exc)
                        bar.update(overall, advance=len(group))
                        continue
                    summary.keys += [cell.store_key(ctx) for cell in group]
                    todo = _todo(group, store, ctx, retry_failed=options.retry_failed)
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
                    yield index, todo, ctx

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
                    state.statuses["invalid"] += _spread_nondeterminism(state.group, state.ctx, store, summary,
                                                                        state.ran)
                    bar.console.print(state.line())
        for status in store.statuses(summary.keys).values():
            summary.stored[status] += 1
    summary.seconds = time.perf_counter() - start
    return summary


#: a grid this large gets a word of warning before it runs
LARGE_GRID = 500


def _say_size(console: Console, suite: str, profile: str, cells: list[Cell]) -> None:
    """The size of the request before anything runs: cells, and what they multiply out of."""
    if not cells:
        return
    targets = len({c.target for c in cells})
    attacks = len({c.attack.name for c in cells})
    eps = len({c.eps for c in cells})
    seeds = len({c.seed for c in cells})
    images = sorted({c.images for c in cells if c.images}) or ["all"]
    text = (f"{suite} [{profile}]: {len(cells)} cells ({targets} targets x {attacks} attacks x {eps} eps x {seeds} "
            f"seed{'s' if seeds > 1 else ''}, where each applies), {'/'.join(map(str, images))} images each; an "
            "estimate of the time left follows once the first cells are done")
    if len(cells) > LARGE_GRID:
        text += (". A large grid: on 2 CPU cores the tiny suites' cells take a few seconds each (PGD-10 and APGD "
                 "more); narrow it with --models, --attacks, --eps or --seeds")
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
