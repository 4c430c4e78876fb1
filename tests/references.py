"""Literal reference forms of code the package computes another way, for tests and benchmarks."""

import torch.nn.functional as F


def aspp_per_branch(head, x):
    """An ASPP head as the paper's code writes it: each branch on its own (conv3x3 -> ReLU ->
    dropout -> conv1x1 -> ReLU -> dropout -> conv1x1), the branch outputs summed."""
    out = 0
    for b in head.branches:
        h = F.dropout(F.relu(b.conv1(x)), head.p, head.training)
        h = F.dropout(F.relu(b.conv2(h)), head.p, head.training)
        out = out + b.conv3(h)
    return out
