"""`mtlbench zoo` (build, train, import, push) and `mtlbench defend`: checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table
from rich.text import Text

from benchmark.cli.common import (
    WORKERS_HELP,
    add_compute_options,
    bounded,
    console,
    csv_list,
    err_console,
    resolve_device,
)
from benchmark.errors import UserError


def cmd_zoo_build(args: argparse.Namespace) -> int:
    from benchmark.suites import load_suite
    from benchmark.zoo.build import build_suite

    suite = load_suite(args.suite)
    suite.check_data_root(args.data_root)
    if getattr(args, "imagenet_file", None):  # read by the build (and its workers) through the environment
        import os

        os.environ["MTLBENCH_IMAGENET_FILE"] = str(Path(args.imagenet_file).resolve())
    members = csv_list(args.model, option="--model")
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
    built = build_suite(suite, members, device=resolve_device(args.device), data_root=args.data_root,
                        console=err_console,
                        rebuild=args.rebuild, threads=args.threads, workers=args.workers,
                        pretrain=args.pretrain, out=out, seed=args.seed,
                        training={"steps": args.steps, "batch_size": args.batch_size, "init": args.init,
                                  "checkpoint_every": args.checkpoint_every})
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
    from benchmark.zoo.checkpoint import read_config

    other = {n: read_config(d).training for n, d in trained.items()
             if read_config(d).training.get("recipe_id") != suite.training_id}
    if other:
        changed = ", ".join(f"{k} {v}" for k, v in sorted(next(iter(other.values())).items())
                            if k in ("steps", "batch_size", "seed", "init") and suite.training.table.get(k) != v
                            and getattr(suite.training, k, None) != v)
        err_console.print(Text(f"{len(other)} model(s) trained here with another recipe than the manifest's"
                               + (f" ({changed})" if changed else "") + ": they are not the weights that ship "
                               "with mtlbench, which runs use; `--weights-dir "
                               f"{next(iter(trained.values())).parent}` runs these"), soft_wrap=True)
        trained = {n: d for n, d in trained.items() if n not in other}
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


def _print_clean(suite, built: dict, data_root: str | None = None, *, title: str = "",
                 metrics_per_task: int = 2, extra: bool = False, found: set[str] = frozenset()) -> None:
    """One table of checkpoints and their clean metrics (the first ``metrics_per_task`` of each
    task); ``extra``: with their training time (``found``: checkpoints this command found, not
    trained) and directory. Degenerate metrics are warned about."""
    from benchmark.zoo.checkpoint import read_config

    table = Table(title=title or f"{suite.name}: clean metrics of the local checkpoints")
    table.add_column("model")
    if extra:
        table.add_column("trained", justify="right")
    rows = [(name, read_config(directory)) for name, directory in built.items()]
    for name, info in rows:
        if info.clean_metrics:
            _warn_degenerate(suite, name, info.clean_metrics, data_root)
    metric_cols = [(t, k) for t, ms in (rows[0][1].clean_metrics.items() if rows else [])
                   for k in list(ms)[:metrics_per_task]]
    for t, k in metric_cols:
        table.add_column(f"{t} {k}", justify="right")
    if extra:
        table.add_column("directory", overflow="fold")
    for name, info in rows:
        cells = [f"{info.clean_metrics.get(t, {}).get(k, float('nan')):.3f}" for t, k in metric_cols]
        if extra:
            took = f"{info.training.get('seconds', float('nan')):.0f} s"
            cells = [f"not now (found; {took} when built)" if name in found else took, *cells, str(built[name])]
        table.add_row(name, *cells)
    console.print(table)


def cmd_zoo_train(args: argparse.Namespace) -> int:
    from benchmark.suites import load_suite

    suite = load_suite(args.suite)
    if not suite.tiny and args.data_root is None:
        raise UserError(f"training {suite.name} needs the real {suite.data_source} data: pass --data-root DIR "
                        "(directory format: docs/tutorials/full-suites.md, \"Running the full suites\")")
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
    names = csv_list(args.model, option="--model") or [m.name for m in suite.members]
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


def cmd_defend(args: argparse.Namespace) -> int:
    from benchmark.defenses import canonical_defense
    from benchmark.suites import load_suite
    from benchmark.zoo.defend import defend_suite, defended_plan
    from benchmark.zoo.locate import shipped_defended_dir

    overrides = {"steps": args.steps, "attack_steps": args.attack_steps, "tau": args.tau, "eps": args.eps,
                 "checkpoint_every": args.checkpoint_every, "seed": args.seed}
    suite = load_suite(args.suite)
    suite.check_data_root(args.data_root)
    defense_name = canonical_defense(args.defense)
    from benchmark.defenses import Detector, create_defense

    defense = create_defense(defense_name)
    if isinstance(defense, Detector):
        return _train_detector(args, suite, defense)
    out = args.out
    if args.ship:
        if not suite.tiny or args.out is not None:
            raise UserError("--ship trains a tiny suite's shipped defended checkpoints (no --out)")
        out = shipped_defended_dir(suite, defense_name)
    members = csv_list(args.models, option="--models")
    found, _ = defended_plan(suite, defense_name, members, weights_dir=args.weights_dir, rebuild=args.rebuild, out=out)
    for name, directory in found.items():
        err_console.print(Text(f"{name}: a {defense_name} checkpoint of this recipe is already there "
                               f"({_where(directory)}); nothing trained. `--rebuild --out DIR` trains a new one "
                               "beside it"), soft_wrap=True)
    done = defend_suite(suite, defense_name, members, device=resolve_device(args.device),
                        data_root=args.data_root, weights_dir=args.weights_dir, rebuild=args.rebuild,
                        restart=args.restart, console=err_console, threads=args.threads, out=out, **overrides)
    if args.ship:
        _pin(suite, done, defense=defense_name)
    _print_clean(suite, done, args.data_root, title=f"{defense_name}: defended checkpoints and their clean metrics",
                 metrics_per_task=1, extra=True, found=set(found))
    return 0


def _train_detector(args: argparse.Namespace, suite, detector) -> int:
    """`mtlbench defend SUITE --defense DETECTOR`: train a learned detector's head per member (the
    manifest's [detectors] recipe); --ship writes them beside the shipped weights and pins them."""
    from benchmark.zoo.checkpoint import file_sha256
    from benchmark.zoo.detectors import WEIGHTS, head_dir, train_head
    from benchmark.zoo.hub import pin_shipped

    if not detector.learned:
        raise UserError(f"{detector.canonical_name} is a detector that needs no training: evaluate it with "
                        f"`mtlbench run --defenses {detector.canonical_name}` (its threshold is set when the target is "
                        "loaded)")
    unused = [f"--{k.replace('_', '-')}" for k in ("steps", "attack_steps", "tau", "eps", "seed", "checkpoint_every")
              if getattr(args, k) is not None]
    unused += (["--weights-dir"] if args.weights_dir else []) + (["--restart"] if args.restart else [])
    if unused:
        raise UserError(f"{detector.name}'s head is trained with the manifest's [detectors] recipe; "
                        f"{', '.join(unused)} do not apply")
    if args.ship and (not suite.tiny or args.out is not None):
        raise UserError("--ship trains a tiny suite's shipped detector heads (no --out)")
    members = csv_list(args.models, option="--models") or [m.name for m in suite.members]
    for name in members:
        suite.member(name)
    done = {}
    for name in members:
        existing = head_dir(suite, detector.name, name, shipped=args.ship) / WEIGHTS
        if existing.is_file() and not args.rebuild and args.out is None:
            err_console.print(f"{detector.name} {name}: a head is already there ({existing.parent}); nothing trained "
                              "(--rebuild trains it again)", highlight=False)
            continue
        out = head_dir(suite, detector.name, name, shipped=True).parent if args.ship else (
            None if args.out is None else Path(args.out))
        folder = train_head(suite, detector.name, name, out=out, device=resolve_device(args.device),
                            data_root=args.data_root, console=err_console)
        done[name] = folder
        err_console.print(f"{detector.name} {name}: head trained into {folder}", highlight=False)
        if args.ship:
            pin_shipped(suite.path, name, file_sha256(folder / WEIGHTS), detector=detector.name)
    if args.ship and done:
        err_console.print(f"pinned the sha256 of {len(done)} detector head(s) in {suite.path}", highlight=False)
    return 0


def _where(directory) -> str:
    """Where a checkpoint folder is, in words: the weights shipped with mtlbench, or its path."""
    from pathlib import Path

    from benchmark.paths import SHIPPED_ZOO

    try:
        Path(directory).resolve().relative_to(SHIPPED_ZOO.resolve())
        return "shipped with mtlbench, sha256 pinned in the manifest"
    except ValueError:
        return str(directory)


def register(sub: argparse._SubParsersAction) -> None:
    """Add the sub-commands of this group to ``mtlbench``'s parser."""
    zoo = sub.add_parser("zoo", help="checkpoints: build, train, import, push")
    zsub = zoo.add_subparsers(dest="action", required=True, metavar="ACTION")
    zoo_actions = (("build", "build (train) the tiny mirror's models that are not built yet", cmd_zoo_build),
                   ("train", "train suite members (real data for full suites: --data-root)", cmd_zoo_train))
    for action, text, func in zoo_actions:
        p = zsub.add_parser(action, help=text)
        p.add_argument("suite")
        p.add_argument("--model", help="comma-separated member names (default: all)")
        p.add_argument("--data-root", help="directory of the real data set")
        add_compute_options(p)
        p.add_argument("--workers", type=bounded(int, 1, 256), help=WORKERS_HELP)
        p.add_argument("--rebuild", action="store_true", help="train again even if a checkpoint exists")
        p.add_argument("--pretrain", action="store_true",
                       help="tiny suites: pre-train the members' common backbone here instead of taking the one "
                            "shipped with mtlbench (with --rebuild, the members are trained again from it)")
        p.add_argument("--out", help="write checkpoints to OUT/<model> instead of the cache (a build there goes on "
                                     "where it stopped)")
        p.add_argument("--seed", type=bounded(int, 0, 1_000_000), help="another training seed of the recipe "
                       "(other heads' draw, batch order and dropout; the same pre-trained backbone); needs --out")
        p.add_argument("--ship", action="store_true", help="tiny suites, in a source checkout: train into the weights "
                       "folder that ships with mtlbench and pin each member's sha256 in the manifest")
        p.add_argument("--steps", type=bounded(int, 1, 10_000_000), help="override the recipe's training steps")
        p.add_argument("--batch-size", type=bounded(int, 1, 65_536),
                       help="override the recipe's batch size (memory: one step of the full ResNet34 AS at batch 16 "
                            "and 321x321 takes about 12 GB on the CPU)")
        p.add_argument("--checkpoint-every", type=bounded(int, 1, 10_000_000), metavar="N",
                       help="steps between the resume files a killed build goes on from (default: the recipe's, 500; "
                            "not part of the recipe: the weights are the same)")
        p.add_argument("--imagenet-file", metavar="PATH", help="the backbone's ImageNet weights file, brought from "
                       "a machine with network (checked against the pinned sha256) instead of the Hugging Face cache")
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

    p = sub.add_parser("defend", help="adversarially train suite members with a training defense (FAT, PGD-AT)",
                       description="Train suite members with a training defense, e.g. fat:pgd:gb-mta (FAT with "
                                   "GB-MTA-PGD) or pgdat:pgd:total (PGD-AT), into new checkpoints in the same Hub "
                                   "format. A killed run started again resumes from its last checkpoint. The recipe "
                                   "is the suite's [defenses] table; the options below override it.")
    p.add_argument("suite", help="suite name or manifest path")
    p.add_argument("--defense", default="fat:pgd:gb-mta", help="training defense (default: fat:pgd:gb-mta)")
    p.add_argument("--models", help="comma-separated member names (default: all)")
    p.add_argument("--steps", type=int, help="training steps (default: the recipe's)")
    p.add_argument("--attack-steps", type=int, help="K: the attack's steps (default: the recipe's)")
    p.add_argument("--tau", type=int, help="FAT's tau: calls after a sample is fooled (default: the recipe's)")
    p.add_argument("--eps", type=float, help="eps in 0-255 units (default: the recipe's, 8)")
    p.add_argument("--seed", type=int, help="training seed (default: the recipe's)")
    p.add_argument("--checkpoint-every", type=int, help="steps between resume checkpoints (default: the recipe's)")
    add_compute_options(p)
    p.add_argument("--data-root", help="directory of the real data set (full suites)")
    p.add_argument("--weights-dir", help="local checkpoint directories DIR/<model>/ (Hub format)")
    p.add_argument("--rebuild", action="store_true", help="train again even if a defended checkpoint exists")
    p.add_argument("--restart", action="store_true", help="ignore a resume checkpoint and train from the start")
    p.add_argument("--out", help="write the checkpoints to OUT/<model> instead of the cache")
    p.add_argument("--ship", action="store_true", help="tiny suites, in a source checkout: train into the weights "
                   "folder that ships with mtlbench and pin each checkpoint's sha256 in the manifest")
    p.set_defaults(func=cmd_defend)
