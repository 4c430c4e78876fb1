"""Attacks that try to change more than their own output, for tests/test_isolation.py (loaded
with MTLBENCH_PLUGINS). Each returns a valid-looking output so that only the isolation can tell."""

import contextlib
import os
import signal
import sys
import time

import torch

from benchmark.attacks import Attack, clip_to_ball, register_attack


def _noise(images, eps, generator):
    signs = torch.randint(0, 2, images.shape, generator=generator, device=images.device).to(images.dtype) * 2 - 1
    return clip_to_ball(images + eps * signs, images, eps)


@register_attack("hostile-weights")
class MutatesWeights(Attack):
    def perturb(self, model, images, targets, *, tasks, eps, generator):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(0.5)
            for b in model.buffers():
                if b.is_floating_point():
                    b.add_(1.0)
        return images.clone()


@register_attack("hostile-inputs")
class ShiftsInputs(Attack):
    """A no-op attack that shifts the clean images by 100/255 and scales the depth targets."""

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        out = images.clone()
        images.add_(100 / 255).clamp_(0, 1)
        targets["depth_zbuffer"].mul_(2.0)
        return out


@register_attack("hostile-hook")
class LeavesAHook(Attack):
    def perturb(self, model, images, targets, *, tasks, eps, generator):
        model.register_forward_hook(lambda module, args, output: {k: v * 0 for k, v in output.items()})
        return _noise(images, eps, generator)


@register_attack("hostile-train")
class SwitchesToTraining(Attack):
    """Leaves the model in training mode (batch norm on batch statistics) with parameter gradients on."""

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        return _noise(images, eps, generator)


@register_attack("hostile-no-grad")
class DisablesGrad(Attack):
    def perturb(self, model, images, targets, *, tasks, eps, generator):
        torch.set_grad_enabled(False)
        return _noise(images, eps, generator)


@register_attack("hostile-random")
class Nondeterministic(Attack):
    """Ignores its generator: a different output every call."""

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        signs = torch.randint(0, 2, images.shape, device=images.device).to(images.dtype) * 2 - 1
        return clip_to_ball(images + eps * signs, images, eps)


@register_attack("hostile-random-steps")
class NondeterministicWithBudget(Nondeterministic):
    """The same, with a step budget (its budget curve's points are not checked themselves)."""

    budget_option = "steps"

    def __init__(self, steps: int = 2) -> None:
        self.steps = steps


@register_attack("hostile-sleep")
class SleepsForever(Attack):
    def perturb(self, model, images, targets, *, tasks, eps, generator):
        while True:
            time.sleep(3600)


@register_attack("hostile-busy")
class SpinsForever(Attack):
    def perturb(self, model, images, targets, *, tasks, eps, generator):
        x = images.clone()
        while True:
            with contextlib.suppress(Exception):  # swallowing errors cannot swallow the time limit
                x = x * 1.0


@register_attack("hostile-exit")
class CallsExit(Attack):
    def perturb(self, model, images, targets, *, tasks, eps, generator):
        sys.exit(7)


@register_attack("hostile-keyboard")
class RaisesKeyboardInterrupt(Attack):
    def perturb(self, model, images, targets, *, tasks, eps, generator):
        raise KeyboardInterrupt


@register_attack("test-user-ctrl-c")
class UserPressesCtrlC(Attack):
    """The user's Ctrl-C arriving while an attack runs (a real SIGINT to this process)."""

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
        return images.clone()
