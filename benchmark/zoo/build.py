"""Getting a suite member as a ready model: load it, or build (train) it.

Tiny mirrors are built locally on first use, deterministically from the manifest's training
recipe. With ``init = "pretext"`` (the tiny suites) a backbone is first pre-trained once on a
pretext objective (:mod:`benchmark.zoo.pretext`, the role of ImageNet pre-training), then every
member starts from it (each block copy from the pre-trained block, the heads from one seeded
draw) and is trained on its tasks for the same ``steps``, as the paper's members are. With
``warm_start`` (the full suites' recipes) the all-shared member is trained first and every other
member is fine-tuned from it for ``finetune_steps``. Each finished member is saved at once, so an
interrupted build resumes where it stopped.
"""

from __future__ import annotations

import functools
import shutil
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from rich.console import Console
from rich.text import Text

from benchmark.data import make_loader
from benchmark.errors import UserError
from benchmark.evaluation import evaluate
from benchmark.models.branched import BranchedModel
from benchmark.progress import make_console, progress
from benchmark.registry import imported_plugin_modules
from benchmark.suites import TRAINING_VERSION, Member, Suite, load_suite
from benchmark.threads import choose_threads, choose_workers, set_threads
from benchmark.training import RESUME_FILE, TrainRecipe, train_model
from benchmark.workers import WorkerPool
from benchmark.zoo.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointInfo,
    load_checkpoint,
    round_weights,
    save_checkpoint,
)
from benchmark.zoo.hub import local_checkpoint_dir, pretext_dir, shipped_pretext_dir
from benchmark.zoo.imagenet import ImagenetSource, download_imagenet, imagenet_blocks
from benchmark.zoo.locate import (
    Location,
    find_member,
    is_current,
    load_location,
    locate_member,
    shipped_set_aside,
)
from benchmark.zoo.pretext import (
    PretextModel,
    head_seed,
    init_from_pretext,
    load_pretext,
    pretrain_backbone,
    save_pretext,
)

__all__ = ["AfterJob", "build_member", "build_pretext", "build_suite", "clean_test_set", "ensure_member", "load_model",
           "member_model", "recipe_for", "render_once", "training_set"]

_RECIPE_KEYS = set(TrainRecipe.__dataclass_fields__)


def with_training(suite: Suite, **changes) -> Suite:
    """``suite`` with entries of its ``[training]`` recipe replaced (those not None): the members
    it trains record the changed recipe, and are kept apart from the manifest's by its id."""
    changes = {k: v for k, v in changes.items() if v is not None}
    return replace(suite, training=suite.training.replace(**changes)) if changes else suite


def _say(text: str) -> None:
    import sys

    print(text, file=sys.stderr, flush=True)


def training_seed(suite: Suite, member: Member) -> int:
    """The seed of ``member``'s training run: the recipe's ``seed`` (a million apart, so two seeds'
    reshuffled epochs never coincide) and the member's name."""
    return suite.training.seed * 1_000_000 + zlib.crc32(member.name.encode()) % 1000


def member_model(suite: Suite, member: Member) -> BranchedModel:
    """A freshly initialised model of ``member``: seeded by the suite's name (and the recipe's
    seed) when its members share one initialisation (``init = "pretext"``: the same heads for
    every member), else by the member's name."""
    common = suite.training.init in ("pretext", "imagenet")
    torch.manual_seed(head_seed(suite.name, suite.training.seed) if common
                      else zlib.crc32(f"{suite.name}/{member.name}".encode()))
    tasks = suite.tasks
    return BranchedModel(member.layout, {t.name: t.channels for t in tasks}, backbone=member.backbone,
                         width=member.width, head_hidden=member.head_hidden, head_rates=member.head_rates,
                       output_stride=member.output_stride)


def recipe_for(suite: Suite, *, finetune: bool = False, steps: int | None = None) -> TrainRecipe:
    """The optimiser's recipe of a member of ``suite`` (``finetune``: one fine-tuned from the
    warm-start member, with the recipe's ``finetune_steps`` and ``finetune_lr`` where it has them)."""
    t = suite.training
    recipe = TrainRecipe(**{k: getattr(t, k) for k in _RECIPE_KEYS})
    if finetune:
        recipe.steps = t.finetune_steps if t.finetune_steps is not None else recipe.steps
        recipe.lr = t.finetune_lr if t.finetune_lr is not None else recipe.lr
    if steps is not None:
        recipe.steps = steps
    return recipe


def training_set(suite: Suite, data_root: str | None = None, *, size: int | None = None):
    """The images members are trained on: ``size`` synthetic scenes (default: the recipe's
    ``train_size``, 512 unless it says otherwise), or a real data set's whole train split."""
    size = (size or suite.training.train_size) if suite.synthetic else None
    return suite.data("train", size=size, data_root=data_root)


def clean_test_set(suite: Suite, *, size: int = 64, data_root: str | None = None):
    """The held-out images a checkpoint's clean metrics are measured on."""
    return suite.data(size=size, data_root=data_root)


def build_member(suite: Suite, member: Member, *, init_from: BranchedModel | None = None,
                 pretext: Path | None = None, imagenet: Path | None = None, device: str = "cpu",
                 data_root: str | None = None, out_dir: str | Path | None = None, steps: int | None = None,
                 train_set=None, test_set=None,
                 progress: Callable[[int, float], None] | None = None) -> Path:
    """Train ``member`` (from scratch, from the pre-trained backbone in the ``pretext`` folder, from
    the ImageNet weights file ``imagenet``, or fine-tuned from ``init_from``), measure its clean
    metrics, and save it as a checkpoint directory. With the recipe's ``checkpoint_every``, the
    training state is saved as it goes (``resume.safetensors`` in the output folder), and a killed
    build started again resumes the member from it."""
    tasks = suite.tasks
    model = member_model(suite, member)
    init: dict = {"init": "scratch"}
    if pretext is not None:
        blocks, meta = load_pretext(pretext)
        init_from_pretext(model, blocks)
        init = {"init": "pretext", "pretext": {"objective": meta["recipe"]["objective"], "sha256": meta["sha256"],
                                               "steps": meta["recipe"]["steps"]}}
    elif imagenet is not None:
        _say(f"{member.name}: every block copy from the ImageNet weights {imagenet.name} ...")
        source = ImagenetSource.from_table(member.backbone, suite.training.imagenet)
        init_from_pretext(model, _imagenet_blocks(str(imagenet), member.backbone, member.width, member.output_stride))
        init = {"init": "imagenet", "imagenet": source.to_dict()}
    elif init_from is not None:
        model.warm_start_from(init_from)
        init = {"init": "warm_start"}
    recipe = recipe_for(suite, finetune=init_from is not None, steps=steps)
    recipe.seed = training_seed(suite, member)
    out = Path(out_dir) if out_dir is not None else local_checkpoint_dir(suite, member)
    every = suite.training.checkpoint_every
    train_set = train_set if train_set is not None else training_set(suite, data_root)
    stats = train_model(model, tasks, train_set, recipe, device=device, progress=progress,
                        resume=out / RESUME_FILE if every else None, checkpoint_every=every,
                        meta={"suite": suite.name, "member": member.name, "recipe_id": suite.training_id, **init})
    round_weights(model, recipe.weights_dtype)  # the clean metrics are those of the stored values
    test_set = test_set if test_set is not None else clean_test_set(suite, data_root=data_root)
    if not suite.tiny:  # minutes at full size: said before, not a silent pause
        _say(f"{member.name}: trained; its clean metrics on {len(test_set)} held-out images ...")
    metrics = evaluate(model, tasks, make_loader(test_set, 32), device=device)
    info = CheckpointInfo(model=model.config, dataset=suite.data_source, suite=suite.name, member=member.name,
                          input_size=member.input_size,
                          training={**recipe.to_dict(), **init,
                                    "warm_start": suite.training.warm_start if init_from is not None else None,
                                    "recipe_id": suite.training_id,
                                    "train_size": len(train_set), "seconds": round(stats["seconds"], 1),
                                    "final_loss": stats["final_loss"],
                                    **({"resumed_at_step": stats["resumed_at"]} if stats.get("resumed_at") else {}),
                                    **machine(device)},
                          clean_metrics=metrics)
    save_checkpoint(model.cpu(), info, out, dtype=recipe.weights_dtype)
    (out / RESUME_FILE).unlink(missing_ok=True)  # the checkpoint is saved: the training state is done with
    return out


@functools.lru_cache(maxsize=2)
def _imagenet_blocks(path: str, backbone: str, width: float, output_stride: int | None) -> list[dict]:
    return imagenet_blocks(path, backbone, width, output_stride)


def imagenet_weights(suite: Suite) -> Path:
    """The suite's backbone's ImageNet weights file (downloaded once into the Hub cache; its sha256
    checked)."""
    backbones = {m.backbone for m in suite.members}
    if len(backbones) != 1:
        raise UserError(f"{suite.name}: init = 'imagenet' needs one backbone for every member, got {sorted(backbones)}")
    backbone = backbones.pop()
    return download_imagenet(ImagenetSource.from_table(backbone, suite.training.imagenet))


def machine(device: str | torch.device) -> dict[str, str | int]:
    """Where a model was trained (its card says so): the device (the GPU's name, or the CPU's with
    the instruction set torch's kernels use), torch threads and torch version. Training is bit for
    bit repeatable on the same device, thread count and torch build."""
    import platform

    if str(device).startswith("cuda") and torch.cuda.is_available():
        name = torch.cuda.get_device_name(torch.device(device))
    else:
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        name = f"{name} ({torch.backends.cpu.get_cpu_capability()})"
    return {"device": str(device), "device_name": name, "threads": torch.get_num_threads(),
            "torch": torch.__version__}


@functools.lru_cache(maxsize=1)
def _worker_sets(suite_ref: str, data_root: str | None):
    suite = load_suite(suite_ref)
    train_set = training_set(suite, data_root)
    render_once(train_set)
    return train_set, clean_test_set(suite, data_root=data_root)


def _build_in_worker(suite_ref: str, member: str, init_dir: str | None, pretext: str | None, imagenet: str | None,
                     device: str, data_root: str | None, training: dict, out_dir: str) -> tuple[str, str]:
    """One member, built in a worker process exactly as in the driver (same seed, same data)."""
    suite = with_training(load_suite(suite_ref), **training)
    train_set, test_set = _worker_sets(suite_ref, data_root)
    init = load_checkpoint(init_dir)[0] if init_dir is not None else None
    return member, str(build_member(suite, suite.member(member), init_from=init,
                                    pretext=None if pretext is None else Path(pretext),
                                    imagenet=None if imagenet is None else Path(imagenet), device=device,
                                    data_root=data_root, train_set=train_set, test_set=test_set, out_dir=out_dir))


def build_pretext(suite: Suite, *, device: str = "cpu", data_root: str | None = None, pretrain: bool = False,
                  progress: Callable[[int, float], None] | None = None,
                  log: Callable[[str], None] | None = None) -> Path:
    """The suite's common pre-trained backbone, in the local zoo: the local one when it was built
    with the manifest's pretext recipe, else the one shipped with mtlbench for this suite
    (:func:`~benchmark.zoo.hub.shipped_pretext_dir`) when it was, else (or with ``pretrain``)
    pre-trained now, on images of a scene seed the members never train on, and saved. ``log`` is
    told where the backbone came from."""
    recipe = suite.training.pretext_recipe()
    first = suite.members[0]
    arch = {"backbone": first.backbone, "width": first.width, "output_stride": first.output_stride}
    for m in suite.members:
        if (m.backbone, m.width, m.output_stride) != tuple(arch.values()):
            raise UserError(f"{suite.name}: init = 'pretext' needs one backbone for every member; {m.name} has "
                            f"{m.backbone} x{m.width}, {first.name} {first.backbone} x{first.width}")
    identity = {"suite": suite.name, "recipe": recipe.to_dict(), "architecture": arch,
                "training_version": TRAINING_VERSION}
    out = pretext_dir(suite)
    if not pretrain and _pretext_of(out, identity) is not None:
        return out
    shipped = shipped_pretext_dir(suite)
    meta = None if pretrain else _pretext_of(shipped, identity)
    if meta is not None:
        out.mkdir(parents=True, exist_ok=True)
        for name in (WEIGHTS_FILE, CONFIG_FILE):  # the config last: a copy cut short is not taken for whole
            shutil.copyfile(shipped / name, out / (name + ".tmp"))
            (out / (name + ".tmp")).replace(out / name)
        if log is not None:
            log(f"pretext backbone: the one shipped with mtlbench ({recipe.objective}, {recipe.steps} steps, "
                f"sha256 {meta['sha256'][:12]}; `--pretrain` pre-trains it here)")
        return out
    torch.manual_seed(recipe.seed)
    net = PretextModel(recipe.objective, **arch)
    images = suite.data("train", size=recipe.train_size, data_root=data_root, seed=recipe.seed)
    stats = pretrain_backbone(net, images, recipe, device=device, progress=progress)
    images_text = f"{suite.data_source} train, seed {recipe.seed}, {len(images)} images"
    save_pretext(net.cpu(), {**identity, "images": images_text, "stats": {k: round(v, 4) for k, v in stats.items()}},
                 out)
    return out


def _pretext_of(folder: Path, identity: dict) -> dict | None:
    """The config of the intact pre-trained backbone of ``identity`` (suite, recipe, architecture,
    training version) in ``folder``; None when there is none, another, or a damaged one (which is
    then pre-trained again)."""
    if not (folder / CONFIG_FILE).exists():
        return None
    try:
        meta = load_pretext(folder)[1]
    except CheckpointError:
        return None
    return meta if all(meta.get(k) == v for k, v in identity.items()) else None


@dataclass(frozen=True)
class AfterJob:
    """Training a build's worker processes run beside its members: ``fn(*args)`` (a module-level
    function, as a worker process runs it) once the member ``after`` is built (``None``: at once),
    e.g. a defense trained on that member (:func:`benchmark.zoo.defend.defense_job`)."""

    fn: Callable[..., object]
    args: tuple
    label: str
    after: str | None = None


@dataclass
class _BuildPlan:
    """What a build trains: the members wanted, those already there (``done``: member -> folder)
    and those to train (``todo``), and where each goes (``out/<member>/`` or the local zoo)."""

    suite: Suite
    out: Path | None
    wanted: list[Member]
    done: dict[str, Path] = field(default_factory=dict)
    todo: list[Member] = field(default_factory=list)

    def where(self, m: Member) -> Path:
        return self.out / m.name if self.out is not None else local_checkpoint_dir(self.suite, m)

    def found(self, m: Member) -> Path | None:
        """The member's checkpoint if it is already there (shipped, local or downloaded)."""
        if self.out is None:
            try:
                return locate_member(self.suite, m, local_files_only=True).directory
            except UserError:
                return None
        return self.where(m) if is_current(self.suite, self.where(m)) else None


def _plan_build(suite: Suite, members: Iterable[str] | None, out: str | Path | None, rebuild: bool) -> _BuildPlan:
    plan = _BuildPlan(suite, None if out is None else Path(out),
                      [suite.member(m) for m in members] if members is not None else list(suite.members))
    if not rebuild:
        plan.done = {m.name: d for m in plan.wanted if (d := plan.found(m)) is not None}
    plan.todo = [m for m in plan.wanted if m.name not in plan.done]
    return plan


def build_suite(suite: Suite | str, members: Iterable[str] | None = None, *, device: str = "cpu",
                data_root: str | None = None, console: Console | None = None, rebuild: bool = False,
                threads: int | None = None, workers: int | None = None,
                then: Sequence[AfterJob] = (), pretrain: bool = False, out: str | Path | None = None,
                seed: int | None = None, training: dict | None = None) -> dict[str, Path]:
    """Build the members of a suite that have no local checkpoint yet, or (tiny suites) one built
    with another recipe (all by default). The common pre-trained backbone (``init = "pretext"``)
    or the warm-start member (AS) is built first when any other member needs it; the others are built
    in ``workers`` processes (default: one per usable core for the tiny suites on the CPU, each
    with one thread), which start (and render their training scenes) while the backbone
    pre-trains (when the shipped one is not taken). ``then``: more training for those
    processes, each job started as soon as the member it needs is built (in this process after
    the members when there is one worker).
    ``threads``: torch threads per process (default: :func:`benchmark.threads.choose_threads`).
    ``pretrain``: pre-train the common backbone here, not take the one shipped with mtlbench
    (members built before keep theirs unless ``rebuild``). ``out``: build into ``out/<member>/``
    instead of the local zoo (members already there with the manifest's recipe are kept, so an
    interrupted build goes on). ``seed``: another training seed of the recipe (see
    :func:`training_seed`; needs ``out``); ``training``: other entries of the recipe (``steps``,
    ``batch_size``; for a tiny suite, they need ``out``)."""
    suite = load_suite(suite) if isinstance(suite, str | Path) else suite
    changes = {k: v for k, v in {**(training or {}), "seed": seed}.items() if v is not None}
    if changes and out is None and (seed is not None or suite.tiny):
        raise UserError(f"a build with another recipe ({', '.join(f'{k} {v}' for k, v in changes.items())}) needs its "
                        "own folder (--out DIR): the local zoo holds the members of the manifest's recipe")
    suite = with_training(suite, **changes)
    console = console or make_console(stderr=True)
    plan = _plan_build(suite, members, out, rebuild)
    common = suite.training.init == "pretext"
    if pretrain and common and not plan.todo:
        build_pretext(suite, device=device, data_root=data_root, pretrain=True)
        console.print(f"pre-trained the common backbone of {suite.name} under {pretext_dir(suite)}")
    if pretrain and common and plan.done:
        console.print(Text(f"{suite.name}: {len(plan.done)} member(s) built before keep the backbone they started "
                           f"from: {', '.join(plan.done)} (`--rebuild` trains them again from the one pre-trained "
                           "here)"), soft_wrap=True)
    if not plan.todo and not then:
        return plan.done
    _say_before_build(plan, rebuild, console)
    set_threads(threads, small_model=suite.tiny)
    start = time.perf_counter()
    _train(plan, then, device=device, data_root=data_root, console=console, threads=threads, workers=workers,
           pretrain=pretrain, changes=changes)
    jobs = f" and {len(then)} more" if then else ""
    if plan.todo:
        console.print(f"built {len(plan.todo)} model(s) of {suite.name}{jobs} in {time.perf_counter() - start:.0f} s "
                      f"under {plan.where(plan.todo[0]).parent}")
    return plan.done


def _say_before_build(plan: _BuildPlan, rebuild: bool, console: Console) -> None:
    """What a build says before it trains: a shipped checkpoint set aside (and why), local models
    of another recipe that are rebuilt."""
    suite = plan.suite
    if plan.out is None:
        for m in plan.todo:
            why = shipped_set_aside(suite, m)
            if why:
                console.print(Text(f"{suite.name}/{m.name}: the checkpoint that ships with mtlbench is set aside "
                                   f"({why}); it is trained here from the manifest's recipe instead"),
                              soft_wrap=True)
    stale = [m.name for m in plan.todo if suite.tiny and not rebuild and (plan.where(m) / CONFIG_FILE).exists()]
    if stale:
        console.print(Text(f"{suite.name}: {len(stale)} local model(s) were built with another training recipe "
                           f"and are rebuilt: {', '.join(stale)}"), soft_wrap=True)


def _train(plan: _BuildPlan, then: Sequence[AfterJob], *, device: str, data_root: str | None, console: Console,
           threads: int | None, workers: int | None, pretrain: bool, changes: dict) -> None:
    """Train a build's members (into ``plan.done``): the common starting point first (pretext
    backbone, ImageNet weights or the warm-start member), then the rest in worker processes or here."""
    suite = plan.suite
    warm = suite.training.warm_start
    root = suite.member(warm) if warm else None
    # the most expensive members first, so the last ones to finish are short (less idle time); the
    # members a job needs before them, so that the (long) job starts early
    num_tasks = len(suite.tasks)  # training cost ~ backbone parameters (block copies)
    needed = {job.after for job in then}
    rest = sorted((m for m in plan.todo if m is not root),
                  key=lambda m: (m.name not in needed, -m.backbone_parameters(num_tasks)))
    n_workers = min(choose_workers(workers, small_model=suite.tiny, device=device), len(rest) + len(then))
    pool = _Workers(suite, n_workers, choose_threads(threads, small_model=suite.tiny, workers=n_workers),
                    device, data_root, warm_up=bool(rest)) if n_workers > 1 else None
    try:
        train_set = training_set(suite, data_root)  # rendered once, when a member trains in this process
        test_set = clean_test_set(suite, data_root=data_root)
        steps = recipe_for(suite, finetune=root is not None).steps
        console.print(Text(f"build {suite.name}: {len(plan.todo)} model(s) to train, {steps} steps of batch "
                           f"{suite.training.batch_size} each ({', '.join(m.name for m in plan.todo[:6])}"
                           f"{', ...' if len(plan.todo) > 6 else ''}), in {max(1, n_workers)} process(es)"
                           + (f"; each first renders its {suite.training.train_size} training scenes (a minute or "
                              "two)" if suite.synthetic else "")
                           + f"; a killed build started again goes on where it stopped: every "
                           f"{suite.training.checkpoint_every} steps each member's resume file (the model and its "
                           "optimiser's state, about three times its float32 weights; only the latest, deleted when "
                           "the member is done) is written beside it"), soft_wrap=True)
        with progress(console, loss=True, eta=True) as bar:
            overall = bar.add_task(f"build {suite.name}", total=len(plan.todo) + len(then), loss=float("nan"))
            start = _starting_point(plan, root, rest, bar, overall, device=device, data_root=data_root,
                                    pretrain=pretrain, train_set=train_set, test_set=test_set)
            if pool is not None:
                plan.done.update(pool.run(rest, then, start.root_dir, start.pretext, start.imagenet, bar, overall,
                                          training=changes, where=plan.where))
                rest, then = [], []
            for member in rest:
                render_once(train_set)
                task = bar.add_task(f"  {member.name}", total=recipe_for(suite, finetune=start.init is not None).steps,
                                    loss=float("nan"))
                plan.done[member.name] = build_member(
                    suite, member, init_from=start.init, pretext=start.pretext, imagenet=start.imagenet,
                    device=device, data_root=data_root, train_set=train_set, out_dir=plan.where(member),
                    test_set=test_set, progress=lambda s, lo, t=task: bar.update(t, completed=s, loss=lo))
                bar.update(overall, advance=1)
                bar.remove_task(task)
            for job in then:
                started = time.perf_counter()
                job.fn(*job.args)
                _job_done(bar, job, started)
                bar.update(overall, advance=1)
    finally:
        if pool is not None:
            pool.close()


@dataclass
class _Start:
    """Where the members of a build start: the pre-trained backbone's folder, the ImageNet weights
    file, or the warm-start member (its folder and model)."""

    pretext: Path | None = None
    imagenet: Path | None = None
    root_dir: Path | None = None
    init: BranchedModel | None = None


def _starting_point(plan: _BuildPlan, root: Member | None, rest: list[Member], bar, overall, *, device: str,
                    data_root: str | None, pretrain: bool, train_set, test_set) -> _Start:
    """The members' common starting point, made (or fetched) first: the ImageNet weights, the
    pre-trained backbone, or the warm-start member (trained first when it is wanted or missing)."""
    suite = plan.suite
    start = _Start()
    if suite.training.init == "imagenet" and rest:
        start.imagenet = imagenet_weights(suite)  # downloaded once, here: the workers read the cache
    if suite.training.init == "pretext" and rest:
        task = bar.add_task("  pretext backbone", total=suite.training.pretext_recipe().steps, loss=float("nan"))
        start.pretext = build_pretext(suite, device=device, data_root=data_root, pretrain=pretrain,
                                      progress=lambda s, lo, t=task: bar.update(t, completed=s, loss=lo),
                                      log=lambda text: bar.console.print(text, highlight=False, markup=False))
        bar.remove_task(task)
    if root is not None and (root in plan.todo or rest):
        root_dir = plan.where(root)
        if root in plan.todo or plan.found(root) is None:
            render_once(train_set)
            task = bar.add_task(f"  {root.name} (warm start)", total=recipe_for(suite).steps, loss=float("nan"))
            build_member(suite, root, device=device, data_root=data_root, train_set=train_set, test_set=test_set,
                         out_dir=root_dir, progress=lambda s, lo, t=task: bar.update(t, completed=s, loss=lo))
            if root in plan.todo:
                plan.done[root.name] = root_dir
                bar.update(overall, advance=1)
        if rest:
            start.root_dir = root_dir
            start.init, _ = load_checkpoint(root_dir)
    return start


def render_once(dataset) -> None:
    """Render a synthetic set once (its scenes are reused every epoch)."""
    if hasattr(dataset, "materialize"):
        dataset.materialize()


def _warm_up(suite_ref: str, data_root: str | None) -> None:
    """A worker's first job: render its training scenes (a few seconds) while the driver takes or
    pre-trains the backbone. At the worker's normal priority: a lowered one would stay with the
    process (it cannot be raised again without privileges) and slow every member it then trains."""
    _worker_sets(suite_ref, data_root)


def _job_done(bar, job: AfterJob, started: float) -> None:
    bar.console.print(f"{job.label}: trained in {time.perf_counter() - started:.0f} s", highlight=False, markup=False)


class _Workers:
    """The build's worker processes (on :class:`benchmark.workers.WorkerPool`, the scheduler the
    runner's cells use too; ``threads`` torch threads each): members and jobs go to the next free
    worker, each member saved by its worker at once (an interrupted build resumes with the members
    left); a worker that dies is replaced and what it was training starts again once (a member
    resumes from its last resume file)."""

    def __init__(self, suite: Suite, workers: int, threads: int, device: str, data_root: str | None, *,
                 warm_up: bool) -> None:
        self.ref = suite.ref
        self.workers, self.threads, self.device, self.data_root = workers, threads, device, data_root
        self.pool = WorkerPool(workers, threads=threads, plugins=imported_plugin_modules())
        if warm_up:  # started now, each worker renders its training set while this process pre-trains
            for i in range(workers):
                self.pool.submit(("warm-up", i), _warm_up, self.ref, data_root)

    def run(self, members: list[Member], jobs: Sequence[AfterJob], init_dir: Path | None, pretext: Path | None,
            imagenet: Path | None, bar, overall, *, training: dict,
            where: Callable[[Member], Path]) -> dict[str, Path]:
        out: dict[str, Path] = {}
        task = bar.add_task(f"  {len(members) + len(jobs)} models in {self.workers} processes of {self.threads} "
                            "thread(s)", total=len(members) + len(jobs), loss=float("nan"))
        building = {m.name for m in members}
        queue: list = [j for j in jobs if j.after not in building] + list(members)
        waiting = [j for j in jobs if j.after in building]
        started: dict = {}  # member or job -> when it was submitted
        while queue or started:
            while queue and len(self.pool) < self.workers:
                item = queue.pop(0)
                if isinstance(item, AfterJob):
                    self.pool.submit(item, item.fn, *item.args)
                else:
                    self.pool.submit(item, _build_in_worker, self.ref, item.name,
                                     None if init_dir is None else str(init_dir),
                                     None if pretext is None else str(pretext),
                                     None if imagenet is None else str(imagenet), self.device, self.data_root,
                                     training, str(where(item)))
                started[item] = time.perf_counter()
            # wake every few seconds: off a terminal, the bar prints a line with the count and an ETA
            finished = self.pool.wait(timeout=5.0)
            bar.update(task)
            for done in finished:
                item = done.tag
                if item not in started:
                    continue  # a worker's warm-up (its failure is raised by wait)
                t0 = started.pop(item)
                label = item.label if isinstance(item, AfterJob) else item.name
                if done.lost:
                    raise UserError(f"{label}: the worker process training it died {done.lost} times (killed, out "
                                    "of memory, or a crash); the models finished so far are saved, and the build "
                                    "started again resumes with the rest")
                if not isinstance(item, AfterJob):
                    out[item.name] = Path(done.result[1])
                    bar.console.print(f"{item.name}: trained in {time.perf_counter() - t0:.0f} s", highlight=False,
                                      markup=False)
                    ready = [j for j in waiting if j.after == item.name]  # next, before the other members
                    waiting = [j for j in waiting if j.after != item.name]
                    queue[:0] = ready
                else:
                    _job_done(bar, item, t0)
                bar.update(task, advance=1)
                bar.update(overall, advance=1)
        bar.remove_task(task)
        return out

    def close(self) -> None:
        # members finished so far are saved; an interrupted build stops now and resumes with the rest
        self.pool.close()


def ensure_member(suite: Suite, member: Member, *, weights_dir: str | Path | None = None, build: bool = True,
                  console: Console | None = None) -> Location:
    """Where ``member``'s checkpoint is (:func:`~benchmark.zoo.locate.locate_member`), a tiny member
    that is not on this machine yet built first (not with ``build=False``: then it is an error)."""
    location = locate_member(suite, member, weights_dir=weights_dir)
    if location.found or not build:
        return find_member(suite, member, weights_dir=weights_dir) if not location.found else location
    return replace(location, directory=build_suite(suite, [member.name], console=console)[member.name])


def load_model(suite: Suite | str, member: Member | str, *, weights_dir: str | Path | None = None,
               device: str | torch.device = "cpu", build: bool = True,
               console: Console | None = None) -> tuple[BranchedModel, CheckpointInfo]:
    """A suite member in eval mode and its info, from a local directory, the shipped weights, the
    Hub cache, or (tiny mirrors) built on first use: the member case of :func:`benchmark.targets.resolve`,
    for a suite given as an object (one of :func:`with_training`'s too)."""
    suite = load_suite(suite) if isinstance(suite, str | Path) else suite
    member = suite.member(member) if isinstance(member, str) else member
    return load_location(ensure_member(suite, member, weights_dir=weights_dir, build=build, console=console), device)
