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
from benchmark.defenses.training import AdversarialRecipe
from benchmark.evaluation import evaluate
from benchmark.progress import make_console, progress
from benchmark.suites import Member, Suite, load_suite
from benchmark.threads import set_threads
from benchmark.training import RESUME_FILE
from benchmark.zoo.build import clean_test_set, ensure_member, machine, render_once, training_set
from benchmark.zoo.checkpoint import CONFIG_FILE, CheckpointInfo, round_weights, save_checkpoint
from benchmark.zoo.locate import (
    Location,
    defended_dir,
    find_defended,
    load_location,
    locate_defended,
    parent_sha256,
    training_defense,
)

__all__ = ["defend_member", "defend_suite", "defended_plan", "defense_job", "ensure_defended"]


def ensure_defended(suite: Suite, member: Member, defense_name: str, *, weights_dir: str | Path | None = None,
                    device: str = "cpu", build: bool = True, console: Console | None = None) -> Location:
    """Where ``member``'s checkpoint under the training defense ``defense_name`` is
    (:func:`~benchmark.zoo.locate.locate_defended`), checked against its defense and parent weights;
    a tiny member's is trained first when it is not on this machine (as its members are built on
    first use), a full member's is an error that says how to train it."""
    location = locate_defended(suite, member, defense_name, weights_dir=weights_dir)
    if not location.found and suite.tiny and build:
        defend_suite(suite, defense_name, [member.name], device=str(device), console=console, weights_dir=weights_dir)
    return find_defended(suite, member, defense_name, weights_dir=weights_dir)


def defend_member(suite: Suite, member: Member, defense_name: str, recipe: AdversarialRecipe, *, device: str = "cpu",
                  data_root: str | None = None, weights_dir: str | None = None, out_dir: str | Path | None = None,
                  restart: bool = False, console: Console | None = None, bar=None) -> Path:
    """Train ``member`` with the training defense ``defense_name`` (resuming a killed run) and save it."""
    defense = training_defense(defense_name)
    out = Path(out_dir) if out_dir is not None else defended_dir(suite, member, defense.canonical_name)
    model, _ = load_location(ensure_member(suite, member, weights_dir=weights_dir, console=console), device)
    parent = parent_sha256(suite, member, weights_dir=weights_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume = out / RESUME_FILE
    if restart and resume.exists():
        resume.unlink()
    meta = {"defense": defense.canonical_name, "recipe": recipe.to_dict(), "parent_sha256": parent}
    train_set = training_set(suite, data_root, size=recipe.train_size)
    render_once(train_set)
    label = f"  {member.name} {defense.canonical_name}"
    task = bar.add_task(label, total=recipe.steps, loss=float("nan")) if bar is not None else None
    stats, attack_spec = defense.train(model, suite.tasks, train_set, recipe, device=torch.device(device),
                                       resume=resume, meta=meta, progress=None if bar is None else
                                       (lambda s, lo: bar.update(task, completed=s, loss=lo)))
    dtype = suite.training.weights_dtype
    round_weights(model, dtype)  # stored as the member is; the clean metrics are those of the stored values
    test_set = clean_test_set(suite, data_root=data_root)
    metrics = evaluate(model, suite.tasks, make_loader(test_set, 32), device=device)
    info = CheckpointInfo(
        model=model.config, dataset=suite.data_source, suite=suite.name, member=member.name,
        input_size=member.input_size, clean_metrics=metrics,
        training={**recipe.to_dict(), "train_size": len(train_set), "seconds": round(stats["seconds"], 1),
                  "resumed_at_step": stats["resumed_at"], "final_loss": stats["final_loss"], "weights_dtype": dtype,
                  **machine(device)},
        defense={"spec": defense.canonical_name, "kind": "training", "attack": defense.attack.name,
                 "attack_options": dict(attack_spec.options),
                 "parent_sha256": parent, "recipe": recipe.to_dict()})
    save_checkpoint(model.cpu(), info, out, dtype=dtype)
    resume.unlink(missing_ok=True)
    if bar is not None:
        bar.remove_task(task)
    return out


def defend_suite(suite: Suite | str, defense_name: str, members: list[str] | None = None, *, device: str = "cpu",
                 data_root: str | None = None, weights_dir: str | None = None, rebuild: bool = False,
                 restart: bool = False, console: Console | None = None, threads: int | None = None,
                 out: str | Path | None = None, **overrides) -> dict[str, Path]:
    """Defend the members of a suite (all by default) with ``defense_name``; members already defended are
    kept unless ``rebuild``. ``overrides`` change the suite's recipe (``steps=``, ``attack_steps=``...).
    ``out``: write ``out/<member>/`` instead of the local zoo (members finished there are kept)."""
    suite = load_suite(suite) if isinstance(suite, str | Path) else suite
    console = console or make_console(stderr=True)
    defense = training_defense(defense_name)
    recipe = defense.recipe(suite, **overrides)
    done, todo = defended_plan(suite, defense.canonical_name, members, weights_dir=weights_dir, rebuild=rebuild,
                               out=out)
    if not todo:
        return done
    set_threads(threads, small_model=suite.tiny)
    start = time.perf_counter()
    with progress(console, loss=True) as bar:
        overall = bar.add_task(f"defend {suite.name} with {defense.canonical_name}", total=len(todo))
        for m in todo:
            done[m.name] = _defend_missing(suite, m, defense.canonical_name, recipe, device=device, data_root=data_root,
                                           weights_dir=weights_dir, rebuild=rebuild, restart=restart,
                                           console=console, bar=bar,
                                           out_dir=None if out is None else Path(out) / m.name)
            bar.update(overall, advance=1)
    seconds = time.perf_counter() - start
    console.print(f"defended {len(todo)} model(s) of {suite.name} with {defense.canonical_name} in {seconds:.0f} s "
                  f"({seconds / len(todo):.0f} s per model) under {done[todo[0].name].parent}",
                  highlight=False, markup=False)
    return done


def defended_plan(suite: Suite, defense_name: str, members: list[str] | None = None, *, weights_dir: str | None = None,
                  rebuild: bool = False, out: str | Path | None = None) -> tuple[dict[str, Path], list[Member]]:
    """What :func:`defend_suite` would do, without doing it: the members whose defended checkpoint of
    this recipe is already there (member -> its folder: shipped, local zoo, ``weights_dir`` or
    ``out``) and those it would train."""
    wanted = [suite.member(m) for m in members] if members else list(suite.members)
    done: dict[str, Path] = {}
    todo = []
    for m in wanted:
        if out is not None:
            found = Path(out) / m.name if (Path(out) / m.name / CONFIG_FILE).exists() and not rebuild else None
        else:
            found = None if rebuild else locate_defended(suite, m, defense_name, weights_dir=weights_dir).directory
        if found is not None:
            done[m.name] = found
        else:
            todo.append(m)
    return done, todo


def _defend_missing(suite: Suite, member: Member, defense_name: str, recipe: AdversarialRecipe, *,
                    rebuild: bool = False, restart: bool = False, out_dir: Path | None = None, **kwargs) -> Path:
    """Train ``member`` with ``defense_name`` where it has no (current) defended checkpoint: a tiny member's
    checkpoint of older parent weights (or any, with ``rebuild``) is trained again from the start."""
    old = (out_dir or defended_dir(suite, member, defense_name)) / CONFIG_FILE
    again = rebuild or old.exists()  # not found by locate_defended, yet there: stale
    if again:
        old.unlink(missing_ok=True)
    return defend_member(suite, member, defense_name, recipe, restart=restart or again, out_dir=out_dir, **kwargs)


def defense_job(suite: Suite, member: Member, defense_name: str, *, device: str = "cpu", data_root: str | None = None,
                weights_dir: str | None = None, after_build: bool = False):
    """``member`` trained with the training defense ``defense_name`` as an :class:`~benchmark.zoo.build.AfterJob`
    of a suite's build (run by its worker processes beside the members; ``after_build``: once the
    member itself is built by that build)."""
    from benchmark.zoo.build import AfterJob

    args = (suite.ref, member.name, create_defense(defense_name).canonical_name, device, data_root, weights_dir)
    return AfterJob(_defend_in_worker, args, label=f"{member.name} {defense_name}",
                    after=member.name if after_build else None)


def _defend_in_worker(suite_ref: str, member: str, defense_name: str, device: str, data_root: str | None,
                      weights_dir: str | None) -> str:
    suite = load_suite(suite_ref)
    m = suite.member(member)
    found = locate_defended(suite, m, defense_name, weights_dir=weights_dir)
    if found.found:
        return str(found.directory)
    recipe = training_defense(defense_name).recipe(suite)
    return str(_defend_missing(suite, m, defense_name, recipe, device=device, data_root=data_root,
                               weights_dir=weights_dir))
