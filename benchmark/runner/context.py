"""What the cells of one target share: the loaded model, the evaluation batches and the clean
metrics. Every executor builds it the same way, from a cell's target and data settings."""

from __future__ import annotations

import datetime as _dt
import platform
from dataclasses import dataclass
from typing import Any

import torch

from benchmark.attacks.validate import WeightSnapshot, model_fingerprint
from benchmark.data import image_ids, make_loader, to_device
from benchmark.defenses.checks import model_checks
from benchmark.defenses.inference import deployed, deployed_outputs
from benchmark.enums import Origin
from benchmark.errors import UserError
from benchmark.evaluation import check_outputs, degenerate_metrics, model_problem
from benchmark.metric_base import TaskMetrics
from benchmark.runner.store import ResultsStore, cell_key
from benchmark.targets import Target, freeze
from benchmark.tasks import Task
from benchmark.threads import deterministic_kernels
from benchmark.version import __version__

__all__ = ["CellContext", "clean_inspection", "device_name", "ensure_clean_inspection", "prepare_context",
           "source_model"]


@dataclass
class CellContext:
    """What a cell needs besides its own configuration (shared by the cells of one target)."""

    target: Target
    model: torch.nn.Module
    tasks: list[Task]
    batches: list[dict[str, torch.Tensor]]
    clean: dict[str, dict[str, float]]
    model_revision: str
    suite: str  # the suite's name
    data: str
    split: str
    input_size: int
    device: torch.device
    git_commit: str = ""
    snapshot: WeightSnapshot | None = None  # of the model's weights, to check attacks leave them alone
    image_ids: list[str] | None = None  # of the evaluation images, in batch order
    #: what is wrong with an external model itself (checked alone, before any attack): its cells
    #: are invalid with this reason, which blames the model, not the attack
    model_problem: str = ""
    #: the key of its clean evaluation (clean metrics, inspected clean images) in the store
    clean_key: str = ""
    #: a detector target's calibration: threshold, false-positive rates asked and measured
    detection: dict[str, Any] | None = None

    def source(self, member: str) -> tuple[torch.nn.Module, str]:
        """The suite's undefended ``member`` a transfer cell crafts its images on, on this
        context's device, and its revision (:func:`source_model`)."""
        target = Target.of(self.target.suite, member, weights_dir=self.target.weights_dir)
        return source_model(target, str(self.device))

    def ensure_pristine(self) -> None:
        """Reload the model when an attack changed its structure, so that the run's restore of
        its weights (:func:`~benchmark.attacks.validate.run_attack`) could not put it back."""
        if self.snapshot is not None and self.snapshot.needs_reload:
            if self.target.in_memory:
                raise UserError(f"an attack changed the structure of the model {self.target.name!r} (an nn.Module "
                                "of this process, which cannot be reloaded); its cell is invalid, and the rest "
                                "cannot be trusted: evaluate it again without that attack")
            self.model = self.target.load(self.device).model
            self.snapshot = WeightSnapshot(self.model)


#: evaluation sets larger than this are announced before they are prepared (rendering synthetic
#: scenes runs at about 150 a second at 64 x 64)
MANY_IMAGES = 2000


_SOURCES: dict[tuple[Target, str], tuple[torch.nn.Module, str]] = {}
#: source models kept loaded at once (a transfer matrix's cells go target by target, so every
#: source is asked for by each target's cells: a tiny suite's all fit; a full one's are reloaded)
SOURCES_KEPT = 32


def source_model(target: Target, device: str) -> tuple[torch.nn.Module, str]:
    """``target``'s model (loaded like any target, frozen) and revision, kept for the next cell
    that crafts on it; the least recently used is let go past :data:`SOURCES_KEPT`."""
    key = (target, device)
    found = _SOURCES.pop(key, None)
    if found is None:
        loaded = target.load(device)
        found = (loaded.model, loaded.revision)
    _SOURCES[key] = found  # most recently used last
    while len(_SOURCES) > SOURCES_KEPT:
        _SOURCES.pop(next(iter(_SOURCES)))
    return found


def prepare_context(target: Target, images: int | None, batch_size: int, data_root: str | None, *,
                    device: torch.device, store: ResultsStore | None = None, console=None,
                    git_commit: str = "", clean: dict | None = None,
                    module: torch.nn.Module | None = None) -> CellContext:
    """Load ``target`` on ``device`` (an in-memory target's ``module`` is given), its suite's
    evaluation batches and its clean metrics (from ``clean`` when given, else read from / written
    to the store's cache when a store is given, else computed). An external model's outputs are
    checked against the suite's tasks first."""
    deterministic_kernels(device)  # before the model's first matrix product on a GPU
    suite = target.suite_spec
    origin = Origin.MODULE
    if target.in_memory:
        if module is None:
            raise ValueError(f"{target.name}: an in-memory target needs its module")
        model = target.wrap(freeze(module.to(device)))
        revision = f"local-sha256:{model_fingerprint(module)[:16]}"
    else:
        loaded = target.load(device)
        model, revision, origin = loaded.model, loaded.revision, loaded.origin
    tasks = suite.tasks
    input_size = target.input_size
    dataset = suite.data(size=images, data_root=data_root, resolution=input_size)
    if len(dataset) > MANY_IMAGES and console is not None:  # minutes of rendering or reading: say so first
        console.print(f"{target.name}: preparing {len(dataset)} evaluation images ({suite.data_source}) and their "
                      "clean metrics before its first cell", highlight=False, markup=False)
    batches = [to_device(b, device) for b in make_loader(dataset, batch_size)]
    count = sum(b["image"].shape[0] for b in batches)
    ids = image_ids(dataset)[:count]
    problem = ""
    detection = _calibrate(model, suite, data_root, input_size, device, batches)
    if target.external:
        with deployed(model, 0):
            check_outputs(model, tasks, batches[0]["image"], what=f"the model {target.name!r}")
        problem = model_problem(model, batches[0]["image"], name=target.name)
    clean_key = cell_key({"suite": suite.name, "model": target.name, "model_revision": revision,
                          "data": suite.data_source, "split": suite.split, "images": count, "input_size": input_size,
                          "code_version": __version__, "device": device.type,
                          **({"defense": target.defense, "score_draws": target.score_draws}
                             if target.score_draws > 1 else {}),
                          **({"metrics": suite.metrics} if suite.metrics != "ours" else {})})
    if clean is None and store is not None:
        clean = store.get_clean(clean_key)
    if clean is None:
        metrics = TaskMetrics.of(tasks)
        for batch in batches:  # a randomised defense: pooled over its scoring draws, as its attacked images are
            for outputs in deployed_outputs(model, batch["image"], 0, target.score_draws):
                metrics.update(outputs, batch)
        clean = metrics.compute()
        if store is not None:
            store.put_clean(clean_key, suite=suite.name, model=target.name, model_revision=revision,
                            split=suite.split, images=count, metrics=clean, device=str(device),
                            created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    zero = [f"{task} {metric} is {value:g}" for task, values in clean.items() for metric, value in values.items()
            if value == 0 or value != value or value in (float("inf"), float("-inf"))]
    if zero and not problem:  # every ARP of this model would be undefined: no attack budget is spent on it
        problem = (f"the model is degenerate on these images: its clean {'; '.join(zero)}, so ARP (a relative drop) "
                   "is undefined; it has not learned the task (no attack was run)")
    if target.weights_dir and not target.in_memory and origin == Origin.WEIGHTS_DIR:
        problems = degenerate_metrics(clean, tasks, batches)
        if problems:  # before any attack is spent on it
            from rich.text import Text

            from benchmark.progress import make_console

            (console or make_console(stderr=True)).print(Text(
                f"warning: {target.name} from {target.weights_dir} has degenerate clean metrics ({'; '.join(problems)})"
                ": attacks on it measure little; check the checkpoint", style="yellow"), soft_wrap=True)
    if store is not None:
        extra = {"inference": inference_cost(model, batches[0]["image"])}
        # is the evaluation of this target reliable? (checked on every target, so that the pages
        # say of each one which checks ran)
        extra["checks"] = model_checks(model, tasks, batches[0], randomised=_randomised(target))
        extra["origin"] = _ORIGIN_TEXT.get(origin, str(origin))
        if detection is not None:
            extra["detector"] = detection
        store.put_model(suite.name, target.name, revision, {**target.describe(), "clean": clean, **extra})
    return CellContext(target=target, model=model, tasks=tasks, batches=batches, clean=clean,
                       snapshot=WeightSnapshot(model), model_revision=revision, suite=suite.name,
                       data=suite.data_source, split=suite.split, input_size=input_size, device=device,
                       git_commit=git_commit, image_ids=ids, model_problem=problem, clean_key=clean_key,
                       detection=detection)


def _calibrate(model: torch.nn.Module, suite, data_root: str | None, input_size: int, device: torch.device,
               batches: list[dict]) -> dict[str, Any] | None:
    """A detector target's threshold, set on clean held-out images of the suite at its false-positive
    rate, and the rate measured again on the evaluation images (None for any other target)."""
    from benchmark.defenses.detectors import CALIBRATION_IMAGES, CALIBRATION_SPLIT, DetectorModel

    if not isinstance(model, DetectorModel):
        return None
    split = CALIBRATION_SPLIT if suite.synthetic else "train"  # never the evaluation images
    held_out = suite.data(split, size=CALIBRATION_IMAGES, data_root=data_root, resolution=input_size)
    threshold = model.calibrate(b["image"].to(device) for b in make_loader(held_out, 64))
    rejected = torch.cat([model.rejected(b["image"]).cpu() for b in batches])
    return {"threshold": threshold, "fpr_asked": model.defense.fpr, "fpr_eval": 100.0 * float(rejected.float().mean()),
            "calibration": f"{len(held_out)} clean images of the {split} split"}


def ensure_clean_inspection(ctx: CellContext, store: ResultsStore, n: int) -> None:
    """Store the target's first ``n`` clean images with their ground truth, clean predictions and
    clean metrics (the inspection pages' first row), unless the store has them."""
    if n <= 0 or len(store.inspection(ctx.clean_key)) >= n:
        return
    store.put_inspection(ctx.clean_key, clean_inspection(ctx, n))


def clean_inspection(ctx: CellContext, n: int) -> list[bytes]:
    """The target's first ``n`` clean images, their ground truth and clean predictions, encoded
    (:func:`benchmark.runner.inspection.encode_clean`)."""
    from benchmark.evaluation import per_image_metrics
    from benchmark.runner.inspection import encode_clean

    blobs: list[bytes] = []
    seen = 0
    for batch in ctx.batches:
        if seen >= n:
            break
        # the first of a randomised defense's scoring draws, as the adversarial images are shown
        draws = deployed_outputs(ctx.model, batch["image"], 0, ctx.target.score_draws)
        try:
            outputs = next(draws)
        finally:
            draws.close()  # the defense's deployed state is left at once
        metrics = [{t: m.compute() for t, m in one.items()} for one in per_image_metrics(ctx.tasks, outputs, batch)]
        ids = (ctx.image_ids or [])[seen:seen + batch["image"].shape[0]]
        blobs += encode_clean(batch, outputs, ctx.tasks, n - seen, metrics, list(ids))
        seen += batch["image"].shape[0]
    return blobs


#: how the pages name where a model's weights came from
_ORIGIN_TEXT = {Origin.SHIPPED: "shipped with mtlbench, sha256 pinned in the manifest",
                Origin.HUB: "Hugging Face Hub, pinned revision", Origin.LOCAL: "built locally from the recipe",
                Origin.WEIGHTS_DIR: "--weights-dir", Origin.DEFENDED: "defended checkpoint",
                Origin.EXTERNAL: "brought by the user", Origin.MODULE: "brought by the user (in memory)"}


def _randomised(target: Target) -> bool:
    from benchmark.defenses import create_defense

    return bool(target.defense) and bool(getattr(create_defense(target.defense), "randomised", False))


def inference_cost(model: torch.nn.Module, images: torch.Tensor, repeats: int = 5) -> dict[str, Any]:
    """What one deployed prediction of ``model`` costs: forward passes of the network inside (a
    defense's draws or ensemble members), seconds per image (the median of ``repeats`` timed
    predictions of the batch ``images``) and, for a model behind an inference-time defense, its
    time relative to the bare network's, both timed in this process, interleaved (the median of the
    per-repeat ratios), so that the ratio is not the load of two different runs. A model that is its
    own network (a member, or one retrained by a training defense: the same architecture) has a
    ratio of 1 by construction."""
    import statistics
    import time

    from benchmark.attacks.base import PassCounter

    inner = getattr(model, "counted_module", model)
    counter = PassCounter().attach(inner)
    times, ratios = [], []
    try:
        with torch.no_grad():
            for i in range(repeats):
                with deployed(model, i):
                    start = time.perf_counter()
                    model(images)
                    times.append(time.perf_counter() - start)
                if inner is not model:
                    counter.detach()
                    start = time.perf_counter()
                    inner(images)
                    ratios.append(times[-1] / max(time.perf_counter() - start, 1e-9))
                    counter.attach(inner)
    finally:
        counter.detach()
    return {"passes_per_prediction": counter.forward / repeats,
            "s_per_image": statistics.median(times) / images.shape[0],
            "time_ratio": statistics.median(ratios) if ratios else 1.0,
            "time_ratio_how": ("against the bare network, interleaved in one process" if ratios
                               else "the same network: 1 by construction")}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"
