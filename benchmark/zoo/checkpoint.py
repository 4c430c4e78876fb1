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

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "CheckpointError", "CheckpointInfo", "file_sha256", "load_checkpoint",
           "read_config", "save_checkpoint"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
FORMAT_VERSION = 1


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
            "format": FORMAT_VERSION, "model": self.model.to_dict(), "dataset": self.dataset, "suite": self.suite,
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


def save_checkpoint(model: BranchedModel, info: CheckpointInfo, directory: str | Path) -> str:
    """Write ``model`` and ``info`` as a Hub-style directory; returns the weights' sha256.
    Files are written under temporary names and renamed, so a killed process never leaves a
    directory that looks complete but is not."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    info.created = info.created or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
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
        model = ModelConfig(**raw["model"])
        Layout.parse(model.layout, num_tasks=len(model.tasks))
        return CheckpointInfo(model=model, dataset=raw["dataset"], suite=raw.get("suite", ""),
                              member=raw.get("member", ""), training=raw.get("training", {}),
                              clean_metrics=raw.get("clean_metrics", {}), input_size=raw.get("input_size"),
                              mtlbench_version=raw.get("mtlbench_version", "?"), created=raw.get("created", ""),
                              source=raw.get("source", ""), defense=raw.get("defense") or {})
    except (json.JSONDecodeError, KeyError, TypeError, LayoutError) as exc:
        raise CheckpointError(f"{path}: not a valid mtlbench config ({type(exc).__name__}: {exc})") from None


def load_checkpoint(directory: str | Path, *, sha256: str = "", expect: dict[str, Any] | None = None,
                    device: str | torch.device = "cpu") -> tuple[BranchedModel, CheckpointInfo]:
    """Load a checkpoint directory. ``sha256`` (when given) must match the weights file;
    ``expect`` maps ModelConfig fields (layout, backbone, width, ...) to the values a manifest
    requires. Returns the model in eval mode and its info."""
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
            raise CheckpointError(f"{weights}: sha256 {actual} does not match the pinned {sha256}; the file is "
                                  "corrupt or was changed. Delete it and download again (or rebuild it)")
    for key, wanted in (expect or {}).items():
        have = getattr(info.model, key)
        if key == "layout":
            num_tasks = len(info.model.tasks)
            same = Layout.parse(str(have), num_tasks=num_tasks) == Layout.parse(str(wanted), num_tasks=num_tasks)
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
    model = BranchedModel.from_config(info.model)
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
    recipe = ", ".join(f"{k}={v}" for k, v in info.training.items()) or "(none recorded)"
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
{defense}
## Clean metrics

| task | metrics |
|---|---|
{metrics}

## Use

{_usage(info)}
"""


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
