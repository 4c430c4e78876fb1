"""The branched (tree-structured) multi-task model.

One copy of backbone block ``i`` per task set of ``layout.blocks[i]``; one head per task. Images
come in as RGB [0, 1] tensors; the paper's normalisation (BGR 0-255 minus per-channel means, no std) is
inside the model, so attacks work in [0, 1] pixel space. Each task set's block runs once per
forward, so a shared block is computed once however many tasks use it.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from benchmark.models.backbones import build_backbone
from benchmark.models.heads import ASPPHead
from benchmark.models.layouts import Layout

__all__ = ["PAPER_MEAN", "BranchedModel", "ModelConfig", "count_backbone_parameters", "set_key", "upsample_bilinear"]

#: Per-channel means subtracted from 0-255 BGR images by the paper's code (BGR order).
PAPER_MEAN = (104.008, 116.669, 122.679)


@functools.lru_cache(maxsize=64)
def _block_parameters(backbone: str, width: float, output_stride: int | None) -> tuple[int, ...]:
    trunk = build_backbone(backbone, width=width, output_stride=output_stride)
    return tuple(sum(p.numel() for p in b.parameters()) for b in trunk.blocks)


def count_backbone_parameters(layout: Layout, backbone: str = "resnet34", width: float = 1.0,
                              output_stride: int | None = None) -> int:
    """Backbone parameters of a layout without building the model: each block's size times the
    number of its copies (equal to ``BranchedModel(...).backbone_parameters()``)."""
    sizes = _block_parameters(backbone, width, output_stride)
    return sum(len(sets) * n for sets, n in zip(layout.blocks, sizes, strict=True))


@functools.lru_cache(maxsize=32)
def _bilinear_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D bilinear resampling with ``align_corners=False`` (PyTorch's
    source coordinate ``(i + 0.5) * n_in / n_out - 0.5``, clamped at 0)."""
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0.0)
    lo = src.floor().long().clamp_max(n_in - 1)
    hi = (lo + 1).clamp_max(n_in - 1)
    frac = src - lo
    weights = torch.zeros(n_out, n_in, dtype=torch.float64)
    rows = torch.arange(n_out)
    weights.index_put_((rows, lo), 1.0 - frac, accumulate=True)
    weights.index_put_((rows, hi), frac, accumulate=True)
    return weights


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``F.interpolate(x, size, mode="bilinear", align_corners=False)`` as two matrix products
    (the same numbers to float rounding); its backward is ~2x faster on the CPU than the
    library's, which matters because every training and attack step goes through it."""
    h, w = x.shape[-2:]
    if (h, w) == tuple(size):
        return x
    rows = _bilinear_matrix(h, size[0]).to(x.device, x.dtype)
    cols = _bilinear_matrix(w, size[1]).to(x.device, x.dtype)
    return rows @ x @ cols.T


def set_key(task_set) -> str:
    """Module-name key of a task set, e.g. ``{0, 2}`` -> ``"0_2"``."""
    return "_".join(str(t) for t in sorted(task_set))


@dataclass
class ModelConfig:
    """Everything needed to rebuild a :class:`BranchedModel` (stored in ``config.json``)."""

    layout: str
    tasks: dict[str, int]  # task name -> output channels, in task-id order
    backbone: str = "resnet34"
    width: float = 1.0
    output_stride: int | None = None
    head_hidden: int | None = None  # default: 1024 x width
    head_rates: list[int] = field(default_factory=lambda: [6, 12, 18, 24])

    def to_dict(self) -> dict:
        return asdict(self)


class _ChannelsLast(torch.autograd.Function):
    """The input in channels-last memory order for the convolutions that follow; its gradient goes
    back in the default order, so that an attack's input gradient is an ordinary contiguous tensor."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad.contiguous()


class BranchedModel(nn.Module):
    def __init__(self, layout: Layout | str, tasks: dict[str, int] | Sequence[tuple[str, int]], *,
                 backbone: str = "resnet34", width: float = 1.0, output_stride: int | None = None,
                 head_hidden: int | None = None, head_rates: Sequence[int] = (6, 12, 18, 24)) -> None:
        super().__init__()
        tasks = dict(tasks)
        if isinstance(layout, str):
            layout = Layout.parse(layout, num_tasks=len(tasks))
        layout.check(num_tasks=len(tasks))
        trunk = build_backbone(backbone, width=width, output_stride=output_stride)
        layout.check(num_blocks=len(trunk.blocks))
        self.layout = layout
        self.task_names = list(tasks)
        hidden = head_hidden if head_hidden is not None else max(8, round(1024 * width))
        self.config = ModelConfig(layout=str(layout), tasks=tasks, backbone=backbone, width=width,
                                  output_stride=trunk.output_stride, head_hidden=hidden,
                                  head_rates=list(head_rates))
        # Every copy of a block starts from the same initial weights (as TreeMTL's copies of a
        # pretrained backbone do); training makes them diverge.
        self.blocks = nn.ModuleList(
            nn.ModuleDict({set_key(s): copy.deepcopy(proto) for s in task_sets})
            for proto, task_sets in zip(trunk.blocks, layout.blocks, strict=True)
        )
        self.heads = nn.ModuleDict({
            name: ASPPHead(trunk.feature_dim, channels, hidden=hidden, rates=head_rates)
            for name, channels in tasks.items()
        })
        self.register_buffer("mean", torch.tensor(PAPER_MEAN).view(1, 3, 1, 1), persistent=False)
        # (block, task-set key, parent key) in execution order
        self._plan = [
            (i, set_key(s), None if i == 0 else set_key(layout.parent(i, s)))
            for i, task_sets in enumerate(layout.blocks) for s in task_sets
        ]
        last = layout.num_blocks - 1
        self._head_input = {name: set_key(layout.task_set(last, t)) for t, name in enumerate(self.task_names)}
        self.channels_last = False
        #: the backbone trains faster in channels-last order on the CPU (:func:`train_layout`)
        self.channels_last_training = trunk.channels_last_training

    def use_channels_last(self, enabled: bool = True) -> BranchedModel:
        """Run the convolutions in channels-last memory order (weights and activations; inputs,
        outputs and input gradients keep the default order). The same function to float
        rounding, except that where a max-pool window holds equal values the input gradient may
        go to another of the equal pixels. On the CPU a tiny model's attack step (forward and
        input gradient, eval mode) is 1.13x (AS) to 1.22x (IND) faster
        (``tox -e bench -- -k channels_last``); a training step is not, so members train in the
        default order."""
        self.to(memory_format=torch.channels_last if enabled else torch.contiguous_format)
        self.channels_last = enabled
        return self

    @classmethod
    def from_config(cls, config: ModelConfig | dict) -> BranchedModel:
        cfg = config if isinstance(config, ModelConfig) else ModelConfig(**config)
        return cls(cfg.layout, cfg.tasks, backbone=cfg.backbone, width=cfg.width,
                   output_stride=cfg.output_stride, head_hidden=cfg.head_hidden, head_rates=cfg.head_rates)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """RGB [0, 1] -> the paper's input: BGR 0-255 minus the per-channel BGR means."""
        return x.flip(1) * 255.0 - self.mean.to(x.dtype)

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Output of the last block for each task set of the last block."""
        h = self.normalize(x)
        if self.channels_last and h.dim() == 4:
            h = _ChannelsLast.apply(h)
        outs: dict[str, torch.Tensor] = {}
        prev: dict[str, torch.Tensor] = {}
        current_block = 0
        for block, key, parent in self._plan:
            if block != current_block:
                prev, outs, current_block = outs, {}, block
            outs[key] = self.blocks[block][key](h if parent is None else prev[parent])
        return outs

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        feats = self.features(x)
        size = x.shape[-2:]
        return {
            name: upsample_bilinear(self.heads[name](feats[key]), size)
            for name, key in self._head_input.items()
        }

    @torch.no_grad()
    def warm_start_from(self, source: BranchedModel) -> BranchedModel:
        """Copy weights from ``source`` (same backbone, width and tasks; typically the all-shared
        model): each copy of block i takes the source's copy of block i that covers its tasks,
        and each head the source's head, as TreeMTL initialises branched models from a trained
        all-shared one."""
        if source.config.backbone != self.config.backbone or source.config.width != self.config.width:
            raise ValueError("warm start needs the same backbone and width")
        for i, task_sets in enumerate(self.layout.blocks):
            for s in task_sets:
                src = next(t for t in source.layout.blocks[i] if s <= t)
                self.blocks[i][set_key(s)].load_state_dict(source.blocks[i][set_key(src)].state_dict())
        self.heads.load_state_dict(source.heads.state_dict())
        return self

    # ------------------------------------------------------------------ accounting
    def backbone_parameters(self) -> int:
        """Number of backbone parameters (heads excluded), as the paper's tables count them."""
        return sum(p.numel() for p in self.blocks.parameters())

    def head_parameters(self) -> int:
        return sum(p.numel() for p in self.heads.parameters())
