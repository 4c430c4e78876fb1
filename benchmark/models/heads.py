"""DeepLab ASPP task head, as the paper's code uses for every task (``Deeplab_ASPP_Layout``):
four parallel branches with dilation rates 6, 12, 18, 24, each conv3x3(dilated) -> ReLU ->
dropout -> conv1x1 -> ReLU -> dropout -> conv1x1 to the task's channels, summed.

The parameters live per branch (``branches.<i>.conv<m>``, the names of the authors' checkpoints
after import), but the forward pass runs the branches side by side: the four hidden maps are
concatenated, the four conv1x1 of the middle are one grouped convolution, and the last conv1x1s
followed by the sum are one convolution over the concatenated maps (a sum of convolutions over
separate inputs is a convolution over their concatenation). Same function, 7 convolution calls
per head instead of 12 and 2 dropout calls instead of 8; on the tiny models' 7x7 maps each call
costs more than its arithmetic (`tests/benchmarks/test_training_speed.py`)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ASPPHead", "dropout"]


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout (``F.dropout``'s distribution: each element kept with probability
    ``1 - p`` and scaled by ``1 / (1 - p)``), with the mask drawn by ``rand >= p``: on the CPU,
    ``F.dropout``'s ``bernoulli_`` draw costs ~6x more than ``rand_like`` for the tiny heads'
    maps, and the heads' dropout was ~7 % of a tiny training step."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return torch.zeros_like(x)
    keep = torch.rand_like(x) >= p
    return x * keep.to(x.dtype) * (1.0 / (1.0 - p))


class _ASPPBranch(nn.Module):
    """One branch's parameters (run by :class:`ASPPHead` together with the other branches)."""

    def __init__(self, cin: int, hidden: int, cout: int, rate: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 3, padding=rate, dilation=rate)
        self.conv2 = nn.Conv2d(hidden, hidden, 1)
        self.conv3 = nn.Conv2d(hidden, cout, 1)


class ASPPHead(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, *, hidden: int = 1024,
                 rates: Sequence[int] = (6, 12, 18, 24), dropout: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= dropout <= 1.0:
            raise ValueError(f"dropout {dropout} is outside [0, 1]")
        self.p = float(dropout)
        self.branches = nn.ModuleList(_ASPPBranch(in_channels, hidden, out_channels, r) for r in rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = self.branches
        h = torch.cat([b.conv1(x) for b in branches], 1)
        h = dropout(F.relu(h), self.p, self.training)
        w2 = torch.cat([b.conv2.weight for b in branches])
        b2 = torch.cat([b.conv2.bias for b in branches])
        h = dropout(F.relu(F.conv2d(h, w2, b2, groups=len(branches))), self.p, self.training)
        w3 = torch.cat([b.conv3.weight for b in branches], 1)
        b3 = torch.stack([b.conv3.bias for b in branches]).sum(0)
        return F.conv2d(h, w3, b3)
