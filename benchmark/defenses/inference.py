"""Inference-time defenses: a transformation in front of the model, attacked adaptively.

Each declares whether it is *randomised* and whether it is *differentiable*:

* a non-differentiable transformation (bit-depth reduction, median filter) is attacked through
  the straight-through gradient (BPDA, Athalye et al. 2018): the forward pass applies it, the
  backward pass treats it as the identity;
* a randomised one (random resize-and-pad) is attacked with Expectation over Transformation
  (EOT): while an attack runs, each model call averages the outputs of ``eot_samples`` random
  draws; the adversarial images are then scored with one draw, as the defense is deployed.

The randomness comes from a generator that the runner reseeds from the cell's seed before each
attack run and before scoring, so the same seed gives the same output and the validator's
determinism check holds.

===============  ==============================================  ==========  ==============
defense          what it does                                    randomised  differentiable
===============  ==============================================  ==========  ==============
bitdepth:B       quantise each channel to B bits (Xu et al. 2018)  no          no (BPDA)
median:K         K x K median filter                              no          no (BPDA)
gaussian:S       Gaussian blur, sigma S pixels                    no          yes
resize:R         random resize to 1..1+R times the size, random   yes (EOT)   yes
                 zero padding (Xie et al. 2018); outputs mapped
                 back to the input's pixels
===============  ==============================================  ==========  ==============
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.defenses.registry import Defense, register_defense
from benchmark.enums import DefenseKind

__all__ = [
    "BitDepth",
    "DefendedModel",
    "GaussianBlur",
    "InferenceDefense",
    "MedianFilter",
    "RandomResizePad",
    "deployed",
    "deployed_outputs",
    "straight_through",
]


def straight_through(x: torch.Tensor, transformed: torch.Tensor) -> torch.Tensor:
    """``transformed`` in the forward pass, the identity's gradient in the backward pass (BPDA)."""
    return x + (transformed - x).detach()


class InferenceDefense(Defense):
    kind = DefenseKind.INFERENCE
    randomised: bool = False
    differentiable: bool = True

    def transform(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The defended input (images in [0, 1])."""
        return x

    def apply(self, model: nn.Module, x: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The model's outputs on the defended input, with BPDA for a non-differentiable transform."""
        t = self.transform(x, generator)
        if not self.differentiable:
            t = straight_through(x, t)
        return model(t)


@register_defense("bitdepth")
class BitDepth(InferenceDefense):
    """Feature squeezing: each colour channel rounded to ``bits`` bits."""

    argument_help = "bits per channel, 1-8"
    default_argument = "4"
    differentiable = False

    def __init__(self, argument: str = "") -> None:
        super().__init__(argument)
        self.bits = self.parse_argument(int, "bits", 1, 8)

    def transform(self, x, generator):
        levels = 2**self.bits - 1
        return torch.round(x * levels) / levels


@register_defense("median")
class MedianFilter(InferenceDefense):
    """Median filter over a ``size`` x ``size`` window (reflect padding)."""

    argument_help = "odd window size, 3-9"
    default_argument = "3"
    differentiable = False

    def __init__(self, argument: str = "") -> None:
        super().__init__(argument)
        self.size = self.parse_argument(int, "window size", 3, 9)
        if self.size % 2 == 0:
            raise ValueError(f"window size must be odd, got {self.size}")

    def transform(self, x, generator):
        k = self.size
        padded = F.pad(x, (k // 2,) * 4, mode="reflect")
        patches = padded.unfold(2, k, 1).unfold(3, k, 1)  # (B, C, H, W, k, k)
        return patches.reshape(*patches.shape[:4], k * k).median(dim=-1).values


@register_defense("gaussian")
class GaussianBlur(InferenceDefense):
    """Gaussian smoothing with standard deviation ``sigma`` pixels (reflect padding)."""

    argument_help = "sigma in pixels, 0.1-5"
    default_argument = "1.0"

    def __init__(self, argument: str = "") -> None:
        super().__init__(argument)
        self.sigma = self.parse_argument(float, "sigma", 0.1, 5.0)

    def transform(self, x, generator):
        radius = max(1, math.ceil(2 * self.sigma))
        grid = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
        kernel = torch.exp(-(grid**2) / (2 * self.sigma**2))
        kernel = kernel / kernel.sum()
        c = x.shape[1]
        x = F.pad(x, (radius,) * 4, mode="reflect")
        x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
        return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


@register_defense("resize")
class RandomResizePad(InferenceDefense):
    """Random resizing and padding (Xie et al. 2018) for dense prediction: the image is resized
    by a random factor in [1, 1 + ratio], placed at a random offset in a zero canvas of
    (1 + ratio) times its size; the outputs of the canvas are cropped at the same place and
    resized back, so every output pixel still belongs to its input pixel."""

    argument_help = "largest extra size as a fraction, 0.01-1"
    default_argument = "0.15"
    randomised = True

    def __init__(self, argument: str = "") -> None:
        super().__init__(argument)
        self.ratio = self.parse_argument(float, "ratio", 0.01, 1.0)

    def apply(self, model, x, generator):
        h, w = x.shape[-2:]
        canvas_h, canvas_w = round(h * (1 + self.ratio)), round(w * (1 + self.ratio))
        u = torch.rand(3, generator=generator, device=generator.device).tolist()
        scale = 1 + self.ratio * u[0]
        new_h, new_w = min(canvas_h, round(h * scale)), min(canvas_w, round(w * scale))
        top, left = int(u[1] * (canvas_h - new_h + 1)), int(u[2] * (canvas_w - new_w + 1))
        top, left = min(top, canvas_h - new_h), min(left, canvas_w - new_w)
        resized = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
        canvas = F.pad(resized, (left, canvas_w - new_w - left, top, canvas_h - new_h - top))
        outputs = model(canvas)
        return {task: F.interpolate(out[..., top:top + new_h, left:left + new_w], size=(h, w), mode="bilinear",
                                    align_corners=False)
                for task, out in outputs.items()}


class DefendedModel(nn.Module):
    """``model`` behind an inference-time ``defense``. While an attack runs, a randomised
    defense averages each call's outputs over ``eot_samples`` draws (EOT); inside
    :meth:`single_draw` (scoring, clean metrics) it takes one draw. :meth:`reseed` fixes the
    randomness."""

    def __init__(self, model: nn.Module, defense: InferenceDefense, *, eot_samples: int = 1) -> None:
        super().__init__()
        self.model = model
        self.defense = defense
        self.eot_samples = max(1, int(eot_samples)) if defense.randomised else 1
        self._single = False
        self._generator: torch.Generator | None = None
        self.reseed(0)

    @property
    def counted_module(self) -> nn.Module:
        """The network whose forward and backward passes an attack is charged for."""
        return self.model

    def reseed(self, seed: int) -> None:
        device = next(self.model.parameters()).device
        self._generator = torch.Generator(device=device).manual_seed(int(seed))

    @contextlib.contextmanager
    def single_draw(self) -> Iterator[None]:
        previous, self._single = self._single, True
        try:
            yield
        finally:
            self._single = previous

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self._generator is None or self._generator.device != x.device:
            self.reseed(0)
        n = 1 if self._single else self.eot_samples
        outputs = [self.defense.apply(self.model, x, self._generator) for _ in range(n)]
        if n == 1:
            return outputs[0]
        return {task: torch.stack([o[task] for o in outputs]).mean(0) for task in outputs[0]}


@contextlib.contextmanager
def deployed(model: nn.Module, seed: int) -> Iterator[None]:
    """``model`` as it is deployed: a defended model takes one draw of its randomness, seeded by
    ``seed`` (scoring and clean metrics); any other model is used as it is."""
    if isinstance(model, DefendedModel):
        model.reseed(seed)
        with model.single_draw():
            yield
    else:
        yield


def deployed_outputs(model: nn.Module, x: torch.Tensor, seed: int, draws: int = 1) -> Iterator[dict[str, torch.Tensor]]:
    """The outputs of ``model`` on ``x`` as it is deployed, without gradients: one forward pass;
    for a randomised defense, ``draws`` independent draws of its randomness (seeded from
    ``seed``), over which the caller pools its metrics: the expected metric of the deployed
    defense, which one draw only estimates (auto-attack PR #105)."""
    randomised = isinstance(model, DefendedModel) and model.defense.randomised
    for d in range(draws if randomised else 1):
        with torch.no_grad(), deployed(model, seed + d * 7_919_111):
            yield model(x)
