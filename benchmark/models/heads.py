"""DeepLab ASPP task head, as the paper's code uses for every task (``Deeplab_ASPP_Layout``):
four parallel branches with dilation rates 6, 12, 18, 24, each conv3x3(dilated) -> ReLU ->
dropout -> conv1x1 -> ReLU -> dropout -> conv1x1 to the task's channels, summed."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["ASPPHead"]


class _ASPPBranch(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, rate: int, dropout: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, hidden, 3, padding=rate, dilation=rate)
        self.conv2 = nn.Conv2d(hidden, hidden, 1)
        self.conv3 = nn.Conv2d(hidden, cout, 1)
        self.relu = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        x = self.dropout(self.relu(self.conv1(x)))
        x = self.dropout(self.relu(self.conv2(x)))
        return self.conv3(x)


class ASPPHead(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, *, hidden: int = 1024,
                 rates: Sequence[int] = (6, 12, 18, 24), dropout: float = 0.5) -> None:
        super().__init__()
        self.branches = nn.ModuleList(_ASPPBranch(in_channels, hidden, out_channels, r, dropout) for r in rates)

    def forward(self, x):
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out
