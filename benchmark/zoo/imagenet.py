"""ImageNet initialisation of the full suites' members, as the paper's members start.

The paper's branched models (TreeMTL, from AdaShare's Deeplab-ResNet34 and MobileNetV2) all
start from one ImageNet-pretrained backbone. ``init = "imagenet"`` in a full suite's
``[training]`` table does the same: the backbone's ImageNet weights are read from the Hugging Face
Hub as safetensors, at a pinned revision whose file's sha256 is checked (``[training.imagenet]``:
``repo_id``, ``revision``, ``sha256``, ``file``; the defaults below), through huggingface_hub's cache
(``HF_HUB_OFFLINE=1`` reads the cache only). No timm, torchvision or transformers code is imported
and no pickle is read: the tensors are mapped onto our blocks layer by layer, every convolution
and batch norm in the order the network runs them, each with a shape check. Every copy of block
``i`` in every member then takes the ImageNet block ``i`` (the heads come from one seeded draw).

Two namings are read: torchvision's / timm's ResNet (``conv1``, ``layer1.0.conv1``, ...) and
transformers' (``resnet.embedder.embedder.convolution``, ``resnet.encoder.stages.0.layers.0
.layer.0.convolution``, ...); timm's MobileNetV2 (``conv_stem``, ``blocks.1.0.conv_pw``, ...,
``conv_head``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmark.errors import UserError
from benchmark.zoo.checkpoint import CheckpointError, file_sha256

__all__ = ["DEFAULT_SOURCES", "ImagenetSource", "download_imagenet", "fetch_command", "imagenet_blocks"]


@dataclass(frozen=True)
class ImagenetSource:
    """Where a backbone's ImageNet weights are: a Hub repo, a pinned commit, the file and its sha256."""

    repo_id: str
    revision: str
    sha256: str
    file: str = "model.safetensors"

    @classmethod
    def from_table(cls, backbone: str, table: dict | None) -> ImagenetSource:
        default = DEFAULT_SOURCES.get(backbone)
        values = {**(default.__dict__ if default else {}), **(table or {})}
        missing = [k for k in ("repo_id", "revision", "sha256") if not values.get(k)]
        if missing:
            raise UserError(f"ImageNet weights of {backbone}: no {', '.join(missing)} (give them in "
                            "[training.imagenet])")
        return cls(**values)

    def to_dict(self) -> dict[str, str]:
        return dict(self.__dict__)


#: the ImageNet weights the full suites start from (the Hub pages show each file's sha256)
DEFAULT_SOURCES = {
    # ResNet-34 trained on ImageNet-1k (transformers' ResNetForImageClassification), safetensors
    "resnet34": ImagenetSource("microsoft/resnet-34", "4d180fbdc81b4d5d4eaa86ab89bdd669200dd477",
                               "1096166c7cf216a7320a6b67b754b1776b99205a44d070c6cb52429af2d136bb"),
    # MobileNetV2 (width 1.0) trained on ImageNet-1k by timm (RandAugment recipe)
    "mobilenetv2": ImagenetSource("timm/mobilenetv2_100.ra_in1k", "f3ff81ba89de0bc46b546568ebeab2edef6b9d49",
                                  "55ea4fb3a96010b933710ebf44fc965b070d5cd054d3f35e44f2d1320b4a714e"),
}


def fetch_command(source: ImagenetSource) -> str:
    """The command that puts the weights file into the Hugging Face cache (on a machine with network)."""
    return (f"python -c \"from huggingface_hub import hf_hub_download; print(hf_hub_download('{source.repo_id}', "
            f"'{source.file}', revision='{source.revision}'))\"")


def download_imagenet(source: ImagenetSource, *, cache_dir: str | Path | None = None,
                      local_file: str | Path | None = None) -> Path:
    """The weights file at the pinned revision, its sha256 checked: ``local_file`` (a copy the
    user brings, e.g. from a machine with network: ``--imagenet-file`` or ``MTLBENCH_IMAGENET_FILE``),
    else from the Hub or its cache. Every failure says the exact command that fetches the file,
    where the cache keeps it, and the option that takes a local copy."""
    import os

    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    from benchmark.zoo.hub import hub_offline

    label = f"{source.repo_id}@{source.revision}/{source.file}"
    local_file = local_file or os.environ.get("MTLBENCH_IMAGENET_FILE") or None
    cache = Path(cache_dir) if cache_dir else Path(constants.HF_HUB_CACHE)
    how = (f"fetch it on a machine with network ({fetch_command(source)}; the file lands under {cache}), then copy "
           "the Hugging Face cache here or pass the file with --imagenet-file PATH (or MTLBENCH_IMAGENET_FILE=PATH): "
           f"it is checked against the pinned sha256 {source.sha256}")
    if local_file:
        path = Path(local_file)
        if not path.is_file():
            raise UserError(f"ImageNet weights: --imagenet-file {path} is not a file")
    else:
        try:
            path = Path(hf_hub_download(source.repo_id, source.file, revision=source.revision, cache_dir=cache_dir,
                                        local_files_only=hub_offline()))
        except LocalEntryNotFoundError:
            raise UserError(f"ImageNet weights {label}: not in the Hugging Face cache ({cache}) and downloads are off "
                            f"(HF_HUB_OFFLINE=1); {how}") from None
        except (HfHubHTTPError, OSError) as exc:
            raise UserError(f"ImageNet weights {label}: the download failed ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0][:200]}); without network, set HF_HUB_OFFLINE=1 to fail at once "
                            f"and {how}") from None
    actual = file_sha256(path)
    if actual != source.sha256:
        raise CheckpointError(f"ImageNet weights {label}: {path} has sha256 {actual}, not the pinned "
                              f"{source.sha256}; it is corrupt or another file: delete {path} and {how}")
    return path


def _pairs(module: nn.Module) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """Every convolution of ``module`` with the batch norm that follows it, in registration order
    (the order our blocks run them: a residual block's projection shortcut last)."""
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    out = []
    for conv, bn in zip(convs[::2], convs[1::2], strict=True):
        if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)):
            raise TypeError("a convolution without its batch norm")
        out.append((conv, bn))
    return out


_RESNET_TV = re.compile(r"layer(\d)\.(\d+)\.(conv1|bn1|conv2|bn2|downsample\.0|downsample\.1)\.")
_RESNET_HF = re.compile(r"resnet\.encoder\.stages\.(\d)\.layers\.(\d+)\.(layer\.0|layer\.1|shortcut)\.")
_MBV2 = re.compile(r"blocks\.(\d+)\.(\d+)\.(conv_pw|conv_dw|conv_pwl|bn1|bn2|bn3)\.")


def _source_pairs(state: dict[str, torch.Tensor], backbone: str) -> list[tuple[str, str]]:
    """(convolution, batch norm) name prefixes of the ImageNet weights, in the order the network
    runs them (as :func:`_pairs` lists ours)."""
    keys = set(state)
    if backbone == "resnet34" and "conv1.weight" in keys:  # torchvision / timm
        pairs = [("conv1.", "bn1.")]
        blocks = sorted({(int(m[1]), int(m[2])) for k in keys if (m := _RESNET_TV.match(k))})
        for layer, b in blocks:
            p = f"layer{layer}.{b}."
            pairs += [(p + "conv1.", p + "bn1."), (p + "conv2.", p + "bn2.")]
            if p + "downsample.0.weight" in keys:
                pairs.append((p + "downsample.0.", p + "downsample.1."))
        return pairs
    if backbone == "resnet34" and "resnet.embedder.embedder.convolution.weight" in keys:  # transformers
        pairs = [("resnet.embedder.embedder.convolution.", "resnet.embedder.embedder.normalization.")]
        blocks = sorted({(int(m[1]), int(m[2])) for k in keys if (m := _RESNET_HF.match(k))})
        for stage, b in blocks:
            p = f"resnet.encoder.stages.{stage}.layers.{b}."
            pairs += [(p + f"layer.{i}.convolution.", p + f"layer.{i}.normalization.") for i in (0, 1)]
            if p + "shortcut.convolution.weight" in keys:
                pairs.append((p + "shortcut.convolution.", p + "shortcut.normalization."))
        return pairs
    if backbone == "mobilenetv2" and "conv_stem.weight" in keys:  # timm
        pairs = [("conv_stem.", "bn1.")]
        blocks = sorted({(int(m[1]), int(m[2])) for k in keys if (m := _MBV2.match(k))})
        for stage, b in blocks:
            p = f"blocks.{stage}.{b}."
            if p + "conv_pwl.weight" in keys:  # inverted residual: expand, depthwise, project
                pairs += [(p + "conv_pw.", p + "bn1."), (p + "conv_dw.", p + "bn2."), (p + "conv_pwl.", p + "bn3.")]
            else:  # the first block: depthwise, project
                pairs += [(p + "conv_dw.", p + "bn1."), (p + "conv_pw.", p + "bn2.")]
        return [*pairs, ("conv_head.", "bn2.")]
    raise CheckpointError(f"the ImageNet weights are not a {backbone} this mtlbench can read (it reads torchvision, "
                          "timm and transformers namings); e.g. "
                          f"{', '.join(sorted(keys)[:3])}")


def imagenet_blocks(path: str | Path, backbone: str, width: float, output_stride: int | None) -> list[dict]:
    """Our backbone's 5 blocks' state dicts with the ImageNet weights in ``path`` (every
    convolution and batch norm mapped in order, each shape checked)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from benchmark.models.backbones import build_backbone

    if abs(width - 1.0) > 1e-9:
        raise UserError(f"ImageNet weights exist for the full-width {backbone} (width 1), not width {width:g}")
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from None
    trunk = build_backbone(backbone, width=width, output_stride=output_stride)
    ours = [_pairs(block) for block in trunk.blocks]
    theirs = _source_pairs(state, backbone)
    flat = [pair for block in ours for pair in block]
    if len(flat) != len(theirs):
        raise CheckpointError(f"{path}: {len(theirs)} convolutions with batch norms, our {backbone} has {len(flat)}")
    with torch.no_grad():
        for (conv, bn), (src_conv, src_bn) in zip(flat, theirs, strict=True):
            sources = {conv.weight: src_conv + "weight", bn.weight: src_bn + "weight", bn.bias: src_bn + "bias",
                       bn.running_mean: src_bn + "running_mean", bn.running_var: src_bn + "running_var"}
            for target, name in sources.items():
                value = state.get(name)
                if value is None:
                    raise CheckpointError(f"{path}: no tensor {name}")
                if tuple(value.shape) != tuple(target.shape):
                    raise CheckpointError(f"{path}: {name} has shape {tuple(value.shape)}, our layer "
                                          f"{tuple(target.shape)}")
                target.copy_(value.to(target.dtype))
    return [block.state_dict() for block in trunk.blocks]
