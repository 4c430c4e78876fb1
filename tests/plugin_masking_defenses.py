"""Defenses that mask gradients without saying so, for the gradient-masking checks' tests."""

import torch

from benchmark.defenses import register_defense
from benchmark.defenses.inference import InferenceDefense


@register_defense("test-shatter")
class ShattersGradients(InferenceDefense):
    """Quantises its input but declares itself differentiable: attacks get a zero gradient."""

    differentiable = True  # a lie: rounding has no gradient

    def transform(self, x, generator):
        return torch.round(x * 15) / 15


@register_defense("test-noisy")
class UndeclaredNoise(InferenceDefense):
    """Adds fresh noise at every call but declares no randomness."""

    randomised = False  # a lie

    def transform(self, x, generator):
        return (x + 0.02 * torch.randn_like(x)).clamp(0, 1)
