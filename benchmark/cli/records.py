"""`mtlbench records`: the results of record, recomputed from the code, checked, and rendered as the
site of record."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table
from rich.text import Text

from benchmark.cli.common import EXIT_BAD_CELLS, EXIT_OK, bounded, console, csv_list, err_console
from benchmark.errors import UserError

#: the tiny suites, which have a record (their weights ship, so anyone recomputes it)
RECORD_SUITES = ("tiny-nyuv2-resnet34", "tiny-nyuv2-mobilenetv2", "tiny-taskonomy-resnet34")


def _suites(args: argparse.Namespace) -> list[str]:
    return csv_list(args.suite, option="--suite") or list(RECORD_SUITES)


def _plugins(args: argparse.Namespace) -> list[str]:
    """The contributed plugin modules: ``--contrib DIR``'s ``*.py`` files (default: ``contrib/``
    beside the records folder, where it exists)."""
    folder = Path(args.contrib) if args.contrib else Path(args.records).resolve().parent / "contrib"
    if args.contrib and not folder.is_dir():
        raise UserError(f"--contrib {folder}: no such directory")
    return sorted(str(p) for p in folder.glob("*.py")) if folder.is_dir() else []


def _records(args: argparse.Namespace) -> Path:
    records = Path(args.records)
    if not records.is_dir() and args.action != "recompute":
        raise UserError(f"--records {records}: no such directory (the records of a checkout are in records/; "
                        "`mtlbench records recompute` writes them)")
    return records


def cmd_records_status(args: argparse.Namespace) -> int:
    from benchmark.runner.records import record_status
    from benchmark.suites import load_suite

    records, plugins = _records(args), _plugins(args)
    table = Table(title=f"records in {records}")
    for col in ("suite", "entry", "state", "why"):
        table.add_column(col, overflow="fold")
    bad = 0
    for name in _suites(args):
        for s in record_status(load_suite(name), records, plugins=plugins):
            bad += s.state != "current"
            style = {"current": "green", "stale": "yellow", "missing": "red"}[s.state]
            table.add_row(name, f"{s.entry.kind} {s.entry.name}", Text(s.state, style=style), s.why)
    console.print(table)
    return EXIT_OK if not bad else EXIT_BAD_CELLS


def cmd_records_recompute(args: argparse.Namespace) -> int:
    from benchmark.runner.records import recompute

    records = _records(args)
    done: list = []

    def said(entry, seconds: float) -> None:
        done.append((entry, seconds))
        err_console.print(Text(f"{entry.path}: recorded in {seconds:.0f} s"), soft_wrap=True)

    written = recompute(_suites(args), records, only=csv_list(args.entries, option="--entries"),
                        stale_only=args.stale, plugins=_plugins(args), workers=args.workers,
                        scratch=Path(args.scratch) if args.scratch else None, console=err_console, on_entry=said)
    total = sum(s for _, s in done)
    console.print(f"{len(written)} entr{'y' if len(written) == 1 else 'ies'} written under {records} in {total:.0f} s")
    return EXIT_OK


def _changed_entries(args: argparse.Namespace, records: Path, plugins: list[str]) -> list[str] | None:
    """The entries a change touches (``--changed-since REF``): those whose record file, or whose
    contributed module, differs from ``REF`` (``git diff --name-only REF``, with files not yet
    committed); None without the option."""
    import subprocess

    from benchmark.runner.records import entries
    from benchmark.suites import load_suite

    if not args.changed_since:
        return csv_list(args.entries, option="--entries")
    root = records.resolve().parent
    try:
        listed = subprocess.run(["git", "diff", "--name-only", args.changed_since], cwd=root, capture_output=True,
                                text=True, timeout=60, check=True).stdout.split()
        listed += subprocess.run(["git", "ls-files", "--others", "--exclude-standard"], cwd=root, capture_output=True,
                                 text=True, timeout=60, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise UserError(f"--changed-since {args.changed_since}: git cannot list the changes in {root} "
                        f"({exc})") from None
    changed = {(root / f).resolve() for f in listed}
    names = []
    for suite in _suites(args):
        for entry in entries(load_suite(suite), plugins=plugins):
            module = Path(entry.plugin).resolve() if entry.plugin else None
            if (records / entry.path).resolve() in changed or module in changed:
                names.append(entry.name)
    return list(dict.fromkeys(names))


def cmd_records_check(args: argparse.Namespace) -> int:
    from benchmark.runner.records import check_records

    records = _records(args)
    plugins = _plugins(args)
    only = _changed_entries(args, records, plugins)
    if only == [] and args.changed_since:
        console.print(f"no entry of the record changed since {args.changed_since}: nothing to recompute")
        return EXIT_OK
    diffs = check_records(_suites(args), records, only=only, plugins=plugins, workers=args.workers,
                          console=err_console)
    failed = [d for d in diffs if not d.ok]
    for d in diffs:
        how = "bit for bit" if d.exact else "within the measured spread (another CPU, torch build or thread count)"
        line = f"{d.entry.path}: " + ("ok" if d.ok else f"{len(d.problems)} difference(s)") + f", compared {how}"
        console.print(Text(line, style="green" if d.ok else "red"), soft_wrap=True)
        for problem in d.problems[: None if args.verbose else 20]:
            console.print(Text(f"  {problem}"), soft_wrap=True)
    console.print(f"{len(diffs) - len(failed)} of {len(diffs)} entries match their recomputation")
    return EXIT_OK if not failed else EXIT_BAD_CELLS


def cmd_records_site(args: argparse.Namespace) -> int:
    from leaderboard.render import render_records

    index = render_records(_records(args), args.out, suites=_suites(args) if args.suite else None,
                           bundles=args.bundles, console=err_console)
    console.print(Text.assemble("site of record: ", (str(index.resolve()), "bold")))
    return EXIT_OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add the sub-commands of this group to ``mtlbench``'s parser."""
    records = sub.add_parser("records", help="the results of record: status, recompute, check, site")
    rsub = records.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions = (("status", "each entry of the record: current, stale (and what changed) or missing",
                cmd_records_status),
               ("recompute", "compute entries from the code and write them (all, --entries, or --stale)",
                cmd_records_recompute),
               ("check", "recompute the committed entries and name every cell that differs (exit 1)",
                cmd_records_check),
               ("site", "render the site of record from the committed records (and verified bundles)",
                cmd_records_site))
    for action, text, func in actions:
        p = rsub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("--records", default="records", help="the records folder (default: records)")
        p.add_argument("--suite", help="comma-separated suites (default: the three tiny suites)")
        p.add_argument("--contrib", help="folder of contributed plugin modules (default: contrib/ beside the "
                                         "records folder)")
        if action in ("recompute", "check"):
            p.add_argument("--entries", help="comma-separated entries: attack names or defense specs (default: all)")
            p.add_argument("--workers", type=bounded(int, 1, 256), help="local worker processes (default: one per "
                                                                       "usable core)")
        if action == "recompute":
            p.add_argument("--stale", action="store_true", help="only the entries that are stale or missing")
            p.add_argument("--scratch", help="a folder for the results database the entries are computed into (a "
                                             "killed recompute goes on from it)")
        if action == "check":
            p.add_argument("-v", "--verbose", action="store_true", help="every difference, not the first 20")
            p.add_argument("--changed-since", metavar="REF", help="only the entries whose record file or contributed "
                                                                  "module changed since the git REF (a pull request's "
                                                                  "base: what CI recomputes)")
        if action == "site":
            p.add_argument("--out", default="site", help="output directory (default: site)")
            p.add_argument("--bundles", metavar="DIR", help="verified result bundles join the site (re-scored here)")
        p.set_defaults(func=func)
