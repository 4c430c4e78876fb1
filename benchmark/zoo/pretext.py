"""The common initialisation of a tiny suite's members: a backbone pre-trained once on a pretext
objective, in the role that ImageNet pre-training plays for the paper's models.

The paper's members (TreeMTL's branched models) all start from the same ImageNet-pretrained
backbone and are then trained on their tasks. The tiny suites cannot download ImageNet weights, so
their backbone is pre-trained once, per suite, on a self-supervised objective over synthetic scenes
drawn with another seed than the training scenes, reading their images only (no task's ground
truth): by default **rotation prediction** (RotNet, Gidaris et al. 2018: each image in its 4
rotations, a linear classifier on the globally pooled last block tells which; a classification
objective, as ImageNet's), or **masked-image modelling** (``objective = "masked"``: reconstruct the
pixels of hidden 8x8 patches from the rest of the image, as SparK / FCMAE do for convolutional
networks). Every copy of block ``i`` in every member then starts from the pre-trained block ``i``
(BatchNorm statistics included), and every member's heads from one seeded random draw, so all
members of a suite start from one initialisation and each block copy then learns only from the
tasks of its task set.

Why rotation is the default, from AS and IND of ``tiny-nyuv2-resnet34`` trained 100 steps from each
start (each pretext 200 steps of 16 images; 64 clean test scenes; PGD-5 GB-MTA at eps 8/255 on 16
of them): rotation gives mIoU 0.151 / 0.160
and ARP 28.5 / 15.9 (random initialisation: 0.144 / 0.124, ARP 27.3 / 8.4); masked modelling lowers
the depth error (0.80 against 1.00) but makes every member about equally hard to attack (ARP 12.7
on AS, 10.4 on IND), flattening the effect of sharing that the paper studies.

The result is saved in the local zoo next to the members (``<zoo>/<suite>/_pretext/``: the blocks
as safetensors and a ``config.json`` with the recipe, the training version and the weights'
sha256). Like ImageNet weights, it is pre-trained once: the backbone of each tiny suite ships with
mtlbench (``benchmark/zoo/weights/<suite>/_pretext/``, the folder that ``mtlbench zoo build SUITE
--pretrain`` writes, copied byte for byte) and a build copies it into the zoo when its recipe, architecture and
training version are the manifest's; otherwise (another recipe, a suite of one's own, or
``--pretrain``) the backbone is pre-trained here, which ``tests/test_pretext.py`` checks gives the
shipped weights.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from benchmark.errors import UserError
from benchmark.models.backbones import build_backbone
from benchmark.models.branched import PAPER_MEAN, BranchedModel, set_key
from benchmark.suites import PRETEXT_OBJECTIVES, PretextRecipe
from benchmark.training import optimise
from benchmark.zoo.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, file_sha256

__all__ = ["OBJECTIVES", "PretextModel", "PretextRecipe", "head_seed", "init_from_pretext",
           "load_pretext", "pretrain_backbone", "save_pretext"]

OBJECTIVES = PRETEXT_OBJECTIVES  # the first is the default


class PretextModel(nn.Module):
    """The backbone's 5 blocks in a chain (the all-shared layout) and the pretext objective's small
    head, which is dropped after pre-training.

    * ``masked`` (masked-image modelling, as SparK / ConvNeXt V2's FCMAE do for convolutional
      networks): a random 60% of the image's 8x8 patches are replaced by grey and a 1x1 convolution
      on the last feature map reconstructs each masked patch's pixels (mean squared error over the
      masked pixels);
    * ``rotation`` (RotNet): each image in its 4 rotations, a linear classifier on the globally
      pooled last feature map tells the rotation.
    """

    PATCH = 8
    MASK_RATIO = 0.6

    def __init__(self, objective: str, *, backbone: str, width: float, output_stride: int | None) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise UserError(f"unknown pretext objective {objective!r}; known: {', '.join(OBJECTIVES)}")
        trunk = build_backbone(backbone, width=width, output_stride=output_stride)
        self.objective = objective
        self.stride = trunk.output_stride
        self.blocks = nn.ModuleList(trunk.blocks)
        self.head = (nn.Linear(trunk.feature_dim, 4) if objective == "rotation"
                     else nn.Conv2d(trunk.feature_dim, 3 * trunk.output_stride**2, 1))
        self.register_buffer("mean", torch.tensor(PAPER_MEAN).view(1, 3, 1, 1), persistent=False)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flip(1) * 255.0 - self.mean.to(x.dtype)  # the members' input normalisation
        for block in self.blocks:
            h = block(h)
        return h

    def loss(self, images: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The pretext loss of a batch of images and a score of how well it is solved (rotation:
        accuracy; masked: the fraction of the masked pixels' variance explained)."""
        if self.objective == "rotation":
            rotated = torch.cat([torch.rot90(images, k, dims=(2, 3)) for k in range(4)])
            labels = torch.arange(4, device=images.device).repeat_interleave(images.shape[0])
            logits = self.head(self.features(rotated).mean((2, 3)))
            return F.cross_entropy(logits, labels), (logits.argmax(1) == labels).float().mean().item()
        b, _, h, w = images.shape
        grid = (-(-h // self.PATCH), -(-w // self.PATCH))
        keep = torch.rand(b, 1, *grid, device=images.device) >= self.MASK_RATIO
        mask = (~keep).float().repeat_interleave(self.PATCH, 2).repeat_interleave(self.PATCH, 3)[..., :h, :w]
        masked = images * (1 - mask) + 0.5 * mask
        recon = F.pixel_shuffle(self.head(self.features(masked)), self.stride)[..., :h, :w]
        err = ((recon - images) ** 2 * mask).sum() / (3 * mask.sum()).clamp_min(1.0)
        var = (((images - images.mean()) ** 2) * mask).sum() / (3 * mask.sum()).clamp_min(1.0)
        return err, 1.0 - (err / var.clamp_min(1e-12)).item()


def pretrain_backbone(model: PretextModel, dataset, recipe: PretextRecipe, *, device: str = "cpu",
                      progress: Callable[[int, float], None] | None = None) -> dict[str, float]:
    """Train ``model`` in place on its pretext objective over ``dataset``'s images (their labels
    are never read). Deterministic for a given seed on a given device."""
    if len(dataset) == 0:
        raise UserError("the pretext image set is empty")
    scores: list[float] = []

    def loss_fn(batch: dict) -> torch.Tensor:
        loss, score = model.loss(batch["image"])
        scores.append(score)
        return loss

    stats = optimise(model, dataset, loss_fn, recipe, device=device, progress=progress)
    tail = scores[-20:]
    return {**stats, "score": sum(tail) / len(tail)}


def save_pretext(model: PretextModel, meta: dict, directory: str | Path) -> str:
    """Write the pre-trained blocks (``block{i}.<param>``; the pretext head is not kept) and
    ``config.json``; returns the weights' sha256."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    state = {f"block{i}.{k}": v.detach().cpu().contiguous()
             for i, block in enumerate(model.blocks) for k, v in block.state_dict().items()}
    tmp = out / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": "mtlbench-pretext"})
    tmp.replace(out / WEIGHTS_FILE)
    digest = file_sha256(out / WEIGHTS_FILE)
    (out / CONFIG_FILE).write_text(json.dumps({**meta, "sha256": digest}, indent=2, sort_keys=True) + "\n")
    return digest


def load_pretext(directory: str | Path) -> tuple[list[dict[str, torch.Tensor]], dict]:
    """The pre-trained blocks' state dicts (one per block) and the stored config; a damaged
    directory is a :class:`CheckpointError` naming the file."""
    d = Path(directory)
    try:
        meta = json.loads((d / CONFIG_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{d / CONFIG_FILE}: unreadable pretext config ({exc}); delete {d} to rebuild it") \
            from None
    if file_sha256(d / WEIGHTS_FILE) != meta.get("sha256"):
        raise CheckpointError(f"{d / WEIGHTS_FILE}: its sha256 differs from the one in {CONFIG_FILE}; delete {d} "
                              "to rebuild it")
    try:
        flat = load_file(str(d / WEIGHTS_FILE))
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{d / WEIGHTS_FILE}: not a readable safetensors file ({exc})") from None
    blocks: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in flat.items():
        head, _, rest = key.partition(".")
        blocks.setdefault(int(head.removeprefix("block")), {})[rest] = value
    return [blocks[i] for i in sorted(blocks)], meta


@torch.no_grad()
def init_from_pretext(model: BranchedModel, blocks: list[dict[str, torch.Tensor]]) -> BranchedModel:
    """Every copy of block ``i`` of ``model`` takes the pre-trained block ``i``."""
    if len(blocks) != len(model.blocks):
        raise CheckpointError(f"the pretext backbone has {len(blocks)} blocks, the model {len(model.blocks)}")
    for i, task_sets in enumerate(model.layout.blocks):
        for s in task_sets:
            try:
                model.blocks[i][set_key(s)].load_state_dict(blocks[i])
            except RuntimeError as exc:
                raise CheckpointError(f"the pretext backbone's block {i} does not fit the model ({exc}); "
                                      "delete the suite's _pretext folder to rebuild it") from None
    return model


def head_seed(suite_name: str, seed: int = 0) -> int:
    """The seed of the heads' common random initialisation (one per suite and training seed)."""
    return zlib.crc32(f"{suite_name}/init".encode()) + seed
