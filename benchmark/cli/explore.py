"""`mtlbench layouts`, `models`, `attacks`, `data`, `suites`, `defenses`: what there is."""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from benchmark.cli.common import (
    bounded,
    console,
    parse_layout,
    print_table,
    tasks_for,
)
from benchmark.enums import DefenseKind
from benchmark.errors import UserError

#: `layouts list` enumerates every layout to index them: 5 tasks over 5 blocks have 7,556, 6 tasks 120,196
MAX_ENUMERATED_LAYOUTS = 200_000


def cmd_layouts_list(args: argparse.Namespace) -> int:
    from benchmark.models.layouts import count_layouts, enumerate_layouts

    total = count_layouts(args.tasks, args.blocks)
    if total > MAX_ENUMERATED_LAYOUTS:
        raise UserError(f"{args.tasks} tasks over {args.blocks} blocks have {total:,} layouts; listing enumerates "
                        f"them all, which is refused above {MAX_ENUMERATED_LAYOUTS:,} (fewer tasks or blocks)")
    layouts = enumerate_layouts(args.tasks, args.blocks)
    print_table(f"TreeMTL layouts: {args.tasks} tasks, {args.blocks} blocks ({len(layouts)} in all)",
                ["index", "layout", "shared blocks", "block copies"],
                ((i, layout.name, layout.shared_blocks, layout.num_block_copies)
                 for i, layout in enumerate(layouts[args.offset: args.offset + args.limit], start=args.offset)),
                right=("index", "shared blocks", "block copies"))
    return 0


def cmd_model_info(args: argparse.Namespace) -> int:
    from benchmark.models.branched import BranchedModel
    from benchmark.models.layouts import layout_index

    tasks = tasks_for(args.dataset)
    layout = parse_layout(args.layout, len(tasks))
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


def cmd_attacks_list(args: argparse.Namespace) -> int:
    from benchmark.attacks import list_attacks
    from benchmark.attacks.registry import ATTACKS

    names = list_attacks(args.pattern)
    if not names:
        raise UserError(f"no attack matches {args.pattern!r}; try 'mtlbench attacks list'")
    rows = []
    for name in names:
        opt, _, obj = name.partition(":")
        rows.append((name, opt, obj or "(complete attack)", ATTACKS[opt].__module__))
    print_table(f"attacks ({len(names)})", ["attack", "optimizer", "objective", "defined in"], rows)
    return 0


def cmd_data_preview(args: argparse.Namespace) -> int:
    from benchmark.data import load_dataset, save_preview

    ds = load_dataset(args.dataset, args.split, root=args.data_root, size=max(args.rows, 1),
                      resolution=args.resolution, seed=args.seed)
    out = save_preview(ds, args.out, rows=args.rows, title=f"{args.dataset} ({args.split})")
    console.print(f"wrote {out}")
    return 0


def cmd_suites_list(args: argparse.Namespace) -> int:
    from benchmark.suites import list_suites, load_suite
    from benchmark.zoo.locate import is_built, shipped_weights

    rows = []
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
        rows.append((name, suite.data_source, suite.backbone, len(suite.members), weights, ", ".join(suite.profiles),
                     suite.description))
    print_table("suites", ["suite", "dataset", "backbone", "models", "weights", "profiles", "description"], rows)
    return 0


def cmd_suites_show(args: argparse.Namespace) -> int:
    from benchmark.suites import load_suite
    from benchmark.zoo.locate import is_built, shipped_weights

    suite = load_suite(args.suite)
    num_tasks = len(suite.tasks)
    console.print(Text.assemble((suite.name, "bold"), f": {suite.description}"))
    console.print(f"data {suite.data_source}, split {suite.split}, manifest {suite.path}"
                  + (f", tiny mirror of {suite.mirror_of}" if suite.mirror_of else ""))
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


def cmd_defenses_list(args: argparse.Namespace) -> int:
    from benchmark.defenses import list_defenses

    rows = []
    for cls in list_defenses():
        randomised, differentiable = getattr(cls, "randomised", False), getattr(cls, "differentiable", True)
        how = ", ".join(filter(None, ["EOT" if randomised else "", "BPDA" if not differentiable else ""])) or "exact"
        rows.append((cls.name, cls.kind, f"{cls.argument_help} ({cls.default_argument})" if cls.argument_help else "",
                     "yes" if randomised else "no", "yes" if differentiable else "no",
                     how if cls.kind == DefenseKind.INFERENCE else "(new weights)", cls.__module__))
    print_table("defenses (name:argument; 'none' is the undefended model)",
                ["defense", "kind", "argument (default)", "randomised", "differentiable", "attacked with",
                 "defined in"], rows)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the sub-commands of this group to ``mtlbench``'s parser."""
    layouts = sub.add_parser("layouts", help="the TreeMTL design space of branched layouts")
    lsub = layouts.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = lsub.add_parser("list", help="list layouts with their paper index")
    p.add_argument("--tasks", type=bounded(int, 1, 64), default=3, help="number of tasks (default 3)")
    p.add_argument("--blocks", type=bounded(int, 1, 64), default=5, help="number of branch blocks (default 5)")
    p.add_argument("--offset", type=bounded(int, 0), default=0)
    p.add_argument("--limit", type=bounded(int, 1), default=60)
    p.set_defaults(func=cmd_layouts_list)

    models = sub.add_parser("models", help="branched multi-task models")
    msub = models.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = msub.add_parser("info", help="parameter counts of one layout")
    p.add_argument("layout", help="paper index, IND, AS or a layout such as '[[{0,1,2}],...]'")
    p.add_argument("--dataset", default="nyuv2")
    p.add_argument("--backbone", default="resnet34")
    p.add_argument("--width", type=bounded(float, 0.01, 8.0), default=1.0)
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
    p.add_argument("--rows", type=bounded(int, 1, 64), default=4)
    p.add_argument("--resolution", type=bounded(int, 8, 1024), default=None)
    p.add_argument("--seed", type=bounded(int, 0, 2**63 - 1), default=0)
    p.add_argument("--out", default="preview.png")
    p.set_defaults(func=cmd_data_preview)

    suites = sub.add_parser("suites", help="the standard suites (manifests in suites/*.toml)")
    ssub = suites.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = ssub.add_parser("list", help="list the suites")
    p.set_defaults(func=cmd_suites_list)
    p = ssub.add_parser("show", help="members and profiles of a suite")
    p.add_argument("suite", help="suite name or path of a .toml manifest")
    p.set_defaults(func=cmd_suites_show)

    defenses = sub.add_parser("defenses", help="registered defenses")
    dsub2 = defenses.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = dsub2.add_parser("list", help="list defenses: kind, argument, randomised, differentiable")
    p.set_defaults(func=cmd_defenses_list)
