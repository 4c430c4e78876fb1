"""`mtlbench run`, `results`, `submit`, `verify`, `check`: running cells and checking them."""

from __future__ import annotations

import argparse

from rich.table import Table
from rich.text import Text

from benchmark.cli.common import (
    EXIT_BAD_CELLS,
    EXIT_CODES_HELP,
    EXIT_INCOMPLETE,
    EXIT_OK,
    EXIT_USAGE,
    add_images_option,
    add_selection_options,
    add_timeout_option,
    bounded,
    cell_timeout,
    console,
    csv_list,
    err_console,
    fmt_number,
    load_plugins,
    resolve_device,
    selection,
)
from benchmark.enums import Status
from benchmark.errors import UserError
from benchmark.paths import safe_name
from benchmark.progress import progress


def cmd_run(args: argparse.Namespace) -> int:
    from benchmark.runner import RunOptions, run
    from benchmark.runner.run import NoWeightsError

    run_options = RunOptions(suite=args.suite, profile=args.profile, attacks=csv_list(args.attacks, option="--attacks"),
                         **selection(args),
                         results=args.results, weights_dir=args.weights_dir, data_root=args.data_root,
                         executor=args.executor, ray_address=args.address, gpus_per_worker=args.gpus_per_worker,
                         cell_timeout=cell_timeout(args.cell_timeout),
                         defenses=csv_list(args.defenses, option="--defenses"),
                         eot_samples=args.eot_samples, score_draws=args.score_draws, model_dir=args.model,
                         model_name=args.name, precision=args.precision,
                         images=args.images, retry_failed=not args.no_retry, batch_cells=args.batch_cells)
    if args.plan:
        from benchmark.runner.plan import make_plan

        make_plan(run_options, run_options.places).print(console)
        return EXIT_OK
    try:
        summary = run(run_options, console=err_console)
    except NoWeightsError as exc:
        table = Table(title=f"{args.suite}: no model has weights on this machine")
        for col in ("model", "Hub repo (weights not published yet)"):
            table.add_column(col, overflow="fold")
        for name, repo in exc.missing.items():
            table.add_row(name, repo)
        err_console.print(table)
        err_console.print(Text(exc.ways[0].upper() + exc.ways[1:]), soft_wrap=True)
        return EXIT_USAGE
    done = dict(summary.done)
    ran = ", ".join(f"{n} {s}" for s, n in sorted(done.items())) or "nothing left to run"
    console.print(f"{summary.total} cells: {summary.skipped} already in {args.results}; {ran} "
                  f"({summary.seconds:.0f} s)")
    if summary.elsewhere:
        err_console.print(f"{summary.elsewhere} cell(s) were being computed by another run on {args.results} and "
                          "were left to it; run again when it has finished to have them all")
    if summary.stored_bad:
        err_console.print(Text.assemble(
            (f"{summary.stored_bad} cell(s) of this request are stored failed or invalid", "red"),
            f" ({summary.stored['failed']} failed, {summary.stored['invalid']} invalid; a failed cell is run again by "
            f"the next run unless --no-retry); their reasons: `mtlbench results show {args.results} --status "
            "failed,invalid`"))
        return EXIT_BAD_CELLS
    if summary.missing_models:
        err_console.print(Text.assemble(
            (f"incomplete: {len(summary.missing_models)} model(s) were not run", "yellow"),
            f" ({', '.join(summary.missing_models)}: no weights here, {summary.missing_cells} cells); narrow the "
            "request with --models, or get their weights"), soft_wrap=True)
        return EXIT_INCOMPLETE
    return EXIT_OK


def cmd_results_export(args: argparse.Namespace) -> int:
    from benchmark.runner import ResultsStore

    with ResultsStore(args.results, readonly=True) as store:
        out = store.export(args.out)
    console.print(f"wrote {out}")
    return 0


def cmd_results_show(args: argparse.Namespace) -> int:
    from benchmark.defenses.checks import evaluation_flags, target_checks
    from benchmark.runner import ResultsStore

    statuses = csv_list(args.status, option="--status") or [str(s) for s in Status]
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


def cmd_submit(args: argparse.Namespace) -> int:
    from benchmark.runner.bundle import submit

    out = args.out or "bundle-" + safe_name(args.attack)
    result = submit(csv_list(args.attack, option="attack"), suite=args.suite, profile=args.profile, out=out,
                    **selection(args), data_root=args.data_root, as_zip=args.zip,
                    cell_timeout=cell_timeout(args.cell_timeout), images=args.images, console=err_console)
    if result.bundle is None:
        err_console.print(Text.assemble(("submission failed", "bold red"), f": {len(result.failures)} problem(s), "
                                        f"no bundle written; report: {result.report}"))
        for line in result.failures[:20]:
            err_console.print(Text(f"  {line}"))
        return 1
    console.print(Text.assemble(f"bundle of {result.cells} cells written in {result.seconds:.0f} s: ",
                                (str(result.bundle), "bold"), f"\nverify it with `mtlbench verify {result.bundle}`"))
    console.print(Text(
        "Next steps: on a tiny suite, an attack joins the leaderboard of record by pull request: its module in "
        "contrib/ with RECORD_ATTACKS, its records from `mtlbench records recompute --entries ...`, checked by "
        "`mtlbench records check` (CONTRIBUTING.md in the repository; CI recomputes them from the code). On a "
        "full suite, open an issue with the 'external evaluation' template and the bundle: it is verified with "
        f"`mtlbench verify {result.bundle} --recount` and shown as re-scored or recounted."), soft_wrap=True)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from benchmark.runner.verify import ARP_TOLERANCE, METRIC_TOLERANCE, bundle_suite_name, verify_bundle
    from benchmark.suites import load_suite
    from benchmark.threads import set_threads

    args.tolerance = ARP_TOLERANCE if args.tolerance is None else args.tolerance
    args.metric_tolerance = METRIC_TOLERANCE if args.metric_tolerance is None else args.metric_tolerance

    if args.plugins:
        load_plugins(args.plugins)
    _verifier_options(args.bundle, args.suite, args.data_root, bundle_suite_name, load_suite)
    set_threads(args.threads, small_model=True)
    with progress(err_console) as bar:
        task = bar.add_task(f"verify {args.bundle}", total=None)

        def step(done: int, total: int, what: str) -> None:
            bar.update(task, total=total, completed=done, description=f"verify {args.bundle}: {what}")

        verdict = verify_bundle(args.bundle, suite=args.suite, device=resolve_device(args.device),
                                data_root=args.data_root, arp_tolerance=args.tolerance,
                                metric_tolerance=args.metric_tolerance,
                                recount=args.recount or bool(args.recount_sample),
                                recount_sample=args.recount_sample, recount_seed=args.recount_seed,
                                console=err_console, progress=step)
    names = ", ".join(verdict.manifest.get("attack", {}).get("names", [])) or "?"
    if verdict.verified:
        levels = "; ".join(f"{a}: {verdict.level(a)}" for a in verdict.manifest["attack"]["names"])
        console.print(Text.assemble(("verified", "bold green"), f": {args.bundle} ({names}): {verdict.checked} cells "
                                    f"re-scored on {verdict.manifest['suite']['name']} (the numbers follow from the "
                                    f"images: every metric within {args.metric_tolerance:g} relative, ARP within "
                                    f"{args.tolerance:g} points); {levels}; self-reported (not verified): "
                                    f"{', '.join(verdict.self_reported)}"))
        for attack, note in {**verdict.recounted, **verdict.skipped_recount}.items():
            console.print(Text(f"  {attack}: {note}"))
        if not args.recount and not args.recount_sample:
            console.print(Text("  re-scoring does not show that the named attack made the images: --recount runs "
                               "it again"))
        return 0
    console.print(Text.assemble(("rejected", "bold red"), f": {args.bundle} ({names}): "
                                + ("no cells; " if not verdict.cells and not verdict.reasons else "")
                                + f"{len(verdict.reasons)} problem(s); {verdict.checked} of {len(verdict.cells)} "
                                "cells check out"))
    for line in verdict.reasons[: 50 if not args.verbose else None]:
        console.print(Text(f"  {line}"))
    return 1


def _verifier_options(bundle: str, suite: str | None, data_root: str | None, bundle_suite_name, load_suite) -> None:
    """The verifier's own options are usage errors, not the bundle's rejections: a --suite that is
    not a readable manifest, a --data-root where the bundle's suite reads synthetic scenes."""
    given = load_suite(suite) if suite else None  # a UserError naming the file
    name = bundle_suite_name(bundle)
    if data_root is None or name is None:
        return
    try:
        target = given if given is not None and given.name == name else load_suite(name)
    except UserError:
        return
    if target.synthetic:
        raise UserError(f"--data-root {data_root}: the bundle's suite {name} reads built-in synthetic scenes; "
                        "--data-root is for the full suites' real data")


def cmd_check(args: argparse.Namespace) -> int:
    from benchmark.runner.check import SPEED_ROUNDS, CheckOptions, check

    opts = CheckOptions(baseline=args.baseline, suite=args.suite, profile=args.profile,
                        attacks=csv_list(args.attacks, option="--attacks"), **selection(args),
                        reference=args.reference, tolerance=args.tolerance, alpha=args.alpha,
                        speed_tolerance=args.speed_tolerance, passes_tolerance=args.passes_tolerance,
                        update=args.update, cell_timeout=cell_timeout(args.cell_timeout), images=args.images)
    report = check(opts, console=err_console)
    fmt = fmt_number
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
                      f"{fmt(a.ratio_before)} -> {fmt(a.ratio_after)}{_spread(a.timing)}", verdict)
        if args.verbose:
            for m in a.per_model:
                table.add_row(f"  {m['model']}", fmt(m["before"]), fmt(m["after"]), change(m["before"], m["after"]),
                              f"{fmt(m['delta'], '+.2f')} [{fmt(m['low'], '+.2f')}, {fmt(m['high'], '+.2f')}]",
                              fmt(m["p"], ".4f"), "", "", "")
    console.print(table)
    console.print(f"change: of the mean cell ARP; paired change and p: bootstrap over (model, image) of the images' "
                  f"scores (jackknife pseudo-values of the cell ARP), one-sided; an attack fails when its ARP dropped "
                  f"by more than {args.tolerance:g} with p < {args.alpha:g}; time ratio: its time over "
                  f"{report.new['reference']}'s on one batch, the median of {SPEED_ROUNDS} rounds that run both in "
                  f"alternation (it fails above the baseline's by more than {args.speed_tolerance:.0%} with p < "
                  f"{args.alpha:g}, a permutation test over both checks' rounds); "
                  f"{report.seconds:.0f} s")
    if report.written is not None:
        console.print(Text.assemble("baseline written: ", (str(report.written), "bold")))
        return 0
    return 0 if report.ok else 1


def _spread(timing: dict | None) -> str:
    """The range of a paired timing's per-round ratios, after its median."""
    rounds = (timing or {}).get("ratios") or []
    return f" ({min(rounds):.2f}-{max(rounds):.2f})" if len(rounds) > 1 else ""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the sub-commands of this group to ``mtlbench``'s parser."""
    _register_run(sub)
    _register_results(sub)
    _register_submit(sub)
    _register_verify(sub)
    _register_check(sub)


def _register_run(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="evaluate a suite's grid of models x attacks x eps x seeds",
                       description="Evaluate a suite's grid of cells into a results database (resumable; a "
                                   "failed cell is run again by the next run). " + EXIT_CODES_HELP + ".")
    add_selection_options(p, defaults="the profile's; every member for --models")
    p.add_argument("--attacks", help="comma-separated attacks or patterns, e.g. 'pgd:gb-mta,fgsm:*' "
                                     "(default: the profile's)")
    p.add_argument("--results", default="results.db", help="SQLite results database (created or resumed)")
    p.add_argument("--batch-cells", choices=("auto", "on", "off"), default="auto",
                   help="attack the cells that differ only by eps in one batch, each eps's copy of the images "
                        "beside the others (attacks that declare images_independent: FGSM, MIM, PGD without a "
                        "random start): auto = on a GPU only (default)")
    p.add_argument("--no-retry", action="store_true", help="leave cells stored as failed as they are (by default a "
                                                           "run computes them again; invalid ones always stay)")
    p.add_argument("--weights-dir", help="local checkpoint directories DIR/<model>/ (Hub format)")
    p.add_argument("--data-root", help="directory of the real data set (full suites)")
    p.add_argument("--executor", choices=("local", "ray"), default="local")
    p.add_argument("--address", help="Ray cluster address (default: start a local one)")
    p.add_argument("--gpus-per-worker", "--gpus-per-cell", dest="gpus_per_worker", type=bounded(float, 0.01, 64),
                   default=None, help="Ray: GPUs per worker (default 1 on a GPU run: one worker per GPU, the cells "
                                      "of a model kept on one worker with the model resident; a fraction puts "
                                      "several workers on a card)")
    add_timeout_option(p)
    add_images_option(p)
    p.add_argument("--precision", choices=("float32", "bf16"), default=None,
                   help="bf16: the attacks' forward passes under bfloat16 autocast (an attack option: its cells are "
                        "kept and labelled apart; the scoring stays float32). Default float32")
    p.add_argument("--defenses", help="comma-separated targets per model: 'none' (undefended), inference-time "
                                      "defenses and trained ones, e.g. 'none,bitdepth:4,fat:pgd:gb-mta' (default: "
                                      "the profile's); a trained defense needs `mtlbench defend` first")
    p.add_argument("--score-draws", "--draws", dest="score_draws", type=bounded(int, 1, 1000), default=None,
                   metavar="N", help="draws of a randomised defense its images are scored over (their metrics pooled: "
                                     "the defense's expected metric; default: the profile's score_draws, 8 unless it "
                                     "says otherwise)")
    p.add_argument("--eot-samples", "--eot", dest="eot_samples", type=bounded(int, 1, 1000), default=None,
                   metavar="N", help="EOT draws per model call when attacking a randomised defense (default: the "
                                     "profile's eot_samples, 4 unless it says otherwise)")
    p.add_argument("--plan", action="store_true", help="print the plan (what is built first, what cannot run, the "
                                                       "cells per target) and run nothing; no weight is loaded")
    p.add_argument("--model", metavar="DIR", help="an external model: a Hub-format checkpoint directory "
                                                  "(model.safetensors + config.json), run instead of the members")
    p.add_argument("--name", help="the external model's name in results (default: the directory's name)")
    p.set_defaults(func=cmd_run)

def _register_results(sub: argparse._SubParsersAction) -> None:
    results = sub.add_parser("results", help="read a results database")
    rsub = results.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = rsub.add_parser("export", help="write the cells as CSV or JSON")
    p.add_argument("results")
    p.add_argument("out", help="output file, .csv or .json")
    p.set_defaults(func=cmd_results_export)
    p = rsub.add_parser("show", help="print cells")
    p.add_argument("results")
    p.add_argument("--status", help="comma-separated statuses (valid, invalid, failed)")
    p.add_argument("--limit", type=bounded(int, 1), default=200)
    p.set_defaults(func=cmd_results_show)

def _register_submit(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("submit", help="run an attack through the validator and a suite's protocol into a result bundle",
                       description="Validate an attack on every output, check its determinism, run it under a suite "
                                   "profile on the suite's members and write a result bundle (manifest, cells, "
                                   "adversarial images) that anyone can re-score with `mtlbench verify`. Exit 1 with "
                                   "a report of what failed, and no bundle, when a cell is invalid or failed.")
    p.add_argument("attack", help="comma-separated attacks or patterns, e.g. 'cospgd:gb-mta' or 'cospgd:*'")
    add_selection_options(p)
    p.add_argument("--out", help="bundle directory (default: bundle-<attack>)")
    p.add_argument("--zip", action="store_true", help="write OUT.zip instead of a directory")
    p.add_argument("--data-root", help="directory of the real data set (full suites)")
    add_timeout_option(p)
    add_images_option(p)
    p.set_defaults(func=cmd_submit)

def _register_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="re-score a result bundle's adversarial images against the pinned weights",
                       description="Check every claim of a result bundle: its files and their sizes, the types of "
                                   "its manifest and cells, that its cells are exactly the grid its manifest declares, "
                                   "the weights revision, image ids, [0, 1], the eps-ball, and every metric, ARP and "
                                   "per-image score re-scored (a verified bundle carries the re-scored numbers). "
                                   "Re-scoring shows the numbers follow from the images; --recount runs the attack "
                                   "again and shows it made them (same images, same passes). Time and memory stay "
                                   "self-reported. Exit 0 when verified, 1 when rejected (each reason names the cell "
                                   "and the field), 2 on a usage error.")
    p.add_argument("bundle", help="bundle directory or .zip")
    p.add_argument("--suite", help="the suite's manifest path, for a bundle of a suite that is not a standard one "
                                   "(default: the suite the bundle names)")
    p.add_argument("--tolerance", type=bounded(float, 0), default=None,
                   help="ARP points of a cell's and a task's ARP (default 0.015: 10x the spread measured across "
                        "thread counts and instruction sets)")
    p.add_argument("--metric-tolerance", type=bounded(float, 0), default=None,
                   help="relative tolerance of a cell's metrics (default 1e-3, measured the same way)")
    p.add_argument("--data-root", help="directory of the real data set (full suites)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--threads", type=bounded(int, 1, 256), help="torch threads (default 1; an honest bundle "
                                                               "verifies at any thread count)")
    p.add_argument("-v", "--verbose", action="store_true", help="every reason, not the first 50")
    p.add_argument("--recount", action="store_true", help="run each attack whose code is installed here (with the "
                   "bundle's sources) again on every cell: its counted passes and its images must be the bundle's")
    p.add_argument("--recount-sample", type=bounded(int, 1, 100_000), metavar="N",
                   help="recount N cells drawn at random over every eps instead of every cell")
    p.add_argument("--recount-seed", type=int, default=0, help="the verifier's seed of the drawn cells (default 0)")
    p.add_argument("--plugins", help="comma-separated modules or .py files that register the bundle's attacks "
                   "(for --recount)")
    p.set_defaults(func=cmd_verify)

def _register_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="CI gate: fail when an attack got weaker (paired test) or slower than a baseline",
                       description="Run the attacks of a baseline again on the same images, models, eps and seeds "
                                   "and compare with a paired bootstrap over (model, image). Exit status 1 when an "
                                   "attack got weaker by more than --tolerance ARP points with p < --alpha, needs "
                                   "more passes per image, got slower relative to the reference attack by more than "
                                   "--speed-tolerance, or gives invalid outputs; 0 otherwise; 2 on a usage error.")
    p.add_argument("--baseline", required=True, help="baseline JSON (written by --update)")
    add_selection_options(p, defaults="the baseline's", suite=None, profile=None)
    p.add_argument("--attacks", help="comma-separated attacks (default: the baseline's)")
    p.add_argument("--reference", help="attack whose time is the unit of speed, timed in alternation with each "
                                       "attack on one batch (default: pgd:total)")
    p.add_argument("--tolerance", type=bounded(float, 0), default=1.0,
                   help="ARP points an attack may lose (default 1)")
    p.add_argument("--alpha", type=bounded(float, 1e-9, 1), default=0.05, help="significance level (default 0.05)")
    p.add_argument("--speed-tolerance", type=bounded(float, 0), default=0.5,
                   help="share the time ratio to the reference may grow (default 0.5: +50%%)")
    p.add_argument("--passes-tolerance", type=bounded(float, 0), default=0.0,
                   help="share the counted passes per image may grow (default 0)")
    p.add_argument("--update", action="store_true", help="write this run as the new baseline")
    p.add_argument("-v", "--verbose", action="store_true", help="a row per model too")
    add_timeout_option(p)
    add_images_option(p)
    p.set_defaults(func=cmd_check)
