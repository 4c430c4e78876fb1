"""What every command group of the ``mtlbench`` command shares: the consoles, argument
types and options, and the small parsers of comma-separated values."""

from __future__ import annotations

import argparse

from benchmark.errors import UserError
from benchmark.progress import make_console

console = make_console()
err_console = make_console(stderr=True)

#: exit statuses of ``mtlbench`` (``mtlbench run --help`` and the README list them)
EXIT_OK = 0
EXIT_BAD_CELLS = 1  # a cell of the request is stored failed or invalid (whichever run computed it)
EXIT_USAGE = 2  # a user error: a bad option, manifest, file; or nothing of the request can run
EXIT_INCOMPLETE = 3  # models of the request were not run (no weights on this machine): named up front
EXIT_INTERRUPTED = 130  # Ctrl-C; finished cells are kept
EXIT_CODES_HELP = ("exit status: 0 every cell of the request is valid; 1 a cell of the request is stored failed or "
                   "invalid (by this run or an earlier one: `mtlbench results show DB --status failed,invalid`); "
                   "2 a usage error, or nothing of the request can run; 3 models without weights were left out "
                   "(named before the run); 130 interrupted (finished cells are kept)")

THREADS_HELP = ("torch threads per process (default: 1 for the tiny suites, whose models are too small for more "
                "to pay off; else the cores this process may use)")


WORKERS_HELP = ("local worker processes (default: one per usable core for the tiny suites on the CPU, each with "
                "one thread; else 1); with --executor ray, the most Ray workers (default: as many as the cluster's "
                "GPUs, or CPUs, hold)")


def add_compute_options(p: argparse.ArgumentParser) -> None:
    """--device and --threads, as every command that trains or attacks takes them."""
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=bounded(int, 1, 256), help=THREADS_HELP)


def add_images_option(p: argparse.ArgumentParser) -> None:
    """--images, as every command that runs cells takes it."""
    p.add_argument("--images", type=bounded(int, 1, 50_000), default=None, metavar="N",
                   help="evaluate the first N images of the split (default: the profile's; the paper profile: the "
                        "whole split), recorded in every cell")


def add_timeout_option(p: argparse.ArgumentParser) -> None:
    """--cell-timeout, as every command that runs cells takes it."""
    p.add_argument("--cell-timeout", type=float, default=None, metavar="SECONDS",
                   help="wall-time limit of one cell, after which it is stored as failed and the run goes on "
                        "(default: the profile's cell_timeout, 1800 s unless it says otherwise; 0: no limit)")


def bounded(kind: type, low: float, high: float | None = None):
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


def tasks_for(dataset: str) -> dict[str, int]:
    from benchmark.tasks import get_tasks

    try:
        return {t.name: t.channels for t in get_tasks(dataset)}
    except ValueError as exc:
        raise UserError(str(exc)) from None


def parse_layout(text: str, num_tasks: int):
    from benchmark.models.layouts import Layout, layout_from_index

    if text.strip().isdigit():
        return layout_from_index(int(text), num_tasks)
    return Layout.parse(text, num_tasks=num_tasks, num_blocks=5)


def csv_list(text: str | None, kind=str, option: str = "") -> list | None:
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


def cell_timeout(value: float | None) -> float | None:
    from benchmark.suites import MAX_CELL_TIMEOUT

    if value is not None and not 0 <= value <= MAX_CELL_TIMEOUT:
        raise UserError(f"--cell-timeout {value:g}: expected seconds in [0, {MAX_CELL_TIMEOUT}] (0: no limit)")
    return value


def fmt_number(value: float | None, fmt: str = ".2f") -> str:
    return "-" if value is None or value != value else format(value, fmt)


def load_plugins(plugins: str | None) -> None:
    """Import the plugin modules of ``--plugins`` (and ``MTLBENCH_PLUGINS``) here; the executors
    hand them to their worker processes with every task."""
    from benchmark.registry import load_plugin_modules, plugin_modules

    load_plugin_modules(plugin_modules(plugins))


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    return name


def add_selection_options(p: argparse.ArgumentParser, *, defaults: str = "the profile's",
                          suite: str | None = "tiny-nyuv2-resnet34", profile: str | None = "quick") -> None:
    """The options of every command that runs a suite's cells (run, submit, check), declared once:
    --suite --profile --models --eps --seeds --plugins --device --threads --workers. ``defaults``
    says where an option left out comes from; ``suite``/``profile``: their defaults (None: decided
    by the command)."""
    p.add_argument("--suite", default=suite, help="suite name or manifest path"
                   + ("" if suite else f" (default: {defaults}; tiny-nyuv2-resnet34 for a new one)"))
    p.add_argument("--profile", default=profile, help="profile of the suite for steps and images (quick, paper, ...)"
                   + ("" if profile else f"; default: {defaults}, quick for a new one"))
    p.add_argument("--models", help=f"comma-separated member names (default: {defaults})")
    p.add_argument("--eps", help=f"comma-separated eps in 0-255 units (default: {defaults})")
    p.add_argument("--seeds", help=f"comma-separated seeds (default: {defaults})")
    p.add_argument("--plugins", help="comma-separated modules or .py files that register attacks")
    add_compute_options(p)
    p.add_argument("--workers", type=bounded(int, 1, 256), help=WORKERS_HELP)


def selection(args: argparse.Namespace) -> dict:
    """What :func:`add_selection_options` declared, parsed (the plugins imported here)."""
    load_plugins(args.plugins)
    return {"models": csv_list(args.models, option="--models"), "eps": csv_list(args.eps, float, option="--eps"),
            "seeds": csv_list(args.seeds, int, option="--seeds"), "device": resolve_device(args.device),
            "threads": args.threads, "workers": args.workers}


def print_table(title: str, columns: list[str], rows, *, right: tuple[str, ...] = ()) -> None:
    """Every ``... list`` command's output: a table with ``columns`` (those in ``right`` right-aligned,
    the others folding long values) and one row per item of ``rows``."""
    from rich.table import Table

    table = Table(title=title)
    for col in columns:
        table.add_column(col, justify="right" if col in right else "left", overflow="fold")
    for row in rows:
        table.add_row(*(str(v) for v in row))
    console.print(table)
