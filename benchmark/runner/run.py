"""``mtlbench run``: expand a suite's grid, skip the cells the store already has, evaluate the
rest with an executor, and write each finished cell at once."""

from __future__ import annotations

import datetime as _dt
import functools
import time
from collections import defaultdict
from dataclasses import dataclass, field

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from benchmark import __version__
from benchmark.attacks.validate import WeightSnapshot, model_fingerprint
from benchmark.data import load_dataset, make_loader
from benchmark.errors import UserError
from benchmark.evaluation import evaluate, to_device
from benchmark.provenance import git_commit
from benchmark.runner.cells import Cell, CellContext, expand_grid
from benchmark.runner.store import ResultsStore, cell_key
from benchmark.suites import Suite, load_suite
from benchmark.tasks import get_tasks
from benchmark.zoo.build import load_model
from benchmark.zoo.hub import MissingWeightsError

__all__ = ["RunOptions", "RunSummary", "load_context", "run"]

#: evaluation images of a synthetic split when a profile says "the whole split"
SYNTHETIC_SPLIT_SIZE = 256


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


@dataclass
class RunSummary:
    total: int = 0
    skipped: int = 0  # already in the store
    done: dict[str, int] = field(default_factory=lambda: defaultdict(int))  # status -> count
    missing_models: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def bad(self) -> int:
        return self.done["failed"] + self.done["invalid"]


def eval_batches(suite: Suite, profile_name: str, *, device: torch.device, data_root: str | None,
                 input_size: int) -> list[dict[str, torch.Tensor]]:
    profile = suite.profile(profile_name)
    if suite.synthetic:
        ds = load_dataset(suite.data, suite.split, size=profile.eval_size or SYNTHETIC_SPLIT_SIZE,
                          resolution=input_size, seed=0)
    else:
        if data_root is None:
            raise UserError(f"suite {suite.name} is evaluated on the real {suite.data} data: pass --data-root DIR "
                            "(directory format in the README)")
        ds = load_dataset(suite.data, suite.split, root=data_root, size=profile.eval_size,
                          resolution=input_size)
    return [to_device(b, device) for b in make_loader(ds, profile.batch_size)]


def load_context(suite: Suite, model_name: str, profile: str, *, device: torch.device, data_root: str | None,
                 weights_dir: str | None, store: ResultsStore | None = None, console: Console | None = None,
                 git_commit: str = "") -> CellContext:
    """Model, evaluation batches and clean metrics of one suite member (clean metrics are read
    from / written to the store's cache when a store is given)."""
    member = suite.member(model_name)
    model, info = load_model(suite, member, weights_dir=weights_dir, device=device, console=console)
    for p in model.parameters():
        p.requires_grad_(False)
    fingerprint = model_fingerprint(model)
    revision = member.revision if info.origin == "hub" else f"local-sha256:{fingerprint[:16]}"
    tasks = get_tasks(suite.dataset)
    batches = eval_batches(suite, profile, device=device, data_root=data_root, input_size=member.input_size)
    images = sum(b["image"].shape[0] for b in batches)
    clean_key = cell_key({"suite": suite.name, "model": member.name, "model_revision": revision, "data": suite.data,
                          "split": suite.split, "images": images, "input_size": member.input_size,
                          "code_version": __version__, "device": device.type})
    clean = store.get_clean(clean_key) if store is not None else None
    if clean is None:
        clean = evaluate(model, tasks, batches, device=device)
        if store is not None:
            store.put_clean(clean_key, suite=suite.name, model=member.name, model_revision=revision, split=suite.split,
                            images=images, metrics=clean, device=str(device),
                            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if store is not None:
        layout = model.layout
        store.put_model(suite.name, member.name, revision, {
            "layout": member.layout, "paper_index": member.index, "backbone": member.backbone, "width": member.width,
            "input_size": member.input_size, "backbone_params": model.backbone_parameters(),
            "shared_blocks": layout.shared_blocks, "block_copies": layout.num_block_copies,
            "layout_sets": layout.to_json(), "tasks": [t.name for t in tasks], "dataset": suite.dataset,
            "data": suite.data, "clean": clean, "repo_id": member.repo_id,
            "mean_branch_block": sum(layout.branch_block(a, b) for a in range(len(tasks))
                                     for b in range(a + 1, len(tasks))) / max(1, len(tasks) * (len(tasks) - 1) / 2),
        })
    return CellContext(model=model, tasks=tasks, batches=batches, clean=clean, snapshot=WeightSnapshot(model),
                       model_revision=revision, data=suite.data, split=suite.split, input_size=member.input_size,
                       device=device, git_commit=git_commit)


def _todo(cells: list[Cell], store: ResultsStore, ctx_for) -> list[Cell]:
    """Cells whose key (which includes the weights version) is not in the store yet."""
    done = store.done_keys()
    out = []
    for cell in cells:
        ctx = ctx_for(cell.model)
        if ctx is None:
            continue
        if cell_key(ctx.cell_config(cell)) not in done:
            out.append(cell)
    return out


def run(options: RunOptions, *, console: Console | None = None) -> RunSummary:
    console = console or Console(stderr=True)
    suite = load_suite(options.suite)
    profile = suite.profile(options.profile)
    cells = expand_grid(suite, profile, attacks=options.attacks, eps=options.eps, models=options.models,
                        seeds=options.seeds)
    device = torch.device(options.device)
    summary = RunSummary(total=len(cells))
    start = time.perf_counter()
    commit = git_commit()
    unpublished = {m.name for m in suite.unpublished()}
    with ResultsStore(options.results) as store:

        @functools.lru_cache(maxsize=1)
        def ctx_for(model_name: str) -> CellContext | None:
            try:
                return load_context(suite, model_name, options.profile, device=device, data_root=options.data_root,
                                    weights_dir=options.weights_dir, store=store, console=console,
                                    git_commit=commit)
            except MissingWeightsError as exc:
                if model_name not in unpublished and options.weights_dir is None:
                    raise
                summary.missing_models[model_name] = str(exc)
                return None

        # group by model so each model is loaded once; the store decides what is left to do
        by_model: dict[str, list[Cell]] = defaultdict(list)
        for cell in cells:
            by_model[cell.model].append(cell)
        if options.executor == "ray":
            from benchmark.runner.executors import RayExecutor

            executor = RayExecutor(address=options.ray_address, gpus_per_cell=options.gpus_per_cell)
        else:
            from benchmark.runner.executors import LocalExecutor

            executor = LocalExecutor()
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("ETA"), TimeRemainingColumn(), console=console) as bar:
            overall = bar.add_task(f"{suite.name} [{profile.name}]", total=len(cells))
            for model_name, model_cells in by_model.items():
                todo = _todo(model_cells, store, ctx_for)
                skipped = len(model_cells) - len(todo)
                summary.skipped += skipped if model_name not in summary.missing_models else 0
                bar.update(overall, advance=skipped if model_name not in summary.missing_models else len(model_cells))
                if not todo:
                    continue
                t0, arps, statuses = time.perf_counter(), [], defaultdict(int)
                for result in executor.run(todo, ctx_for(model_name), options):
                    store.put(result)
                    summary.done[result.status] += 1
                    statuses[result.status] += 1
                    if result.arp is not None:
                        arps.append(result.arp)
                    bar.update(overall, advance=1)
                mean = f"mean ARP {sum(arps) / len(arps):6.2f}" if arps else "no valid cell"
                bad = ", ".join(f"{n} {s}" for s, n in statuses.items() if s != "valid")
                bar.console.print(f"{model_name:>12}: {len(todo)} cells in {time.perf_counter() - t0:5.1f} s, "
                                  f"{mean}" + (f", [red]{bad}[/]" if bad else ""))
    summary.seconds = time.perf_counter() - start
    return summary
