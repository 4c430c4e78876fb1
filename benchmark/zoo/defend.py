"""``mtlbench defend``: a training defense turns suite members into new checkpoints.

A defended member is saved in the same Hub format as its parent, under
``$MTLBENCH_HOME/zoo/<suite>/defended/<defense>/<member>/`` (``--weights-dir DIR`` is searched
first as ``DIR/defended/<defense>/<member>/``); its ``config.json`` and model card record the
defense, the attack it trained with, the recipe and the parent weights' sha256. Training writes a
resume file next to the checkpoint as it goes, so a killed run continues where it stopped.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from rich.console import Console

from benchmark.data import make_loader
from benchmark.defenses import create_defense
from benchmark.defenses.training import RESUME_FILE, AdversarialRecipe, TrainingDefense
from benchmark.enums import Origin
from benchmark.errors import UserError
from benchmark.evaluation import evaluate
from benchmark.paths import defended_root, safe_name
from benchmark.progress import make_console, progress
from benchmark.suites import Member, Suite, load_suite
from benchmark.threads import set_threads
from benchmark.zoo.build import clean_test_set, load_model, machine, render_once, training_set
from benchmark.zoo.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointInfo,
    file_sha256,
    read_config,
    round_weights,
    save_checkpoint,
)
from benchmark.zoo.hub import resolve_weights

__all__ = ["check_defended", "defend_member", "defend_suite", "defended_dir", "defense_job", "find_defended",
           "is_stale_defended", "parent_sha256", "pinned_sha256", "shipped_defended", "shipped_defended_dir"]


def training_defense(spec: str) -> TrainingDefense:
    """The training defense ``spec`` names; an inference-time one is a message."""
    defense = create_defense(spec)
    if not isinstance(defense, TrainingDefense):
        raise UserError(f"{defense.spec!r} is an inference-time defense: it wraps a model at evaluation time "
                        f"(`mtlbench run --defenses {defense.spec}`); `mtlbench defend` trains training defenses "
                        "such as fat:pgd:gb-mta or pgdat:pgd:total")
    return defense


def defended_dir(suite: Suite, member: Member, spec: str) -> Path:
    """Where ``mtlbench defend`` writes ``member`` trained with the defense ``spec``."""
    return defended_root(suite.name, spec) / member.name


def shipped_defended_dir(suite: Suite, spec: str) -> Path:
    """Where a tiny suite's checkpoints under the training defense ``spec`` ship with mtlbench
    (``<dir>/<member>/``)."""
    return defended_root(suite.name, spec, shipped=True)


def shipped_defended(suite: Suite, member: Member, spec: str) -> Path | None:
    """The checkpoint of ``member`` under ``spec`` that ships with mtlbench, when the manifest
    pins it (``[weights.defended."<spec>"]``) and it was trained with the manifest's ``[fat]``
    recipe from the member's current weights."""
    if not suite.defended_sha256.get(spec, {}).get(member.name):
        return None
    directory = shipped_defended_dir(suite, spec) / member.name
    if not (directory / CONFIG_FILE).exists() or is_stale_defended(directory, suite, member):
        return None
    try:
        recorded = read_config(directory).defense.get("recipe")
    except CheckpointError:
        return directory  # damaged: loading it says what is wrong
    return directory if recorded == training_defense(spec).recipe(suite).to_dict() else None


def find_defended(suite: Suite, member: Member, spec: str, *, weights_dir: str | Path | None = None) -> Path | None:
    """The finished checkpoint of ``member`` under the training defense ``spec`` (in
    ``weights_dir``, shipped with mtlbench, or in the local zoo), or None."""
    candidates = [Path(weights_dir) / "defended" / safe_name(spec) / member.name] if weights_dir else []
    shipped = shipped_defended(suite, member, spec)
    if shipped is not None:
        candidates.append(shipped)
    local = defended_dir(suite, member, spec)
    candidates.append(local)
    for c in candidates:
        if (c / CONFIG_FILE).exists():
            if c == local and is_stale_defended(c, suite, member):
                continue  # trained again on first use, as a tiny member built with another recipe is
            return c
    return None


def pinned_sha256(suite: Suite, member: Member, spec: str, directory: Path) -> str:
    """The sha256 a defended checkpoint must have: the manifest's pin when it is the shipped one."""
    if directory == shipped_defended(suite, member, spec):
        return suite.defended_sha256[spec][member.name]
    return ""


def is_stale_defended(directory: Path, suite: Suite, member: Member) -> bool:
    """Whether a tiny member's defended checkpoint in the local zoo was trained from other weights
    than the member's current local ones (or the member is not built, or was built with another
    recipe, so that it will be rebuilt): then it is trained again rather than refused."""
    if not suite.tiny:
        return False
    try:
        recorded = read_config(directory).defense.get("parent_sha256")
    except CheckpointError:
        return False  # damaged: loading it says what is wrong
    return recorded != parent_sha256(suite, member)


def parent_sha256(suite: Suite, member: Member, *, weights_dir: str | Path | None = None) -> str | None:
    """The sha256 of ``member``'s weights file on this machine (None when it is not there)."""
    try:
        directory, source = resolve_weights(suite, member, weights_dir=weights_dir, local_files_only=True)
    except UserError:
        return None
    if directory is None:
        return None
    return member.sha256 if source == Origin.HUB and member.sha256 else file_sha256(directory / WEIGHTS_FILE)


def check_defended(directory: Path, suite: Suite, member: Member, spec: str, *,
                   weights_dir: str | Path | None = None) -> None:
    """Refuse a defended checkpoint of another defense, or one trained from other parent weights
    than the member's current ones (a rebuilt member makes its defended checkpoints stale)."""
    info = read_config(directory)
    if info.defense.get("spec") != spec:
        raise CheckpointError(f"{directory / CONFIG_FILE}: defense.spec is {info.defense.get('spec')!r}, expected "
                              f"{spec!r}")
    parent = parent_sha256(suite, member, weights_dir=weights_dir)
    if parent is not None and info.defense.get("parent_sha256") != parent:
        raise CheckpointError(
            f"{directory}: trained from parent weights sha256 {str(info.defense.get('parent_sha256'))[:12]}..., but "
            f"{suite.name}/{member.name} is now {parent[:12]}...; train it again with "
            f"`mtlbench defend {suite.name} --defense {spec} --models {member.name} --rebuild`")


def defend_member(suite: Suite, member: Member, spec: str, recipe: AdversarialRecipe, *, device: str = "cpu",
                  data_root: str | None = None, weights_dir: str | None = None, out_dir: str | Path | None = None,
                  restart: bool = False, console: Console | None = None, bar=None) -> Path:
    """Train ``member`` with the training defense ``spec`` (resuming a killed run) and save it."""
    defense = training_defense(spec)
    out = Path(out_dir) if out_dir is not None else defended_dir(suite, member, defense.spec)
    model, _ = load_model(suite, member, weights_dir=weights_dir, device=device, console=console)
    parent = parent_sha256(suite, member, weights_dir=weights_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume = out / RESUME_FILE
    if restart and resume.exists():
        resume.unlink()
    meta = {"defense": defense.spec, "recipe": recipe.to_dict(), "parent_sha256": parent}
    train_set = training_set(suite, data_root, size=recipe.train_size)
    render_once(train_set)
    label = f"  {member.name} {defense.spec}"
    task = bar.add_task(label, total=recipe.steps, loss=float("nan")) if bar is not None else None
    stats, attack_spec = defense.train(model, suite.tasks, train_set, recipe, device=torch.device(device),
                                       resume=resume, meta=meta, progress=None if bar is None else
                                       (lambda s, lo: bar.update(task, completed=s, loss=lo)))
    dtype = suite.training.get("weights_dtype", "float32")
    round_weights(model, dtype)  # stored as the member is; the clean metrics are those of the stored values
    test_set = clean_test_set(suite, data_root=data_root)
    metrics = evaluate(model, suite.tasks, make_loader(test_set, 32), device=device)
    info = CheckpointInfo(
        model=model.config, dataset=suite.data_source, suite=suite.name, member=member.name,
        input_size=member.input_size, clean_metrics=metrics,
        training={**recipe.to_dict(), "train_size": len(train_set), "seconds": round(stats["seconds"], 1),
                  "resumed_at_step": stats["resumed_at"], "final_loss": stats["final_loss"], "weights_dtype": dtype,
                  **machine(device)},
        defense={"spec": defense.spec, "kind": "training", "attack": defense.attack.name,
                 "attack_options": dict(attack_spec.options),
                 "parent_sha256": parent, "recipe": recipe.to_dict()})
    save_checkpoint(model.cpu(), info, out, dtype=dtype)
    resume.unlink(missing_ok=True)
    if bar is not None:
        bar.remove_task(task)
    return out


def defend_suite(suite: Suite | str, spec: str, members: list[str] | None = None, *, device: str = "cpu",
                 data_root: str | None = None, weights_dir: str | None = None, rebuild: bool = False,
                 restart: bool = False, console: Console | None = None, threads: int | None = None,
                 out: str | Path | None = None, **overrides) -> dict[str, Path]:
    """Defend the members of a suite (all by default) with ``spec``; members already defended are
    kept unless ``rebuild``. ``overrides`` change the suite's recipe (``steps=``, ``attack_steps=``...).
    ``out``: write ``out/<member>/`` instead of the local zoo (members finished there are kept)."""
    suite = load_suite(suite) if isinstance(suite, str | Path) else suite
    console = console or make_console(stderr=True)
    defense = training_defense(spec)
    recipe = defense.recipe(suite, **overrides)
    wanted = [suite.member(m) for m in members] if members else list(suite.members)
    done: dict[str, Path] = {}
    todo = []
    for m in wanted:
        if out is not None:
            found = Path(out) / m.name if (Path(out) / m.name / CONFIG_FILE).exists() and not rebuild else None
        else:
            found = None if rebuild else find_defended(suite, m, defense.spec, weights_dir=weights_dir)
        if found is not None:
            done[m.name] = found
        else:
            todo.append(m)
    if not todo:
        return done
    set_threads(threads, small_model=suite.tiny)
    start = time.perf_counter()
    with progress(console, loss=True) as bar:
        overall = bar.add_task(f"defend {suite.name} with {defense.spec}", total=len(todo))
        for m in todo:
            done[m.name] = _defend_missing(suite, m, defense.spec, recipe, device=device, data_root=data_root,
                                           weights_dir=weights_dir, rebuild=rebuild, restart=restart,
                                           console=console, bar=bar,
                                           out_dir=None if out is None else Path(out) / m.name)
            bar.update(overall, advance=1)
    seconds = time.perf_counter() - start
    console.print(f"defended {len(todo)} model(s) of {suite.name} with {defense.spec} in {seconds:.0f} s "
                  f"({seconds / len(todo):.0f} s per model) under {done[todo[0].name].parent}",
                  highlight=False, markup=False)
    return done


def _defend_missing(suite: Suite, member: Member, spec: str, recipe: AdversarialRecipe, *, rebuild: bool = False,
                    restart: bool = False, out_dir: Path | None = None, **kwargs) -> Path:
    """Train ``member`` with ``spec`` where it has no (current) defended checkpoint: a tiny member's
    checkpoint of older parent weights (or any, with ``rebuild``) is trained again from the start."""
    old = (out_dir or defended_dir(suite, member, spec)) / CONFIG_FILE
    again = rebuild or old.exists()  # not found by find_defended, yet there: stale
    if again:
        old.unlink(missing_ok=True)
    return defend_member(suite, member, spec, recipe, restart=restart or again, out_dir=out_dir, **kwargs)


def defense_job(suite: Suite, member: Member, spec: str, *, device: str = "cpu", data_root: str | None = None,
                weights_dir: str | None = None, after_build: bool = False):
    """``member`` trained with the training defense ``spec`` as an :class:`~benchmark.zoo.build.AfterJob`
    of a suite's build (run by its worker processes beside the members; ``after_build``: once the
    member itself is built by that build)."""
    from benchmark.zoo.build import AfterJob

    args = (suite.ref, member.name, create_defense(spec).spec, device, data_root, weights_dir)
    return AfterJob(_defend_in_worker, args, label=f"{member.name} {spec}", after=member.name if after_build else None)


def _defend_in_worker(suite_ref: str, member: str, spec: str, device: str, data_root: str | None,
                      weights_dir: str | None) -> str:
    suite = load_suite(suite_ref)
    m = suite.member(member)
    found = find_defended(suite, m, spec, weights_dir=weights_dir)
    if found is not None:
        return str(found)
    return str(_defend_missing(suite, m, spec, training_defense(spec).recipe(suite), device=device, data_root=data_root,
                               weights_dir=weights_dir))
