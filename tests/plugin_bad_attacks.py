"""Deliberately broken attacks for the runner tests, loaded with ``--plugins`` / MTLBENCH_PLUGINS."""

import os
import time
from pathlib import Path

import torch

from benchmark.attacks import Attack, clip_to_ball, register_attack


@register_attack("test-nan")
class NaNAttack(Attack):
    def perturb(self, model, images, targets, *, tasks, eps, generator):
        out = images.clone()
        out[0, 0, 0, 0] = float("nan")
        return out


@register_attack("test-crash")
class CrashingAttack(Attack):
    def perturb(self, model, images, targets, *, tasks, eps, generator):
        raise RuntimeError("boom")


@register_attack("test-slow")
class SlowSignAttack(Attack):
    """A valid attack that takes its time (for the kill -9 test)."""

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        time.sleep(float(os.environ.get("MTLBENCH_TEST_SLEEP", "0.4")))
        signs = torch.randint(0, 2, images.shape, generator=generator, device=images.device).to(images.dtype) * 2 - 1
        return clip_to_ball(images + eps * signs, images, eps)


@register_attack("test-dies-once")
class DiesOnceAttack(Attack):
    """Kills its own process the first time it runs (marker file), as a lost Ray worker."""

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        marker = Path(os.environ["MTLBENCH_TEST_MARKER"])
        if not marker.exists():
            marker.write_text("died")
            os._exit(1)
        return images.clone()


@register_attack("test-hog")
class MemoryHogAttack(Attack):
    """A sign step that first fills 200 MB of scratch memory: the memory column must see it."""

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        scratch = torch.ones(50 * 1024 * 1024)  # 200 MB, touched
        assert scratch.sum() > 0
        del scratch
        return clip_to_ball(images + eps, images, eps)


@register_attack("test-exit")
class ExitAttack(Attack):
    """Ends the process running it, as a crashing plugin or the OOM killer would."""

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        import os

        os._exit(9)


@register_attack("test-widest-eps")
class WidestEpsAttack(Attack):
    """Says its images are independent, but steps every image by the largest eps of its batch:
    alone (one eps) it is valid; batched with a smaller eps, that eps's images leave their ball."""

    images_independent = True

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        step = eps.max() if isinstance(eps, torch.Tensor) else eps
        signs = torch.randint(0, 2, images.shape, generator=generator, device=images.device).to(images.dtype) * 2 - 1
        return (images + step * signs).clamp(0.0, 1.0)
