"""The ``mtlbench`` command (also ``python -m benchmark``).

Errors a user can cause (:class:`benchmark.errors.UserError`) print one message and exit with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.table import Table
from rich.text import Text

from benchmark.errors import UserError
from benchmark.paths import safe_name
from benchmark.progress import make_console
from benchmark.version import __version__

console = make_console()
err_console = make_console(stderr=True)

Handler = Callable[[argparse.Namespace], int]

#: `layouts list` enumerates every layout to index them: 5 tasks over 5 blocks have 7,556, 6 tasks 120,196
MAX_ENUMERATED_LAYOUTS = 200_000


THREADS_HELP = ("torch threads per process (default: 1 for the tiny suites, whose models are too small for more "
                "to pay off; else the cores this process may use)")


WORKERS_HELP = ("local worker processes (default: one per usable core for the tiny suites on the CPU, each with "
                "one thread; else 1)")


def _add_compute_options(p: argparse.ArgumentParser) -> None:
    """--device and --threads, as every command that trains or attacks takes them."""
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=_bounded(int, 1, 256), help=THREADS_HELP)


def _add_images_option(p: argparse.ArgumentParser) -> None:
    """--images, as every command that runs cells takes it."""
    p.add_argument("--images", type=_bounded(int, 1, 50_000), default=None, metavar="N",
                   help="evaluate the first N images of the split (default: the profile's; the paper profile: the "
                        "whole split), recorded in every cell")


def _add_timeout_option(p: argparse.ArgumentParser) -> None:
    """--cell-timeout, as every command that runs cells takes it."""
    p.add_argument("--cell-timeout", type=float, default=None, metavar="SECONDS",
                   help="wall-time limit of one cell, after which it is stored as failed and the run goes on "
                        "(default: the profile's cell_timeout, 1800 s unless it says otherwise; 0: no limit)")


def _bounded(kind: type, low: float, high: float | None = None):
    """An argparse type: ``kind`` (int or float) in [low, high], the range named in the message."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if value != value or value < low or (high is not None and value > high):
            span = f"[{low:g}, {high:g}]" if high is not None else f">= {low:g}"
            raise argparse.ArgumentTypeError(f"{text} is out of range: expected {span}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its message
    return parse


def _tasks_for(dataset: str) -> dict[str, int]:
    from benchmark.tasks import get_tasks

    try:
        return {t.name: t.channels for t in get_tasks(dataset)}
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _parse_layout(text: str, num_tasks: int):
    from benchmark.models.layouts import Layout, layout_from_index

    if text.strip().isdigit():
        return layout_from_index(int(text), num_tasks)
    return Layout.parse(text, num_tasks=num_tasks, num_blocks=5)


# ---------------------------------------------------------------------- layouts
def cmd_layouts_list(args: argparse.Namespace) -> int:
    from benchmark.models.layouts import count_layouts, enumerate_layouts

    total = count_layouts(args.tasks, args.blocks)
    if total > MAX_ENUMERATED_LAYOUTS:
        raise UserError(f"{args.tasks} tasks over {args.blocks} blocks have {total:,} layouts; listing enumerates "
                        f"them all, which is refused above {MAX_ENUMERATED_LAYOUTS:,} (fewer tasks or blocks)")
    layouts = enumerate_layouts(args.tasks, args.blocks)
    table = Table(title=f"TreeMTL layouts: {args.tasks} tasks, {args.blocks} blocks ({len(layouts)} in all)")
    table.add_column("index", justify="right")
    table.add_column("layout")
    table.add_column("shared blocks", justify="right")
    table.add_column("block copies", justify="right")
    for i, layout in enumerate(layouts[args.offset: args.offset + args.limit], start=args.offset):
        table.add_row(str(i), layout.name, str(layout.shared_blocks), str(layout.num_block_copies))
    console.print(table)
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from benchmark.models.branched import BranchedModel
    from benchmark.models.layouts import layout_index

    tasks = _tasks_for(args.dataset)
    layout = _parse_layout(args.layout, len(tasks))
    try:
        model = BranchedModel(layout, tasks, backbone=args.backbone, width=args.width)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    table = Table(title=f"{args.backbone} x{args.width} on {args.dataset}", show_header=False)
    table.add_row("layout", str(layout))
    table.add_row("paper index", str(layout_index(layout)))
    table.add_row("tasks", ", ".join(f"{t} ({c} ch)" for t, c in tasks.items()))
    table.add_row("backbone parameters", f"{model.backbone_parameters() / 1e6:.2f}M")
    table.add_row("head parameters", f"{model.head_parameters() / 1e6:.2f}M")
    console.print(table)
    return 0


# ---------------------------------------------------------------------- attacks
def cmd_attacks_list(args: argparse.Namespace) -> int:
    from benchmark.attacks import list_attacks
    from benchmark.attacks.registry import ATTACKS

    names = list_attacks(args.pattern)
    if not names:
        raise UserError(f"no attack matches {args.pattern!r}; try 'mtlbench attacks list'")
    table = Table(title=f"attacks ({len(names)})")
    table.add_column("attack")
    table.add_column("optimizer")
    table.add_column("objective")
    table.add_column("defined in")
    for name in names:
        opt, _, obj = name.partition(":")
        table.add_row(name, opt, obj or "(complete attack)", ATTACKS[opt].__module__)
    console.print(table)
    return 0


# ---------------------------------------------------------------------- data
def cmd_data_preview(args: argparse.Namespace) -> int:
    from benchmark.data import load_dataset, save_preview

    ds = load_dataset(args.dataset, args.split, root=args.data_root, size=max(args.rows, 1),
                      resolution=args.resolution, seed=args.seed)
    out = save_preview(ds, args.out, rows=args.rows, title=f"{args.dataset} ({args.split})")
    console.print(f"wrote {out}")
    return 0


# ---------------------------------------------------------------------- suites
def cmd_suites_list(args: argparse.Namespace) -> int:
    from benchmark.suites import list_suites, load_suite
    from benchmark.zoo.hub import is_built, shipped_weights

    table = Table(title="suites")
    for col in ("suite", "dataset", "backbone", "models", "weights", "profiles", "description"):
        table.add_column(col, overflow="fold")
    for name in list_suites():
        suite = load_suite(name)
        if suite.tiny:
            shipped = sum(shipped_weights(suite, m) is not None for m in suite.members)
            built = sum(is_built(suite, m) for m in suite.members) - shipped
            weights = (f"shipped with mtlbench ({shipped}/{len(suite.members)}, sha256 pinned)" if shipped
                       else f"built locally ({built}/{len(suite.members)} so far)")
        else:
            published = sum(m.published for m in suite.members)
            weights = f"Hub: {published}/{len(suite.members)} published"
        table.add_row(name, suite.data_source, suite.backbone, str(len(suite.members)), weights,
                      ", ".join(suite.profiles), suite.description)
    console.print(table)
    return 0


def cmd_suites_show(args: argparse.Namespace) -> int:
    from benchmark.suites import load_suite
    from benchmark.zoo.hub import is_built, shipped_weights

    suite = load_suite(args.suite)
    num_tasks = len(suite.tasks)
    console.print(Text.assemble((suite.name, "bold"), f": {suite.description}"))
    console.print(f"data {suite.data_source}, split {suite.split}, manifest {suite.path}"
                  + (f", mirror of {suite.mirror_of}" if suite.tiny else ""))
    if suite.selection:
        console.print(Text.assemble(("selection:", "italic"), f" {suite.selection.strip()}"))
    table = Table(title=f"{len(suite.members)} models")
    for col in ("model", "index", "layout", "backbone", "params (M)", "input", "weights"):
        table.add_column(col, overflow="fold")
    for m in suite.members:
        params = m.backbone_parameters(num_tasks)
        if suite.tiny:
            weights = (f"shipped, sha256 {m.sha256[:12]}" if shipped_weights(suite, m) is not None
                       else "built" if is_built(suite, m) else "built on first use")
        else:
            weights = f"{m.repo_id}@{m.revision[:10]}" if m.published else f"{m.repo_id} (not published)"
        table.add_row(m.name, "" if m.index is None else str(m.index), m.layout, f"{m.backbone} x{m.width:g}",
                      f"{params / 1e6:.2f}", f"{m.input_size}", weights)
    console.print(table)
    prof = Table(title="profiles")
    for col in ("profile", "eps (0-255)", "attacks", "steps", "images", "seeds"):
        prof.add_column(col, overflow="fold")
    for p in suite.profiles.values():
        prof.add_row(p.name, ", ".join(f"{e:g}" for e in p.eps), ", ".join(p.attacks),
                     ", ".join(f"{k}={v}" for k, v in p.steps.items()), "all" if p.eval_size is None else
                     str(p.eval_size), ", ".join(map(str, p.seeds)))
    console.print(prof)
    return 0


# ---------------------------------------------------------------------- zoo
def cmd_zoo_build(args: argparse.Namespace) -> int:
    from benchmark.suites import load_suite
    from benchmark.zoo.build import build_suite

    suite = load_suite(args.suite)
    suite.check_data_root(args.data_root)
    members = _csv(args.model, option="--model")
    if not suite.tiny and args.data_root is None:
        raise UserError(f"{suite.name} is a full suite trained on real data: use `mtlbench zoo train {suite.name} "
                        "--data-root DIR` (or `zoo import` for the paper authors' checkpoints)")
    out = args.out
    if args.ship:
        if not suite.tiny or args.out is not None or args.seed is not None:
            raise UserError("--ship trains a tiny suite's shipped members from the manifest's recipe (no --out, no "
                            "--seed)")
        from benchmark.zoo.hub import shipped_root

        out = shipped_root(suite)
    built = build_suite(suite, members, device=_device(args.device), data_root=args.data_root, console=err_console,
                        rebuild=args.rebuild, threads=args.threads, workers=args.workers,
                        pretrain=args.pretrain, out=out, seed=args.seed,
                        training={"steps": args.steps, "batch_size": args.batch_size, "init": args.init})
    if args.ship:
        _pin(suite, built)
    else:
        _compare_with_shipped(suite, built)
    _print_clean(suite, built, args.data_root)
    return 0


def _compare_with_shipped(suite, built: dict) -> None:
    """Say whether the members just trained are bit for bit the pinned shipped weights."""
    from benchmark.zoo.checkpoint import WEIGHTS_FILE, file_sha256
    from benchmark.zoo.hub import shipped_root

    shipped = shipped_root(suite).resolve()
    trained = {n: Path(d) for n, d in built.items()
               if suite.member(n).sha256 and shipped not in Path(d).resolve().parents}
    if not trained:
        return
    differ = [n for n, d in trained.items() if file_sha256(d / WEIGHTS_FILE) != suite.member(n).sha256]
    err_console.print(f"{len(trained) - len(differ)} of {len(trained)} model(s) trained here are bit for bit the "
                      "weights that ship with mtlbench (sha256 pinned in the manifest)"
                      + (f"; these differ: {', '.join(differ)} (float rounding differs between CPUs, thread counts "
                         "and torch builds)" if differ else "")
                      + f". Runs use the shipped weights; `--weights-dir {next(iter(trained.values())).parent}` "
                      "runs these.")


def _pin(suite, built: dict, defense: str | None = None) -> None:
    """Pin the sha256 of each shipped checkpoint in ``built`` in the suite's manifest."""
    from benchmark.zoo.checkpoint import WEIGHTS_FILE, file_sha256
    from benchmark.zoo.hub import pin_shipped

    for name, directory in built.items():
        pin_shipped(suite.path, name, file_sha256(Path(directory) / WEIGHTS_FILE), defense=defense)
    err_console.print(f"pinned the sha256 of {len(built)} shipped checkpoint(s) in {suite.path}")


def _warn_degenerate(suite, name: str, clean: dict, data_root: str | None) -> None:
    """Warn, before any attack is spent on it, about a checkpoint whose clean metrics are degenerate."""
    from benchmark.data import make_loader
    from benchmark.evaluation import degenerate_metrics
    from benchmark.zoo.build import clean_test_set

    problems = degenerate_metrics(clean, suite.tasks, make_loader(clean_test_set(suite, data_root=data_root), 32))
    if problems:
        err_console.print(Text(f"warning: {suite.name}/{name} has degenerate clean metrics ({'; '.join(problems)}): "
                               "attacks on it measure little; train it longer or check the checkpoint",
                               style="yellow"), soft_wrap=True)


def _print_clean(suite, built: dict, data_root: str | None = None) -> None:
    from benchmark.zoo.checkpoint import read_config

    table = Table(title=f"{suite.name}: clean metrics of the local checkpoints")
    table.add_column("model")
    rows = []
    for name, directory in built.items():
        info = read_config(directory)
        rows.append((name, info.clean_metrics))
        if info.clean_metrics:
            _warn_degenerate(suite, name, info.clean_metrics, data_root)
    metric_cols = [(t, k) for t, ms in (rows[0][1].items() if rows else []) for k in list(ms)[:2]]
    for t, k in metric_cols:
        table.add_column(f"{t} {k}", justify="right")
    for name, metrics in rows:
        table.add_row(name, *(f"{metrics.get(t, {}).get(k, float('nan')):.3f}" for t, k in metric_cols))
    console.print(table)


def cmd_zoo_train(args: argparse.Namespace) -> int:
    from benchmark.suites import load_suite

    suite = load_suite(args.suite)
    if not suite.tiny and args.data_root is None:
        raise UserError(f"training {suite.name} needs the real {suite.data_source} data: pass --data-root DIR "
                        "(directory format in the README, \"Running the full suites\")")
    return cmd_zoo_build(args)


def cmd_zoo_import(args: argparse.Namespace) -> int:
    from benchmark.data import make_loader
    from benchmark.evaluation import evaluate
    from benchmark.suites import load_suite
    from benchmark.zoo.build import clean_test_set, member_model
    from benchmark.zoo.checkpoint import CheckpointInfo, save_checkpoint
    from benchmark.zoo.hub import local_checkpoint_dir
    from benchmark.zoo.paper import convert_paper_state_dict, load_paper_checkpoint, paper_checkpoint_path

    suite = load_suite(args.suite)
    tasks = [t.name for t in suite.tasks]
    names = _csv(args.model, option="--model") or [m.name for m in suite.members]
    imported, absent = 0, []
    for name in names:
        member = suite.member(name)
        model = member_model(suite, member)
        src = paper_checkpoint_path(args.weight_root, model.layout, tasks)
        if not src.exists():
            absent.append(f"{member.name} ({src})")
            continue
        model.load_state_dict(convert_paper_state_dict(load_paper_checkpoint(src), model))
        out = (local_checkpoint_dir(suite, member) if args.out is None else f"{args.out}/{member.name}")
        clean = {}
        if args.data_root is not None:  # the clean metrics, and a warning before any attack if they are degenerate
            model.eval()
            clean = evaluate(model, suite.tasks, make_loader(clean_test_set(suite, data_root=args.data_root), 16))
            _warn_degenerate(suite, member.name, clean, args.data_root)
        info = CheckpointInfo(model=model.config, dataset=suite.data_source, suite=suite.name, member=member.name,
                              input_size=member.input_size, source=f"paper checkpoint {src}",
                              training={"source": "the paper authors' checkpoint (TreeMTL MTSeqModel)"},
                              clean_metrics=clean)
        digest = save_checkpoint(model, info, out)
        console.print(f"{member.name}: {src} -> {out} (sha256 {digest[:12]}...)")
        imported += 1
    if absent:
        err_console.print(f"no paper checkpoint for {len(absent)} model(s): " + "; ".join(absent))
    if not imported:
        raise UserError(f"nothing imported from {args.weight_root}: expected <layout_idx>/{'_'.join(tasks)}.model "
                        "files (the paper code's weight root: one folder per layout index, one torch checkpoint per "
                        "task combination)")
    console.print(f"imported {imported} checkpoint(s)")
    return 0


def cmd_zoo_push(args: argparse.Namespace) -> int:
    from benchmark.suites import load_suite
    from benchmark.zoo.checkpoint import read_config
    from benchmark.zoo.hub import pin_in_manifest, push_checkpoint

    info = read_config(args.directory)
    repo_id = args.repo_id
    suite = None
    if args.manifest:
        suite = load_suite(args.manifest)
        member = suite.member(args.model or info.member)
        repo_id = repo_id or member.repo_id
    if not repo_id:
        raise UserError("give --repo-id OWNER/NAME (or --manifest with a member that names its repo_id)")
    revision, digest = push_checkpoint(args.directory, repo_id, token=args.token, private=args.private)
    console.print(f"pushed {args.directory} to {repo_id}")
    console.print(f'repo_id = "{repo_id}"\nrevision = "{revision}"\nsha256 = "{digest}"')
    if suite is not None:
        pin_in_manifest(suite.path, member.name, repo_id=repo_id, revision=revision, sha256=digest)
        load_suite(suite.path)  # the edited manifest must still validate
        console.print(f"pinned {member.name} in {suite.path}")
    return 0


# ---------------------------------------------------------------------- run
def _csv(text: str | None, kind=str, option: str = "") -> list | None:
    """A comma-separated option's values (None when the option was not given); an option given
    with nothing in it is an error, not a silent empty run."""
    if text is None:
        return None
    name = f"{option} " if option else ""
    try:
        values = [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{name}{text!r}: cannot read it as a comma-separated list of {kind.__name__}s") from None
    if not values:
        raise UserError(f"{name}{text!r} names nothing: give comma-separated values, or leave the option out for "
                        "the default")
    return values


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.runner import RunOptions, run
    from benchmark.runner.run import NoWeightsError

    _load_plugins(args.plugins)
    options = RunOptions(suite=args.suite, profile=args.profile, attacks=_csv(args.attacks, option="--attacks"),
                         eps=_csv(args.eps, float, option="--eps"), models=_csv(args.models, option="--models"),
                         seeds=_csv(args.seeds, int, option="--seeds"), device=_device(args.device),
                         results=args.results, weights_dir=args.weights_dir, data_root=args.data_root,
                         executor=args.executor, ray_address=args.address, gpus_per_cell=args.gpus_per_cell,
                         cell_timeout=_timeout(args.cell_timeout), defenses=_csv(args.defenses, option="--defenses"),
                         eot_samples=args.eot, score_draws=args.draws, model_dir=args.model, model_name=args.name,
                         threads=args.threads, workers=args.workers, images=args.images)
    try:
        summary = run(options, console=err_console)
    except NoWeightsError as exc:
        table = Table(title=f"{args.suite}: no model has weights on this machine")
        for col in ("model", "Hub repo (weights not published yet)"):
            table.add_column(col, overflow="fold")
        for name, repo in exc.missing.items():
            table.add_row(name, repo)
        err_console.print(table)
        err_console.print(Text(exc.ways[0].upper() + exc.ways[1:]), soft_wrap=True)
        return 2
    done = dict(summary.done)
    ran = ", ".join(f"{n} {s}" for s, n in sorted(done.items())) or "nothing left to run"
    console.print(f"{summary.total} cells: {summary.skipped} already in {args.results}; {ran} "
                  f"({summary.seconds:.0f} s)")
    if summary.elsewhere:
        err_console.print(f"{summary.elsewhere} cell(s) were being computed by another run on {args.results} and "
                          "were left to it; run again when it has finished to have them all")
    for name, why in summary.missing_models.items():
        err_console.print(Text.assemble((f"skipped {name}", "yellow"), f": {why}"))
    if summary.bad:
        err_console.print(Text.assemble((f"{summary.bad} cell(s) failed or were invalid", "red"),
                                        "; their reasons are in the store "
                                        f"(`mtlbench results show {args.results} --status failed,invalid`)"))
    return min(summary.bad, 99)


def cmd_defenses_list(args: argparse.Namespace) -> int:
    from benchmark.defenses import list_defenses

    table = Table(title="defenses (name:argument; 'none' is the undefended model)")
    for col in ("defense", "kind", "argument (default)", "randomised", "differentiable", "attacked with",
                "defined in"):
        table.add_column(col, overflow="fold")
    for cls in list_defenses():
        randomised, differentiable = getattr(cls, "randomised", False), getattr(cls, "differentiable", True)
        how = ", ".join(filter(None, ["EOT" if randomised else "", "BPDA" if not differentiable else ""])) or "exact"
        table.add_row(cls.name, cls.kind, f"{cls.argument_help} ({cls.default_argument})" if cls.argument_help else "",
                      "yes" if randomised else "no", "yes" if differentiable else "no",
                      how if cls.kind == "inference" else "(new weights)", cls.__module__)
    console.print(table)
    return 0


def cmd_defend(args: argparse.Namespace) -> int:
    from benchmark.defenses import canonical_defense
    from benchmark.suites import load_suite
    from benchmark.zoo.checkpoint import read_config
    from benchmark.zoo.defend import defend_suite, shipped_defended_dir

    overrides = {"steps": args.steps, "attack_steps": args.attack_steps, "tau": args.tau, "eps": args.eps,
                 "checkpoint_every": args.checkpoint_every, "seed": args.seed}
    suite = load_suite(args.suite)
    suite.check_data_root(args.data_root)
    spec = canonical_defense(args.defense)
    out = args.out
    if args.ship:
        if not suite.tiny or args.out is not None:
            raise UserError("--ship trains a tiny suite's shipped defended checkpoints (no --out)")
        out = shipped_defended_dir(suite, spec)
    done = defend_suite(suite, spec, _csv(args.models, option="--models"), device=_device(args.device),
                        data_root=args.data_root, weights_dir=args.weights_dir, rebuild=args.rebuild,
                        restart=args.restart, console=err_console, threads=args.threads, out=out, **overrides)
    if args.ship:
        _pin(suite, done, defense=spec)
    table = Table(title=f"{spec}: defended checkpoints and their clean metrics")
    table.add_column("model")
    table.add_column("trained", justify="right")
    rows = [(name, read_config(d)) for name, d in done.items()]
    metric_cols = [(t, k) for t, ms in (rows[0][1].clean_metrics.items() if rows else []) for k in list(ms)[:1]]
    for t, k in metric_cols:
        table.add_column(f"{t} {k}", justify="right")
    table.add_column("directory", overflow="fold")
    for name, info in rows:
        table.add_row(name, f"{info.training.get('seconds', float('nan')):.0f} s",
                      *(f"{info.clean_metrics.get(t, {}).get(k, float('nan')):.3f}" for t, k in metric_cols),
                      str(done[name]))
    console.print(table)
    return 0


def _timeout(value: float | None) -> float | None:
    from benchmark.suites import MAX_CELL_TIMEOUT

    if value is not None and not 0 <= value <= MAX_CELL_TIMEOUT:
        raise UserError(f"--cell-timeout {value:g}: expected seconds in [0, {MAX_CELL_TIMEOUT}] (0: no limit)")
    return value


def cmd_results_export(args: argparse.Namespace) -> int:
    from benchmark.runner import ResultsStore

    with ResultsStore(args.results, readonly=True) as store:
        out = store.export(args.out)
    console.print(f"wrote {out}")
    return 0


def cmd_results_show(args: argparse.Namespace) -> int:
    from benchmark.defenses.checks import evaluation_flags, target_checks
    from benchmark.runner import ResultsStore

    statuses = _csv(args.status, option="--status") or ["valid", "invalid", "failed"]
    with ResultsStore(args.results, readonly=True) as store:
        every = store.cells()
        infos = {(row["suite"], row["model"]): row for row in store.models()}
    cells = [c for c in every if c.status in statuses]
    flags: dict[tuple[str, str], list[str]] = {}
    for suite in {c.suite for c in every}:
        mine = [c for c in every if c.suite == suite]
        checked = target_checks(mine, {m: infos.get((suite, m), {}) for m in {c.model for c in mine}})
        flags.update({(suite, m): evaluation_flags(v) for m, v in checked.items()})
    table = Table(title=f"{args.results}: {len(cells)} cells")
    for col in ("suite", "model", "attack", "eps", "seed", "status", "ARP", "s/img", "fwd", "bwd", "reason"):
        table.add_column(col, overflow="fold")
    for c in cells[: args.limit]:
        reason = c.reason or ("evaluation unreliable (see below)" if flags.get((c.suite, c.model)) else "")
        table.add_row(c.suite, c.model, c.attack, f"{c.eps:g}", str(c.seed), c.status,
                      "" if c.arp is None else f"{c.arp:.2f}", f"{c.time_per_image_s:.4f}", str(c.forward_passes),
                      str(c.backward_passes), reason)
    console.print(table)
    for (suite, model), lines in sorted(flags.items()):
        if lines:
            console.print(Text(f"{suite}/{model}: evaluation unreliable: {'; '.join(lines)}"), soft_wrap=True)
    return 0


# ---------------------------------------------------------------------- submit / verify
def cmd_submit(args: argparse.Namespace) -> int:
    from benchmark.runner.bundle import submit

    _load_plugins(args.plugins)
    out = args.out or "bundle-" + safe_name(args.attack)
    result = submit(_csv(args.attack, option="attack"), suite=args.suite, profile=args.profile, out=out,
                    models=_csv(args.models, option="--models"), eps=_csv(args.eps, float, option="--eps"),
                    seeds=_csv(args.seeds, int, option="--seeds"), device=_device(args.device),
                    threads=args.threads, workers=args.workers, data_root=args.data_root, as_zip=args.zip,
                    cell_timeout=_timeout(args.cell_timeout), images=args.images, console=err_console)
    if result.bundle is None:
        err_console.print(Text.assemble(("submission failed", "bold red"), f": {len(result.failures)} problem(s), "
                                        f"no bundle written; report: {result.report}"))
        for line in result.failures[:20]:
            err_console.print(Text(f"  {line}"))
        return 1
    console.print(Text.assemble(f"bundle of {result.cells} cells written in {result.seconds:.0f} s: ",
                                (str(result.bundle), "bold"), f"\nverify it with `mtlbench verify {result.bundle}`"))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from benchmark.runner.verify import verify_bundle

    if args.plugins:
        _load_plugins(args.plugins)
    verdict = verify_bundle(args.bundle, suite=args.suite, device=_device(args.device), data_root=args.data_root,
                            arp_tolerance=args.tolerance, metric_tolerance=args.metric_tolerance,
                            recount=args.recount, console=err_console)
    names = ", ".join(verdict.manifest.get("attack", {}).get("names", [])) or "?"
    if verdict.verified:
        console.print(Text.assemble(("verified", "bold green"), f": {args.bundle} ({names}): {verdict.checked} cells "
                                    f"re-scored on {verdict.manifest['suite']['name']}; every metric within "
                                    f"{args.metric_tolerance:g} relative, ARP within {args.tolerance:g} points; "
                                    f"self-reported (not verified): {', '.join(verdict.self_reported)}"))
        for attack, note in verdict.recounted.items():
            console.print(Text(f"  {attack}: {note}"))
        return 0
    console.print(Text.assemble(("rejected", "bold red"), f": {args.bundle} ({names}): "
                                + ("no cells; " if not verdict.cells and not verdict.reasons else "")
                                + f"{len(verdict.reasons)} problem(s); {verdict.checked} of {len(verdict.cells)} "
                                "cells check out"))
    for line in verdict.reasons[: 50 if not args.verbose else None]:
        console.print(Text(f"  {line}"))
    return 1


# ---------------------------------------------------------------------- check
def cmd_check(args: argparse.Namespace) -> int:
    from benchmark.runner.check import CheckOptions, check

    _load_plugins(args.plugins)
    opts = CheckOptions(baseline=args.baseline, suite=args.suite, profile=args.profile,
                        attacks=_csv(args.attacks, option="--attacks"), models=_csv(args.models, option="--models"),
                        eps=_csv(args.eps, float, option="--eps"), seeds=_csv(args.seeds, int, option="--seeds"),
                        reference=args.reference, tolerance=args.tolerance, alpha=args.alpha,
                        speed_tolerance=args.speed_tolerance, passes_tolerance=args.passes_tolerance,
                        update=args.update, device=_device(args.device), threads=args.threads, workers=args.workers,
                        cell_timeout=_timeout(args.cell_timeout), images=args.images)
    report = check(opts, console=err_console)
    fmt = _fmt
    table = Table(title=f"mtlbench check: {report.new['suite']} [{report.new['profile']}], "
                        f"{len(report.new['models'])} model(s) x eps {', '.join(f'{e:g}' for e in report.new['eps'])} "
                        f"x seed(s) {', '.join(map(str, report.new['seeds']))}, {report.new['images']} images; "
                        f"reference {report.new['reference']}")
    for col in ("attack", "ARP before", "after", "change", "paired per-image change [95% CI]", "p", "passes/img",
                "time ratio", "verdict"):
        table.add_column(col, justify="left" if col in ("attack", "verdict") else "right")

    def change(before: float | None, after: float | None) -> str:
        return fmt(None if before is None or after is None else after - before, "+.2f")

    for a in report.attacks:
        verdict = Text("ok", style="green") if a.ok else Text("FAIL: " + "; ".join(a.failures), style="red")
        table.add_row(a.attack, fmt(a.before), fmt(a.after), change(a.before, a.after),
                      f"{fmt(a.delta, '+.2f')} [{fmt(a.low, '+.2f')}, {fmt(a.high, '+.2f')}]", fmt(a.p, ".4f"),
                      f"{fmt(a.passes_before, 'g')} -> {fmt(a.passes_after, 'g')}",
                      f"{fmt(a.ratio_before)} -> {fmt(a.ratio_after)}", verdict)
        if args.verbose:
            for m in a.per_model:
                table.add_row(f"  {m['model']}", fmt(m["before"]), fmt(m["after"]), change(m["before"], m["after"]),
                              f"{fmt(m['delta'], '+.2f')} [{fmt(m['low'], '+.2f')}, {fmt(m['high'], '+.2f')}]",
                              fmt(m["p"], ".4f"), "", "", "")
    console.print(table)
    console.print(f"change: of the mean cell ARP; paired change and p: bootstrap over (model, image) of the images' "
                  f"scores (jackknife pseudo-values of the cell ARP), one-sided; an attack fails when its ARP dropped "
                  f"by more than {args.tolerance:g} with p < {args.alpha:g}; time ratio: median over cells of its "
                  f"time over {report.new['reference']}'s; {report.seconds:.0f} s")
    if report.written is not None:
        console.print(Text.assemble("baseline written: ", (str(report.written), "bold")))
        return 0
    return 0 if report.ok else 1


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def _load_plugins(plugins: str | None) -> None:
    """Import the plugin modules of ``--plugins`` (and ``MTLBENCH_PLUGINS``) here; the executors
    hand them to their worker processes with every task."""
    from benchmark.registry import load_plugin_modules, plugin_modules

    load_plugin_modules(plugin_modules(plugins))


# ---------------------------------------------------------------------- leaderboard
def cmd_leaderboard(args: argparse.Namespace) -> int:
    from leaderboard import render_leaderboard

    if args.bundles is None and not Path(args.results).exists():
        raise UserError(f"results database {args.results} does not exist; run `mtlbench run` first (or pass "
                        "--bundles DIR)")
    index = render_leaderboard(args.results, args.out, default_eps=args.eps, bundles=args.bundles,
                               device=_device(args.device), suites=_csv(args.suite, option="--suite"),
                               console=err_console)
    console.print(Text.assemble("leaderboard: ", (str(index.resolve()), "bold")))
    return 0


# ---------------------------------------------------------------------- report
def cmd_report_reproduction(args: argparse.Namespace) -> int:
    from benchmark.runner.store import ResultsStore
    from leaderboard.aggregate import build_board
    from leaderboard.reproduction import reproduction

    with ResultsStore(args.results, readonly=True) as store:
        board = build_board(store)
        findings = reproduction(board, store.cells())
    if not findings:
        raise UserError(f"{args.results} holds no results; run `mtlbench run` first")
    for suite, rep in findings.items():
        table = Table(title=f"{suite}: the paper's findings ({rep['counts']['reproduced']} of {len(rep['findings'])} "
                            "reproduced)")
        for col in ("finding", "paper", "ours", "verdict"):
            table.add_column(col)
        for f in rep["findings"]:
            ours = f["ours"] if isinstance(f["ours"], str) else _finding_numbers(f)
            for other, d in (f.get("paired") or {}).items():
                if d.get("pairs"):
                    ours += (f"; GB-MTA - {other} {d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] "
                             f"({d['pairs']} pairs)")
            paper = f["paper"] if isinstance(f["paper"], str) else _finding_numbers(f, "paper")
            verdict = Text(f["status"], style="green" if f["status"] == "reproduced" else "red")
            table.add_row(f"{f['id']}: {f['claim']}", paper, ours, verdict)
        console.print(table)
    return 0


def cmd_report_compare(args: argparse.Namespace) -> int:
    from leaderboard.compare import compare_results

    result = compare_results(args.results, eps=args.eps)
    table = Table(title=f"{result['suite']}, eps {result['eps']:g}: {len(result['models'])} models in every run "
                        f"({', '.join(result['models'])})")
    for col in ("run", "top 3 (mean ARP)", "GB-MTA - TOTAL, paired [95% CI]", "transferability by shared blocks"):
        table.add_column(col, overflow="fold")
    for run in result["runs"]:
        top = ", ".join(f"{a} {run['ranking'][a]:.2f}" for a in run["top3"])
        d = run["paired"]
        paired = (f"{d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] ({d['pairs']} pairs)"
                  if d.get("pairs") and d.get("low") is not None and d["low"] == d["low"] else "–")
        trends = "; ".join(f"{a}: " + ", ".join(f"{lvl}:{v:.2f}" for lvl, v in t["by_level"].items())
                           + f" (rho {t['spearman']:+.2f})" for a, t in run["transfer"].items())
        table.add_row(run["path"], top, paired, trends)
    console.print(table)
    for (i, j), tau in result["tau"].items():
        console.print(f"Kendall's tau between the rankings of {result['runs'][i]['path']} and "
                      f"{result['runs'][j]['path']} ({len(result['ranked_attacks'])} attacks): {tau:+.3f}",
                      highlight=False)
    return 0


def _finding_numbers(finding: dict, which: str = "ours") -> str:
    """A finding's numbers by sharing level (transferability) or its FAT summary, as one line."""
    if finding["id"] == "fat":
        return (f"{finding['gb_mta_strongest']}; below the undefended model: {'yes' if finding['lower'] else 'no'}"
                if which == "ours" else "Table 3")
    values = finding[which]
    text = ", ".join(f"{level}L {value:.2f}" for level, value in values.items())
    return f"{finding.get('attack', '')} {text}".strip() if which == "ours" else text


# ---------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from benchmark.demo import run_demo

    index = run_demo(args.out, suite=args.suite, profile=args.profile, results=args.results,
                     device=_device(args.device), console=err_console, threads=args.threads)
    console.print(Text.assemble("leaderboard: ", (str(index.resolve()), "bold")))
    return 0


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    return name


# ---------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtlbench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mtlbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    layouts = sub.add_parser("layouts", help="the TreeMTL design space of branched layouts")
    lsub = layouts.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = lsub.add_parser("list", help="list layouts with their paper index")
    p.add_argument("--tasks", type=_bounded(int, 1, 64), default=3, help="number of tasks (default 3)")
    p.add_argument("--blocks", type=_bounded(int, 1, 64), default=5, help="number of branch blocks (default 5)")
    p.add_argument("--offset", type=_bounded(int, 0), default=0)
    p.add_argument("--limit", type=_bounded(int, 1), default=60)
    p.set_defaults(func=cmd_layouts_list)

    models = sub.add_parser("models", help="branched multi-task models")
    msub = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = msub.add_parser("info", help="parameter counts of one layout")
    p.add_argument("layout", help="paper index, IND, AS or a layout such as '[[{0,1,2}],...]'")
    p.add_argument("--dataset", default="nyuv2")
    p.add_argument("--backbone", default="resnet34")
    p.add_argument("--width", type=_bounded(float, 0.01, 8.0), default=1.0)
    p.set_defaults(func=cmd_model_info)

    attacks = sub.add_parser("attacks", help="registered attacks (optimizer x objective)")
    asub = attacks.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = asub.add_parser("list", help="list attacks, e.g. 'apgd:*' or '*:gb-mta'")
    p.add_argument("pattern", nargs="?", default="*")
    p.set_defaults(func=cmd_attacks_list)

    data = sub.add_parser("data", help="data sets: synthetic scenes and real NYUv2/Taskonomy")
    dsub = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = dsub.add_parser("preview", help="write a PNG grid of images and every task's ground truth")
    p.add_argument("--dataset", default="synthetic-nyuv2",
                   help="synthetic-nyuv2, synthetic-taskonomy, nyuv2 or taskonomy (the last two need --data-root)")
    p.add_argument("--split", default="test")
    p.add_argument("--data-root", default=None, help="directory of a real data set")
    p.add_argument("--rows", type=_bounded(int, 1, 64), default=4)
    p.add_argument("--resolution", type=_bounded(int, 8, 1024), default=None)
    p.add_argument("--seed", type=_bounded(int, 0, 2**63 - 1), default=0)
    p.add_argument("--out", default="preview.png")
    p.set_defaults(func=cmd_data_preview)

    suites = sub.add_parser("suites", help="the standard suites (manifests in suites/*.toml)")
    ssub = suites.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ssub.add_parser("list", help="list the suites")
    p.set_defaults(func=cmd_suites_list)
    p = ssub.add_parser("show", help="members and profiles of a suite")
    p.add_argument("suite", help="suite name or path of a .toml manifest")
    p.set_defaults(func=cmd_suites_show)

    zoo = sub.add_parser("zoo", help="checkpoints: build, train, import, push")
    zsub = zoo.add_subparsers(dest="action", required=True, metavar="ACTION")
    zoo_actions = (("build", "build (train) the tiny mirror's models that are not built yet", cmd_zoo_build),
                   ("train", "train suite members (real data for full suites: --data-root)", cmd_zoo_train))
    for action, text, func in zoo_actions:
        p = zsub.add_parser(action, help=text)
        p.add_argument("suite")
        p.add_argument("--model", help="comma-separated member names (default: all)")
        p.add_argument("--data-root", help="directory of the real data set")
        _add_compute_options(p)
        p.add_argument("--workers", type=_bounded(int, 1, 256), help=WORKERS_HELP)
        p.add_argument("--rebuild", action="store_true", help="train again even if a checkpoint exists")
        p.add_argument("--pretrain", action="store_true",
                       help="tiny suites: pre-train the members' common backbone here instead of taking the one "
                            "shipped with mtlbench (with --rebuild, the members are trained again from it)")
        p.add_argument("--out", help="write checkpoints to OUT/<model> instead of the cache (a build there goes on "
                                     "where it stopped)")
        p.add_argument("--seed", type=_bounded(int, 0, 1_000_000), help="another training seed of the recipe "
                       "(other heads' draw, batch order and dropout; the same pre-trained backbone); needs --out")
        p.add_argument("--ship", action="store_true", help="tiny suites, in a source checkout: train into the weights "
                       "folder that ships with mtlbench and pin each member's sha256 in the manifest")
        p.add_argument("--steps", type=_bounded(int, 1, 10_000_000), help="override the recipe's training steps")
        p.add_argument("--batch-size", type=_bounded(int, 1, 65_536),
                       help="override the recipe's batch size (memory: one step of the full ResNet34 AS at batch 16 "
                            "and 321x321 takes about 12 GB on the CPU)")
        p.add_argument("--init", choices=("imagenet", "pretext", "scratch"),
                       help="where every member starts (default: the recipe's; the full suites: imagenet)")
        p.set_defaults(func=func)
    p = zsub.add_parser("import", help="convert the paper authors' checkpoints (<layout_idx>/<tasks>.model)")
    p.add_argument("suite")
    p.add_argument("weight_root", help="the paper code's weight root directory")
    p.add_argument("--model", help="comma-separated member names (default: all)")
    p.add_argument("--out", help="write checkpoints to OUT/<model> instead of the cache")
    p.add_argument("--data-root", help="the real data set: measure each checkpoint's clean metrics (recorded in its "
                                       "config) and warn when they are degenerate")
    p.set_defaults(func=cmd_zoo_import)
    p = zsub.add_parser("push", help="upload a checkpoint directory to the Hugging Face Hub")
    p.add_argument("directory")
    p.add_argument("--repo-id", help="OWNER/NAME (default: the member's repo_id in --manifest)")
    p.add_argument("--manifest", help="suite name or manifest path: pin the pushed revision and sha256 there")
    p.add_argument("--model", help="member name in the manifest (default: the checkpoint's own)")
    p.add_argument("--token", help="Hub token (default: the logged-in one)")
    p.add_argument("--private", action="store_true")
    p.set_defaults(func=cmd_zoo_push)

    p = sub.add_parser("run", help="evaluate a suite's grid of models x attacks x eps x seeds",
                       description="Evaluate a suite's grid of cells into a results database (resumable). Exit "
                                   "status: 0 when every cell is valid, else the number of failed or invalid cells "
                                   "(at most 99); a usage error exits 2 before any cell runs.")
    p.add_argument("--suite", default="tiny-nyuv2-resnet34", help="suite name or manifest path")
    p.add_argument("--profile", default="quick", help="profile of the suite (quick, paper, ...)")
    p.add_argument("--attacks", help="comma-separated attacks or patterns, e.g. 'pgd:gb-mta,fgsm:*' "
                                     "(default: the profile's)")
    p.add_argument("--eps", help="comma-separated eps in 0-255 units (default: the profile's)")
    p.add_argument("--models", help="comma-separated member names (default: all)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the profile's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--results", default="results.db", help="SQLite results database (created or resumed)")
    p.add_argument("--weights-dir", help="local checkpoint directories DIR/<model>/ (Hub format)")
    p.add_argument("--data-root", help="directory of the real data set (full suites)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--address", help="Ray cluster address (default: start a local one)")
    p.add_argument("--gpus-per-cell", type=_bounded(float, 0.01, 64), default=1.0,
                   help="GPUs per Ray task (a fraction shares one)")
    p.add_argument("--plugins", help="comma-separated modules or .py files that register attacks")
    _add_timeout_option(p)
    _add_images_option(p)
    p.add_argument("--defenses", help="comma-separated targets per model: 'none' (undefended), inference-time "
                                      "defenses and trained ones, e.g. 'none,bitdepth:4,fat:pgd:gb-mta' (default: "
                                      "the profile's); a trained defense needs `mtlbench defend` first")
    p.add_argument("--draws", type=_bounded(int, 1, 1000), default=None, metavar="N",
                   help="draws of a randomised defense its images are scored over (their metrics pooled: the "
                        "defense's expected metric; default: the profile's score_draws, 8 unless it says otherwise)")
    p.add_argument("--eot", type=_bounded(int, 1, 1000), default=None, metavar="N",
                   help="EOT draws per model call when attacking a randomised defense (default: the profile's "
                        "eot_samples, 4 unless it says otherwise)")
    p.add_argument("--model", metavar="DIR", help="an external model: a Hub-format checkpoint directory "
                                                  "(model.safetensors + config.json), run instead of the members")
    p.add_argument("--name", help="the external model's name in results (default: the directory's name)")
    p.add_argument("--threads", type=_bounded(int, 1, 256), help=THREADS_HELP)
    p.add_argument("--workers", type=_bounded(int, 1, 256), help=WORKERS_HELP)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("defend", help="adversarially train suite members with a training defense (FAT)",
                       description="Train suite members with a training defense, e.g. fat:pgd:gb-mta (FAT with "
                                   "GB-MTA-PGD), into new checkpoints in the same Hub format. A killed run started "
                                   "again resumes from its last checkpoint. The recipe is the suite's [fat] table; "
                                   "the options below override it.")
    p.add_argument("suite", help="suite name or manifest path")
    p.add_argument("--defense", default="fat:pgd:gb-mta", help="training defense (default: fat:pgd:gb-mta)")
    p.add_argument("--models", help="comma-separated member names (default: all)")
    p.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    p.add_argument("--attack-steps", type=int, help="K: the attack's steps (default: the recipe's)")
    p.add_argument("--tau", type=int, help="FAT's tau: calls after a sample is fooled (default: the recipe's)")
    p.add_argument("--eps", type=float, help="eps in 0-255 units (default: the recipe's, 8)")
    p.add_argument("--seed", type=int, help="training seed (default: the recipe's)")
    p.add_argument("--checkpoint-every", type=int, help="steps between resume checkpoints (default: the recipe's)")
    _add_compute_options(p)
    p.add_argument("--data-root", help="directory of the real data set (full suites)")
    p.add_argument("--weights-dir", help="local checkpoint directories DIR/<model>/ (Hub format)")
    p.add_argument("--rebuild", action="store_true", help="train again even if a defended checkpoint exists")
    p.add_argument("--restart", action="store_true", help="ignore a resume checkpoint and train from the start")
    p.add_argument("--out", help="write the checkpoints to OUT/<model> instead of the cache")
    p.add_argument("--ship", action="store_true", help="tiny suites, in a source checkout: train into the weights "
                   "folder that ships with mtlbench and pin each checkpoint's sha256 in the manifest")
    p.set_defaults(func=cmd_defend)

    defenses = sub.add_parser("defenses", help="registered defenses")
    dsub2 = defenses.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = dsub2.add_parser("list", help="list defenses: kind, argument, randomised, differentiable")
    p.set_defaults(func=cmd_defenses_list)

    results = sub.add_parser("results", help="read a results database")
    rsub = results.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = rsub.add_parser("export", help="write the cells as CSV or JSON")
    p.add_argument("results")
    p.add_argument("out", help="output file, .csv or .json")
    p.set_defaults(func=cmd_results_export)
    p = rsub.add_parser("show", help="print cells")
    p.add_argument("results")
    p.add_argument("--status", help="comma-separated statuses (valid, invalid, failed)")
    p.add_argument("--limit", type=_bounded(int, 1), default=200)
    p.set_defaults(func=cmd_results_show)

    p = sub.add_parser("submit", help="run an attack through the validator and a suite's protocol into a result bundle",
                       description="Validate an attack on every output, check its determinism, run it under a suite "
                                   "profile on the suite's members and write a result bundle (manifest, cells, "
                                   "adversarial images) that anyone can re-score with `mtlbench verify`. Exit 1 with "
                                   "a report of what failed, and no bundle, when a cell is invalid or failed.")
    p.add_argument("attack", help="comma-separated attacks or patterns, e.g. 'cospgd:gb-mta' or 'cospgd:*'")
    p.add_argument("--suite", default="tiny-nyuv2-resnet34")
    p.add_argument("--profile", default="quick")
    p.add_argument("--out", help="bundle directory (default: bundle-<attack>)")
    p.add_argument("--zip", action="store_true", help="write OUT.zip instead of a directory")
    p.add_argument("--models", help="comma-separated members (default: the profile's)")
    p.add_argument("--eps", help="comma-separated eps (default: the profile's)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the profile's)")
    p.add_argument("--data-root", help="directory of the real data set (full suites)")
    p.add_argument("--plugins", help="comma-separated modules or .py files that register attacks")
    _add_compute_options(p)
    p.add_argument("--workers", type=_bounded(int, 1, 256), help=WORKERS_HELP)
    _add_timeout_option(p)
    _add_images_option(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("verify", help="re-score a result bundle's adversarial images against the pinned weights",
                       description="Check every claim of a result bundle: its files and their sizes, the types of "
                                   "its manifest and cells, that its cells are exactly the grid its manifest declares, "
                                   "the weights revision, image ids, [0, 1], the eps-ball, and every metric, ARP and "
                                   "per-image score re-scored. Time, memory and passes are self-reported "
                                   "(--recount verifies the passes). Exit 0 when verified, 1 when rejected (each "
                                   "reason names the cell and the field), 2 on a usage error.")
    p.add_argument("bundle", help="bundle directory or .zip")
    p.add_argument("--suite", help="the suite's manifest path, for a bundle of a suite that is not a standard one "
                                   "(default: the suite the bundle names)")
    p.add_argument("--tolerance", type=_bounded(float, 0), default=0.01, help="ARP points (default 0.01)")
    p.add_argument("--metric-tolerance", type=_bounded(float, 0), default=1e-4,
                   help="relative tolerance of each metric (default 1e-4)")
    p.add_argument("--data-root", help="directory of the real data set (full suites)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("-v", "--verbose", action="store_true", help="every reason, not the first 50")
    p.add_argument("--recount", action="store_true", help="run each attack whose code is installed here (with the "
                   "bundle's sources) again on one cell per model: its counted passes must be the bundle's")
    p.add_argument("--plugins", help="comma-separated modules or .py files that register the bundle's attacks "
                   "(for --recount)")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("check", help="CI gate: fail when an attack got weaker (paired test) or slower than a baseline",
                       description="Run the attacks of a baseline again on the same images, models, eps and seeds "
                                   "and compare with a paired bootstrap over (model, image). Exit status 1 when an "
                                   "attack got weaker by more than --tolerance ARP points with p < --alpha, needs "
                                   "more passes per image, got slower relative to the reference attack by more than "
                                   "--speed-tolerance, or gives invalid outputs; 0 otherwise; 2 on a usage error.")
    p.add_argument("--baseline", required=True, help="baseline JSON (written by --update)")
    p.add_argument("--suite", help="suite (default: the baseline's; tiny-nyuv2-resnet34 for a new baseline)")
    p.add_argument("--profile", help="profile for steps and images (default: the baseline's; quick)")
    p.add_argument("--attacks", help="comma-separated attacks (default: the baseline's)")
    p.add_argument("--models", help="comma-separated members (default: the baseline's; the profile's for a new one)")
    p.add_argument("--eps", help="comma-separated eps (default: the baseline's; the profile's for a new one)")
    p.add_argument("--seeds", help="comma-separated seeds (default: the baseline's)")
    p.add_argument("--reference", help="attack whose time per image is the unit of speed (default: pgd:total)")
    p.add_argument("--tolerance", type=_bounded(float, 0), default=1.0,
                   help="ARP points an attack may lose (default 1)")
    p.add_argument("--alpha", type=_bounded(float, 1e-9, 1), default=0.05, help="significance level (default 0.05)")
    p.add_argument("--speed-tolerance", type=_bounded(float, 0), default=0.5,
                   help="share the time ratio to the reference may grow (default 0.5: +50%%)")
    p.add_argument("--passes-tolerance", type=_bounded(float, 0), default=0.0,
                   help="share the counted passes per image may grow (default 0)")
    p.add_argument("--update", action="store_true", help="write this run as the new baseline")
    p.add_argument("--plugins", help="comma-separated modules or .py files that register attacks")
    p.add_argument("-v", "--verbose", action="store_true", help="a row per model too")
    _add_compute_options(p)
    p.add_argument("--workers", type=_bounded(int, 1, 256), help=WORKERS_HELP)
    _add_timeout_option(p)
    _add_images_option(p)
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("leaderboard", help="render the static HTML leaderboard from a results database")
    p.add_argument("--results", default="results.db")
    p.add_argument("--out", default="site", help="output directory (default: site)")
    p.add_argument("--eps", type=_bounded(float, 0, 255), default=8.0,
                   help="eps shown first (default 8, else the closest run)")
    p.add_argument("--bundles", metavar="DIR", help="a folder of result bundles: each is re-scored; verified ones "
                                                    "join the ranking, rejected ones are listed as self-reported")
    p.add_argument("--device", default="auto", help="device that re-scores the bundles: auto, cpu or cuda")
    p.add_argument("--suite", help="comma-separated manifests of suites that are not standard ones, which bundles "
                                   "may name (a bundle names its suite; it never points at a file)")
    p.set_defaults(func=cmd_leaderboard)

    report = sub.add_parser("report", help="reports from a results database")
    rsub2 = report.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = rsub2.add_parser("reproduction", help="the paper's findings beside ours, each reproduced or not")
    p.add_argument("--results", default="results.db")
    p.set_defaults(func=cmd_report_reproduction)
    p = rsub2.add_parser("compare", help="do the conclusions hold across runs? (rankings, Kendall's tau, GB-MTA - "
                                         "TOTAL, transferability trend) of several results databases")
    p.add_argument("results", nargs="+", help="results databases of the same suite (e.g. models of other seeds)")
    p.add_argument("--eps", type=_bounded(float, 0, 255), default=8.0, help="eps compared (default 8, else the "
                                                                           "closest every run has)")
    p.set_defaults(func=cmd_report_compare)

    p = sub.add_parser("demo", help="build the tiny suite, run its quick profile, render the leaderboard site")
    p.add_argument("--out", default="site", help="output directory of the site (default: site)")
    p.add_argument("--suite", default="tiny-nyuv2-resnet34")
    p.add_argument("--profile", default="quick")
    p.add_argument("--results", default="results.db", help="results database (default: results.db)")
    _add_compute_options(p)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        err_console.print(Text.assemble(("error:", "bold red"), f" {exc}"))
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted; finished results are kept")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
