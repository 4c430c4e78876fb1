"""`mtlbench leaderboard`, `report`, `demo`, `transfer`: what the results say."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table
from rich.text import Text

from benchmark.cli.common import (
    add_compute_options,
    bounded,
    console,
    csv_list,
    err_console,
    resolve_device,
)
from benchmark.errors import UserError


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from leaderboard import render_leaderboard

    if args.bundles is None and not Path(args.results).exists():
        raise UserError(f"results database {args.results} does not exist; run `mtlbench run` first (or pass "
                        "--bundles DIR)")
    if args.bundles is not None:
        from benchmark.threads import set_threads

        set_threads(args.threads, small_model=True)
    index = render_leaderboard(args.results, args.out, default_eps=args.eps, bundles=args.bundles,
                               device=resolve_device(args.device), suites=csv_list(args.suite, option="--suite"),
                               console=err_console)
    console.print(Text.assemble("leaderboard: ", (str(index.resolve()), "bold")))
    return 0


def cmd_report_reproduction(args: argparse.Namespace) -> int:
    from benchmark.runner.store import ResultsStore
    from leaderboard.aggregate import build_board
    from leaderboard.reproduction import reproduction

    with ResultsStore(args.results, readonly=True) as store:
        board = build_board(store)
        findings = reproduction(board, store.cells())
    if not findings:
        raise UserError(f"{args.results} holds no results; run `mtlbench run` first")
    shown = [(suite, view, rep) for suite, views in findings.items() for view, rep in views.items()
             if args.profile is None or view == args.profile or view.startswith(f"{args.profile}, ")]
    if not shown:
        known = sorted({view for views in findings.values() for view in views})
        raise UserError(f"--profile {args.profile}: no results of that profile in {args.results}; it has "
                        f"{', '.join(known)}")
    for suite, view, rep in shown:
        table = Table(title=f"{suite}, profile {view}: the paper's findings ({rep['counts']['reproduced']} of "
                            f"{len(rep['findings'])} reproduced; each profile's verdicts from its own results)")
        for col in ("finding", "paper", "ours", "verdict"):
            table.add_column(col)
        for f in rep["findings"]:
            ours = f["ours"] if isinstance(f["ours"], str) else _finding_numbers(f)
            for other, d in (f.get("paired") or {}).items():
                if d.get("pairs"):
                    ours += (f"; GB-MTA - {other} {d['delta']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}] "
                             f"({d['pairs']} pairs)")
            paper = f["paper"] if isinstance(f["paper"], str) else _finding_numbers(f, "paper")
            verdict = Text(f["status"], style={"reproduced": "green", "not reproduced": "red"}.get(f["status"],
                                                                                                 "yellow"))
            table.add_row(f"{f['id']}: {f['claim']}", paper, ours, verdict)
        console.print(table)
    return 0


def cmd_report_compare(args: argparse.Namespace) -> int:
    from leaderboard.compare import compare_results

    result = compare_results(args.results, eps=args.eps, profile=args.profile)
    table = Table(title=f"{result['suite']}, eps {result['eps']:g}: {len(result['models'])} models in every run "
                        f"({', '.join(result['models'])}); profile {' / '.join(dict.fromkeys(result['views']))}")
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
        value = (f"{tau:+.3f}" if tau == tau else "undefined (fewer than two attacks ranked in both, or a ranking "
                                                  "with all values equal)")
        console.print(f"Kendall's tau between the rankings of {result['runs'][i]['path']} and "
                      f"{result['runs'][j]['path']} ({len(result['ranked_attacks'])} attacks): {value}",
                      highlight=False)
    for name, values in result["differences"].items():
        err_console.print(Text(f"warning: the runs differ in {name}: " + " vs ".join(map(str, values))
                               + "; their conclusions are not the same experiment", style="yellow"), soft_wrap=True)
    return 0


def _finding_numbers(finding: dict, which: str = "ours") -> str:
    """A finding's numbers by sharing level (transferability) or its FAT summary, as one line."""
    if finding["id"] == "fat":
        return (f"{finding['gb_mta_strongest']}; below the undefended model: {'yes' if finding['lower'] else 'no'}"
                if which == "ours" else "Table 3")
    values = finding[which]
    text = ", ".join(f"{level}L {value:.2f}" for level, value in values.items())
    return f"{finding.get('attack', '')} {text}".strip() if which == "ours" else text


def cmd_demo(args: argparse.Namespace) -> int:
    from benchmark.demo import run_demo

    index = run_demo(args.out, suite=args.suite, profile=args.profile, results=args.results,
                     device=resolve_device(args.device), console=err_console, threads=args.threads)
    console.print(Text.assemble("leaderboard: ", (str(index.resolve()), "bold")))
    return 0


def cmd_transfer(args: argparse.Namespace) -> int:
    """The cross-model transfer matrix: the suite's transfer profile run, rendered, and its finding."""
    from benchmark.runner import RunOptions, run
    from benchmark.runner.store import ResultsStore
    from benchmark.suites import load_suite
    from leaderboard import render_leaderboard
    from leaderboard.aggregate import build_board

    suite = load_suite(args.suite)
    profile = suite.profile(args.profile)
    if not profile.transfer_from:
        raise UserError(f"profile {args.profile!r} of {suite.name} crafts on no member (no transfer_from); its "
                        "transfer profile is 'transfer'")
    summary = run(RunOptions(suite=args.suite, profile=args.profile, results=args.results,
                             models=csv_list(args.models, option="--models"), device=resolve_device(args.device),
                             threads=args.threads, workers=args.workers), console=err_console)
    with ResultsStore(args.results, readonly=True) as store:
        board = build_board(store)
    view = board["suites"].get(suite.name, {}).get("views", {}).get(args.profile)
    index = render_leaderboard(args.results, args.out, console=err_console)
    for block in (view or {}).get("by_eps", {}).values():
        mt = block.get("model_transfer")
        for attack, found in (mt or {}).get("by_attack", {}).items():
            table = Table(title=f"{suite.name}, {attack} at eps {block['eps']:g}: relative transfer by shared blocks")
            for column in ("shared blocks", "pairs", "mean relative transfer"):
                table.add_column(column, justify="right")
            for g in found["by_shared"]:
                table.add_row(str(g["shared"]), str(g["pairs"]), f"{g['mean']:.3f}")
            console.print(table)
            console.print(Text.assemble("transfer falls as layouts share fewer blocks? ", (found["finding"]["text"],
                                                                                             "bold")))
    console.print(Text.assemble("leaderboard: ", (str(index.resolve()), "bold"), " (transfer across models: the "
                                f"{args.profile} profile's page)"))
    return 0 if not summary.bad else 1


def register(sub: argparse._SubParsersAction) -> None:
    """Add the sub-commands of this group to ``mtlbench``'s parser."""
    p = sub.add_parser("leaderboard", help="render the static HTML leaderboard from a results database")
    p.add_argument("--results", default="results.db")
    p.add_argument("--out", default="site", help="output directory (default: site)")
    p.add_argument("--eps", type=bounded(float, 0, 255), default=8.0,
                   help="eps shown first (default 8, else the closest run)")
    p.add_argument("--bundles", metavar="DIR", help="a folder of result bundles: each is re-scored; verified ones "
                                                    "join the ranking, rejected ones are listed as self-reported")
    p.add_argument("--device", default="auto", help="device that re-scores the bundles: auto, cpu or cuda")
    p.add_argument("--suite", help="comma-separated manifests of suites that are not standard ones, which bundles "
                                   "may name (a bundle names its suite; it never points at a file)")
    p.add_argument("--threads", type=bounded(int, 1, 256), help="torch threads re-scoring the bundles (default 1; an "
                                                               "honest bundle verifies at any thread count)")
    p.set_defaults(func=cmd_leaderboard)

    report = sub.add_parser("report", help="reports from a results database")
    rsub2 = report.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = rsub2.add_parser("reproduction", help="the paper's findings beside ours, each reproduced or not")
    p.add_argument("--results", default="results.db")
    p.add_argument("--profile", help="only this profile's verdicts (default: every profile, each on its own)")
    p.set_defaults(func=cmd_report_reproduction)
    p = rsub2.add_parser("compare", help="do the conclusions hold across runs? (rankings, Kendall's tau, GB-MTA - "
                                         "TOTAL, transferability trend) of several results databases")
    p.add_argument("results", nargs="+", help="results databases of the same suite (e.g. models of other seeds)")
    p.add_argument("--eps", type=bounded(float, 0, 255), default=8.0, help="eps compared (default 8, else the "
                                                                           "closest every run has)")
    p.add_argument("--profile", help="the profile compared (default: the first database's headline profile)")
    p.set_defaults(func=cmd_report_compare)

    p = sub.add_parser("transfer", help="cross-model transfer: each attack crafted on every member, scored on "
                                        "every other; the matrix page and its finding")
    p.add_argument("--suite", default="tiny-nyuv2-resnet34", help="suite name or manifest path (default: "
                                                                  "tiny-nyuv2-resnet34)")
    p.add_argument("--profile", default="transfer", help="the profile with transfer_from (default: transfer)")
    p.add_argument("--models", help="comma-separated members, the sources and targets (default: every member)")
    p.add_argument("--results", default="results.db")
    p.add_argument("--out", default="site", help="output directory of the leaderboard (default: site)")
    add_compute_options(p)
    p.add_argument("--workers", type=bounded(int, 1, 256), help="local worker processes (default: one per usable "
                                                                "core)")
    p.set_defaults(func=cmd_transfer)

    p = sub.add_parser("demo", help="build the tiny suite, run its quick profile, render the leaderboard site")
    p.add_argument("--out", default="site", help="output directory of the site (default: site)")
    p.add_argument("--suite", default="tiny-nyuv2-resnet34")
    p.add_argument("--profile", default="quick")
    p.add_argument("--results", default="results.db", help="results database (default: results.db)")
    add_compute_options(p)
    p.set_defaults(func=cmd_demo)
