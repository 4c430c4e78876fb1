"""The checkpoint format: a Hub-style repo directory.

```
<dir>/model.safetensors   the state dict (safetensors: no pickle is ever loaded)
<dir>/config.json         model config (layout, backbone, width, tasks, heads), dataset, training
                          recipe, clean metrics, mtlbench version
<dir>/README.md           model card with Hub metadata (YAML front matter)
```
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from benchmark.errors import UserError
from benchmark.models.branched import BranchedModel, ModelConfig
from benchmark.models.layouts import Layout, LayoutError
from benchmark.version import __version__

__all__ = ["CONFIG_FILE", "STORAGE_DTYPES", "WEIGHTS_FILE", "CheckpointError", "CheckpointInfo", "file_sha256",
           "load_checkpoint", "read_config", "round_weights", "save_checkpoint", "storage_dtype"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
#: 2: ``model.tasks`` is a list of ``[name, channels]`` pairs. Format 1 wrote a table, which the
#: sorted JSON put in alphabetical order, losing the task ids the layout refers to (read back in
#: the data set's task order, the order every mtlbench model is built in).
FORMAT_VERSION = 2


class CheckpointError(UserError):
    """A checkpoint directory that cannot be used (missing file, bad hash, wrong config...)."""


@dataclass
class CheckpointInfo:
    """What ``config.json`` says besides the model architecture."""

    model: ModelConfig
    dataset: str
    suite: str = ""
    member: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    clean_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    input_size: int | None = None
    mtlbench_version: str = __version__
    created: str = ""
    source: str = "mtlbench"
    #: a training defense's record: its spec, the attack it trained with, the recipe and the
    #: parent weights' sha256 (empty for an undefended model)
    defense: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # where this copy was loaded from: hub, local or weights-dir (not stored)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT_VERSION,
            # the tasks' order is their ids in the layout: a list keeps it (the JSON is written sorted)
            "model": {**self.model.to_dict(), "tasks": [[name, ch] for name, ch in self.model.tasks.items()]},
            "dataset": self.dataset, "suite": self.suite,
            "member": self.member, "input_size": self.input_size, "training": self.training,
            "clean_metrics": self.clean_metrics, "mtlbench_version": self.mtlbench_version,
            "created": self.created, "source": self.source,
            **({"defense": self.defense} if self.defense else {}),
        }


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


#: the storage precisions a checkpoint's floating-point tensors may have (loaded into the model's own)
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def storage_dtype(tensor: torch.Tensor, dtype: str) -> torch.dtype:
    """The dtype ``tensor`` is stored in when a checkpoint asks for ``dtype``: that precision for a
    floating-point tensor whose values fit its range, else the tensor's own (integers, and e.g. the
    running variance of a BatchNorm on 0-255 inputs, above float16's largest value 65504)."""
    low = STORAGE_DTYPES[dtype]
    if not tensor.is_floating_point() or tensor.dtype == low:
        return tensor.dtype
    if tensor.numel() and tensor.detach().abs().max().item() > torch.finfo(low).max:
        return tensor.dtype
    return low


def round_weights(model: torch.nn.Module, dtype: str) -> torch.nn.Module:
    """Round every floating-point parameter and buffer of ``model`` to its storage dtype under
    ``dtype`` (:func:`storage_dtype`; kept in the model's own dtype), in place: the model then holds
    exactly what a checkpoint stored in ``dtype`` loads back."""
    with torch.no_grad():
        for tensor in model.state_dict().values():
            stored = storage_dtype(tensor, dtype)
            if stored != tensor.dtype:
                tensor.copy_(tensor.to(stored))
    return model


def save_checkpoint(model: BranchedModel, info: CheckpointInfo, directory: str | Path, *,
                    dtype: str = "float32") -> str:
    """Write ``model`` and ``info`` as a Hub-style directory, floating-point tensors stored in
    ``dtype`` where they fit (:func:`storage_dtype`; round the model with :func:`round_weights`
    first to keep it equal to its file);
    returns the weights' sha256. Files are written under temporary names and renamed, so a killed
    process never leaves a directory that looks complete but is not."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    info.created = info.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    state = {k: v.detach().to(storage_dtype(v, dtype)).contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    # one metadata key: safetensors writes the metadata map in a per-process random order, so two
    # keys would give the same weights a different file hash in every process
    save_file(state, str(tmp), metadata={"format": "pt"})
    digest = file_sha256(tmp)
    (out / (CARD_FILE + ".tmp")).write_text(model_card(info, model, digest))
    (out / (CONFIG_FILE + ".tmp")).write_text(json.dumps(info.to_dict(), indent=1, sort_keys=True))
    # the config goes last: its presence marks a complete checkpoint
    for name in (WEIGHTS_FILE, CARD_FILE, CONFIG_FILE):
        (out / (name + ".tmp")).replace(out / name)
    return digest


def read_config(directory: str | Path) -> CheckpointInfo:
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise CheckpointError(f"{directory}: no {CONFIG_FILE}; a checkpoint directory holds {WEIGHTS_FILE}, "
                              f"{CONFIG_FILE} and {CARD_FILE}")
    try:
        raw = json.loads(path.read_text())
        model = ModelConfig(**{**raw["model"], "tasks": _task_order(raw)})
        _check_model_config(model, path)
        Layout.parse(model.layout, num_tasks=len(model.tasks))
        return CheckpointInfo(model=model, dataset=raw["dataset"], suite=raw.get("suite", ""),
                              member=raw.get("member", ""), training=raw.get("training", {}),
                              clean_metrics=raw.get("clean_metrics", {}), input_size=raw.get("input_size"),
                              mtlbench_version=raw.get("mtlbench_version", "?"), created=raw.get("created", ""),
                              source=raw.get("source", ""), defense=raw.get("defense") or {})
    except (json.JSONDecodeError, KeyError, TypeError, LayoutError) as exc:
        raise CheckpointError(f"{path}: not a valid mtlbench config ({type(exc).__name__}: {exc})") from None


def _task_order(raw: dict) -> Any:
    """The config's tasks in their id order: format 2 lists them; format 1's table was sorted by
    name when written, so it is put back in the data set's order when its names are that data
    set's tasks (how every model was built)."""
    tasks = raw["model"].get("tasks")
    if isinstance(tasks, list):
        if not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in tasks):
            return tasks  # refused by _check_model_config with the field named
        return {name: ch for name, ch in tasks}
    if isinstance(tasks, dict) and raw.get("format", 1) < 2:
        from benchmark.tasks import get_tasks, list_datasets

        dataset = str(raw.get("dataset", "")).removeprefix("synthetic-")
        if dataset in list_datasets():
            order = [t.name for t in get_tasks(dataset)]
            if sorted(order) == sorted(tasks):
                return {name: tasks[name] for name in order}
    return tasks


def _check_model_config(cfg: ModelConfig, path: Path) -> None:
    """Refuse a config whose fields have the wrong type or range (a width written as a string, a
    task with 0 channels), naming the field, before any model is built from it."""
    def bad(key: str, want: str, value: Any) -> CheckpointError:
        return CheckpointError(f"{path}: model.{key} must be {want}, got {value!r}")

    def number(value: Any) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    if not isinstance(cfg.layout, str):
        raise bad("layout", "a layout string", cfg.layout)
    if not isinstance(cfg.tasks, dict) or not cfg.tasks or not all(
            isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 4096
            for k, v in cfg.tasks.items()):
        raise bad("tasks", "a table of task names to channel counts (1-4096)", cfg.tasks)
    if not isinstance(cfg.backbone, str):
        raise bad("backbone", "a backbone name", cfg.backbone)
    if not number(cfg.width) or not 0.01 <= cfg.width <= 8:
        raise bad("width", "a number in [0.01, 8]", cfg.width)
    for key in ("output_stride", "head_hidden"):
        value = getattr(cfg, key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 4096):
            raise bad(key, "an integer in [1, 4096] or null", value)
    if not isinstance(cfg.head_rates, list | tuple) or not cfg.head_rates or not all(
            isinstance(r, int) and not isinstance(r, bool) and 1 <= r <= 1024 for r in cfg.head_rates):
        raise bad("head_rates", "a list of dilation rates (integers in [1, 1024])", cfg.head_rates)


#: what to do about a downloaded or built weights file that does not match its pinned sha256
REDOWNLOAD = "the file is corrupt or was changed: delete it and download again (or rebuild it)"


def load_checkpoint(directory: str | Path, *, sha256: str = "", expect: dict[str, Any] | None = None,
                    device: str | torch.device = "cpu",
                    remedy: str = REDOWNLOAD) -> tuple[BranchedModel, CheckpointInfo]:
    """Load a checkpoint directory. ``sha256`` (when given) must match the weights file (else the
    error says ``remedy``); ``expect`` maps ModelConfig fields (layout, backbone, width, ...) to the
    values a manifest requires. Returns the model in eval mode and its info."""
    d = Path(directory)
    if not d.is_dir():
        raise CheckpointError(f"checkpoint directory {d} does not exist")
    info = read_config(d)
    weights = d / WEIGHTS_FILE
    if not weights.exists():
        raise CheckpointError(f"{d}: {WEIGHTS_FILE} is missing")
    if sha256:
        actual = file_sha256(weights)
        if actual != sha256:
            raise CheckpointError(f"{weights}: sha256 {actual} does not match the pinned {sha256}; {remedy}")
    for key, wanted in (expect or {}).items():
        have = getattr(info.model, key)
        if key == "layout":
            num_tasks = len(info.model.tasks)
            same = Layout.parse(str(have), num_tasks=num_tasks) == Layout.parse(str(wanted), num_tasks=num_tasks)
        elif isinstance(wanted, dict):  # tasks: names, channels and their order (the outputs' order)
            same = isinstance(have, dict) and list(have.items()) == list(wanted.items())
        elif isinstance(wanted, float):
            same = abs(float(have) - wanted) < 1e-9
        else:
            same = (list(have) if isinstance(have, list | tuple) else have) == (
                list(wanted) if isinstance(wanted, list | tuple) else wanted)
        if not same:
            raise CheckpointError(f"{d / CONFIG_FILE}: model.{key} is {have!r}, but the suite manifest says "
                                  f"{wanted!r}; this checkpoint belongs to another model")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{weights}: not a readable safetensors file ({exc})") from None
    try:
        model = BranchedModel.from_config(info.model)
    except (ValueError, KeyError, LayoutError) as exc:
        raise CheckpointError(f"{d / CONFIG_FILE}: cannot build the model it describes ({exc})") from None
    expected = model.state_dict()
    for name, tensor in state.items():
        want = expected.get(name)
        if want is None:
            continue
        if tuple(tensor.shape) != tuple(want.shape):
            raise CheckpointError(f"{weights}: tensor {name} has shape {tuple(tensor.shape)}, but the config's model "
                                  f"needs {tuple(want.shape)}; the weights and config.json do not belong together")
        stored_float = tensor.dtype in STORAGE_DTYPES.values() and want.is_floating_point()
        if tensor.dtype != want.dtype and not stored_float:
            # integer weights would be cast silently (and wrongly) by load_state_dict; floating-point
            # ones may be stored in a lower precision and are loaded into the model's
            raise CheckpointError(f"{weights}: tensor {name} is {tensor.dtype}, the model's is {want.dtype}; "
                                  "weights are stored in the model's own dtypes (floating-point ones may be "
                                  f"{', '.join(STORAGE_DTYPES)})")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{weights}: the weights do not fit the config ({len(missing)} missing, e.g. "
                              f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]})")
    for name, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{weights}: tensor {name} holds NaN or inf values")
    return model.to(device).eval(), info


def model_card(info: CheckpointInfo, model: BranchedModel, sha256: str) -> str:
    """README.md with Hub metadata for a checkpoint."""
    cfg = info.model
    metrics = "\n".join(f"| {task} | " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()) + " |"
                        for task, m in info.clean_metrics.items()) or "| (not measured) | |"
    recipe = ", ".join(f"{k}={v}" for k, v in info.training.items() if k != "pretext") or "(none recorded)"
    init = _init_text(info.training)
    defense = ""
    if info.defense:
        d = info.defense
        defense = (f"| defense | `{d.get('spec')}`: trained with the attack `{d.get('attack')}` from the parent "
                   f"weights sha256 `{d.get('parent_sha256')}` |\n")
    return f"""---
library_name: mtlbench
license: mit
tags:
- mtlbench
- multi-task-learning
- adversarial-robustness
- {cfg.backbone}
datasets:
- {info.dataset}
---

# {info.suite + '/' if info.suite else ''}{info.member or cfg.layout}

A branched multi-task {cfg.backbone} (width {cfg.width}) for {', '.join(cfg.tasks)}, layout
`{cfg.layout}` in TreeMTL notation, trained on `{info.dataset}`. Part of the
[mtlbench](https://github.com/mtlbench/mtlbench) suites for adversarial robustness of
multi-task models.

| | |
|---|---|
| backbone parameters | {model.backbone_parameters():,} |
| head parameters | {model.head_parameters():,} |
| input size | {info.input_size} |
| weights sha256 | `{sha256}` |
| mtlbench | {info.mtlbench_version} |
| training | {recipe} |
{init}{defense}
## Clean metrics

| task | metrics |
|---|---|
{metrics}

## Use

{_usage(info)}
"""


def _init_text(training: dict[str, Any]) -> str:
    """The card's row on where training started (empty when the recipe does not say)."""
    if training.get("init") == "pretext":
        p = training.get("pretext", {})
        return (f"| initialisation | the suite's common backbone, pre-trained for {p.get('steps')} steps on the "
                f"`{p.get('objective')}` pretext objective (no task labels; weights sha256 `{p.get('sha256')}`), "
                "the heads from the suite's common seeded draw; then trained on its tasks |\n")
    if training.get("init") == "imagenet":
        src = training.get("imagenet", {})
        return (f"| initialisation | the backbone's ImageNet weights (`{src.get('repo_id')}` at revision "
                f"`{src.get('revision')}`, file sha256 `{src.get('sha256')}`), the heads from the suite's common "
                "seeded draw; then trained on its tasks |\n")
    if training.get("init") == "warm_start" or training.get("warm_start"):
        return f"| initialisation | fine-tuned from the suite's `{training.get('warm_start')}` member |\n"
    if training.get("init") == "scratch":
        return "| initialisation | random (seeded by the member's name) |\n"
    return ""


def _usage(info: CheckpointInfo) -> str:
    """The card's code snippet: it runs as written once mtlbench is installed (``pip install
    mtlbench``), from the suite's name for a member of a standard suite, else from this folder."""
    size = info.input_size or 64
    if info.suite and info.member and _is_standard_suite(info.suite) and not info.defense:
        load = (f'from benchmark.zoo import load_model\n\n'
                f'model, info = load_model("{info.suite}", "{info.member}")  # eval mode; downloaded or built once\n')
    else:
        load = ('from benchmark.zoo import load_checkpoint\n\n'
                'model, info = load_checkpoint(".")  # this folder: model.safetensors + config.json\n')
    return (f"```python\nimport torch\n{load}"
            f"images = torch.rand(2, 3, {size}, {size})  # RGB in [0, 1]; the normalisation is inside the model\n"
            "outputs = model(images)  # {task: (B, C, H, W)}\n"
            "print({task: tuple(out.shape) for task, out in outputs.items()})\n```")


def _is_standard_suite(name: str) -> bool:
    from benchmark.suites import list_suites

    return name in list_suites()
