"""Backbones split into the paper's 5 branch blocks.

* ``resnet34``: Deeplab-ResNet34 as in AdaShare's ``deeplab_resnet34_adashare.prototxt``:
  blocks {stem}, {layer1}, {layer2}, {layer3}, {layer4}; layer3 and layer4 use dilation 2 and 4
  instead of striding, so the output stride is 8; feature dimension 512.
* ``mobilenetv2``: the ``mobilenetv2.prototxt`` of the paper's code (torchvision-shaped
  MobileNetV2), its 32 fine branch points grouped as {0-6}, {7-17}, {18-22}, {23-30}, {31}:
  stem + inverted residuals 1-3 | 4-10 | 11-13 | 14-17 | the 1x1 conv to 1280 channels.
  Output stride 32 as in the paper's prototxt; ``output_stride=8`` dilates the last two stages.

A width multiplier scales every channel count (the small variants of the tiny suites).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from benchmark.registry import Registry

__all__ = ["BACKBONES", "BackboneBlocks", "build_backbone", "list_backbones", "register_backbone"]


@dataclass
class BackboneBlocks:
    """The 5 branch blocks of a backbone and the channel count of its last feature map."""

    blocks: list[nn.Module]
    feature_dim: int
    output_stride: int
    #: train in channels-last memory order on the CPU: measured faster for this backbone's
    #: convolutions (see :func:`mobilenetv2`)
    channels_last_training: bool = False


#: functions ``(width=..., output_stride=...) -> BackboneBlocks`` by name
BACKBONES: Registry[Callable[..., BackboneBlocks]] = Registry("backbone", group="mtlbench.backbones", error=ValueError)


def register_backbone(name: str) -> Callable[[Callable[..., BackboneBlocks]], Callable[..., BackboneBlocks]]:
    """Decorator registering a function that builds a backbone's 5 branch blocks."""
    return BACKBONES.register(name)


def list_backbones() -> list[str]:
    return sorted(BACKBONES.names())


def build_backbone(name: str, *, width: float = 1.0, output_stride: int | None = None) -> BackboneBlocks:
    factory = BACKBONES.get(name)
    if not 0 < width <= 4:
        raise ValueError(f"width multiplier must be in (0, 4], got {width}")
    kwargs = {} if output_stride is None else {"output_stride": output_stride}
    return factory(width=width, **kwargs)


def _ch(channels: int, width: float, divisor: int = 1) -> int:
    c = max(divisor, round(channels * width / divisor) * divisor)
    return c


# ---------------------------------------------------------------------- ResNet34
class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, dilation: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, padding=dilation, dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def _res_layer(cin: int, cout: int, n: int, stride: int, dilation: int) -> nn.Sequential:
    layers = [BasicBlock(cin, cout, stride, dilation)]
    layers += [BasicBlock(cout, cout, 1, dilation) for _ in range(n - 1)]
    return nn.Sequential(*layers)


@register_backbone("resnet34")
def resnet34(*, width: float = 1.0, output_stride: int = 8) -> BackboneBlocks:
    if output_stride not in (8, 16, 32):
        raise ValueError(f"resnet34 output_stride must be 8, 16 or 32, got {output_stride}")
    c = [_ch(x, width) for x in (64, 128, 256, 512)]
    s3, d3 = (1, 2) if output_stride == 8 else (2, 1)
    s4, d4 = (1, 4) if output_stride == 8 else ((1, 2) if output_stride == 16 else (2, 1))
    stem = nn.Sequential(
        nn.Conv2d(3, c[0], 7, 2, 3, bias=False),
        nn.BatchNorm2d(c[0]),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    )
    blocks = [
        stem,
        _res_layer(c[0], c[0], 3, 1, 1),
        _res_layer(c[0], c[1], 4, 2, 1),
        _res_layer(c[1], c[2], 6, s3, d3),
        _res_layer(c[2], c[3], 3, s4, d4),
    ]
    return BackboneBlocks(blocks, c[3], output_stride)


# ---------------------------------------------------------------------- MobileNetV2
def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, dilation: int = 1, act: bool = True):
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, padding=dilation * (k - 1) // 2, dilation=dilation, groups=groups,
                  bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, dilation: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [
            _conv_bn(hidden, hidden, 3, stride, groups=hidden, dilation=dilation),
            _conv_bn(hidden, cout, 1, act=False),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        out = self.conv(x)
        return x + out if self.use_residual else out


# (expansion, channels, repeats, stride) of torchvision's MobileNetV2, and the block each
# inverted residual belongs to (17 of them: 3 | 7 | 3 | 4).
_MBV2_CFG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
_MBV2_GROUPS = (3, 7, 3, 4)


@register_backbone("mobilenetv2")
def mobilenetv2(*, width: float = 1.0, output_stride: int = 32) -> BackboneBlocks:
    if output_stride not in (8, 16, 32):
        raise ValueError(f"mobilenetv2 output_stride must be 8, 16 or 32, got {output_stride}")
    cin = _ch(32, width, 8)
    residuals: list[nn.Module] = []
    current_stride, dilation = 2, 1
    for expand, c, n, s in _MBV2_CFG:
        cout = _ch(c, width, 8)
        for i in range(n):
            stride = s if i == 0 else 1
            layer_dilation = dilation  # the first layer of a dilated stage keeps the old rate
            if stride == 2 and current_stride >= output_stride:
                stride, dilation = 1, dilation * 2
            elif stride == 2:
                current_stride *= 2
            residuals.append(InvertedResidual(cin, cout, stride, expand, layer_dilation))
            cin = cout
    # torchvision keeps 1280 channels below width 1; the small variants scale it like the rest.
    feature_dim = _ch(1280, width, 8)
    groups, start = [], 0
    for size in _MBV2_GROUPS:
        groups.append(residuals[start:start + size])
        start += size
    blocks = [
        nn.Sequential(_conv_bn(3, _ch(32, width, 8), 3, 2), *groups[0]),
        nn.Sequential(*groups[1]),
        nn.Sequential(*groups[2]),
        nn.Sequential(*groups[3]),
        _conv_bn(cin, feature_dim, 1),
    ]
    # Trains in channels-last order on the CPU: the dilated depthwise convolutions of the last
    # stages (output stride 8) take oneDNN's slow path in the default order (their backward 2-4x
    # slower); a tiny member's training step is 1.06x (AS) to 1.27x (IND) faster (`tox -e bench -- -k mobilenet`).
    return BackboneBlocks(blocks, feature_dim, output_stride, channels_last_training=True)
