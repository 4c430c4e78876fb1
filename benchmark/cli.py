"""The ``mtlbench`` command (also ``python -m benchmark``).

Errors a user can cause (:class:`benchmark.errors.UserError`) print one message and exit with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from rich.console import Console
from rich.table import Table

from benchmark import __version__
from benchmark.errors import UserError

console = Console()
err_console = Console(stderr=True)

Handler = Callable[[argparse.Namespace], int]


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
    from benchmark.models.layouts import enumerate_layouts

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


# ---------------------------------------------------------------------- demo
def cmd_demo(args: argparse.Namespace) -> int:
    from benchmark.demo import run_demo

    index = run_demo(args.out, steps=args.steps, resolution=args.resolution, seed=args.seed,
                     device=_device(args.device), console=console)
    console.print(f"leaderboard: [bold]{index.resolve()}[/]")
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
    p.add_argument("--tasks", type=int, default=3, help="number of tasks (default 3)")
    p.add_argument("--blocks", type=int, default=5, help="number of branch blocks (default 5)")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--limit", type=int, default=60)
    p.set_defaults(func=cmd_layouts_list)

    models = sub.add_parser("models", help="branched multi-task models")
    msub = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = msub.add_parser("info", help="parameter counts of one layout")
    p.add_argument("layout", help="paper index, IND, AS or a layout such as '[[{0,1,2}],...]'")
    p.add_argument("--dataset", default="nyuv2")
    p.add_argument("--backbone", default="resnet34")
    p.add_argument("--width", type=float, default=1.0)
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
    p.add_argument("--rows", type=int, default=4)
    p.add_argument("--resolution", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="preview.png")
    p.set_defaults(func=cmd_data_preview)

    p = sub.add_parser("demo", help="train tiny models on synthetic scenes and render a leaderboard site")
    p.add_argument("--out", default="site", help="output directory of the site (default: site)")
    p.add_argument("--steps", type=int, default=200, help="training steps per model")
    p.add_argument("--resolution", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err_console.print("interrupted; finished results are kept")
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
