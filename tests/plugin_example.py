"""A third-party attack as a user would write it, loaded through the ``mtlbench.attacks``
entry-point group in tests/test_attacks.py."""

import torch

from benchmark.attacks import Attack, clip_to_ball


class RandomSignNoise(Attack):
    """Uniform random corner of the eps-ball: a weak baseline any real attack must beat."""

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        signs = torch.randint(0, 2, images.shape, generator=generator, device=images.device).to(images.dtype) * 2 - 1
        return clip_to_ball(images + eps * signs, images, eps)
