"""The output validator: every attack output is checked before it is scored.

A result is *valid* only if the output has the input's shape, dtype and device, is finite, lies in
[0, 1], lies in the L-infinity eps-ball around the clean images up to ``TOLERANCE``, left the
model's weights and buffers unchanged, and (when checked) is the same for the same seed. An
attack that raises is *failed*. Either way the verdict carries the reason, and the run goes on.
"""

from __future__ import annotations

import hashlib
import time
import traceback
from dataclasses import dataclass, field

import torch

from benchmark.attacks.base import Attack, PassCounter
from benchmark.tasks import Task

__all__ = ["TOLERANCE", "AttackRun", "Verdict", "WeightSnapshot", "model_fingerprint", "run_attack",
           "validate_output"]

#: slack on the eps-ball and [0, 1] checks: float32 rounding of x +- eps, not a real budget
TOLERANCE = 1e-5


@dataclass
class Verdict:
    status: str  # "valid", "invalid" or "failed"
    reason: str = ""
    max_perturbation: float = float("nan")  # in 0-255 units

    @property
    def valid(self) -> bool:
        return self.status == "valid"


@dataclass
class AttackRun:
    adversarial: torch.Tensor | None
    verdict: Verdict
    forward_passes: int = 0
    backward_passes: int = 0
    extra: dict = field(default_factory=dict)


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer of the model."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


class WeightSnapshot:
    """A copy of a model's parameters and buffers to check, cheaply and exactly, that an attack
    left them alone (an element-wise comparison instead of hashing every byte)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def unchanged(self, model: torch.nn.Module) -> bool:
        now = model.state_dict()
        return now.keys() == self.state.keys() and all(torch.equal(now[k], v) for k, v in self.state.items())


def validate_output(adv, images: torch.Tensor, eps: float) -> Verdict:
    """Shape/dtype/device, finiteness, range and eps-ball checks of one output (eps on [0, 1])."""
    if not isinstance(adv, torch.Tensor):
        return Verdict("invalid", f"returned {type(adv).__name__}, not a tensor")
    if adv.shape != images.shape:
        return Verdict("invalid", f"returned shape {tuple(adv.shape)}, expected {tuple(images.shape)}")
    if adv.dtype != images.dtype:
        return Verdict("invalid", f"returned dtype {adv.dtype}, expected {images.dtype}")
    if adv.device != images.device:
        return Verdict("invalid", f"returned device {adv.device}, expected {images.device}")
    finite = torch.isfinite(adv)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        return Verdict("invalid", f"{bad} non-finite values (NaN or inf) in the output")
    low, high = float(adv.min()), float(adv.max())
    if low < -TOLERANCE or high > 1 + TOLERANCE:
        return Verdict("invalid", f"pixels outside [0, 1]: min {low:.6g}, max {high:.6g}")
    delta = float((adv - images).abs().max())
    if delta > eps + TOLERANCE:
        return Verdict("invalid", f"left the eps-ball: max |delta| = {delta * 255:.4f}/255 > eps = {eps * 255:.4f}/255",
                       delta * 255)
    return Verdict("valid", "", delta * 255)


def run_attack(attack: Attack, model: torch.nn.Module, images: torch.Tensor, targets: dict[str, torch.Tensor], *,
               tasks: list[Task], eps: float, seed: int, check_determinism: bool = True,
               snapshot: WeightSnapshot | None = None) -> AttackRun:
    """Run ``attack`` (eps in 0-255 units) with a generator seeded by ``seed`` and validate it.
    ``snapshot`` is a :class:`WeightSnapshot` of the model when the caller keeps one. The
    attack's own wall time (first run, synchronised on CUDA) is in ``extra["attack_s"]``."""
    scale = eps / 255.0
    before = snapshot or WeightSnapshot(model)
    counter = PassCounter().attach(model)
    start = time.perf_counter()
    try:
        adv = attack(model, images, targets, tasks=tasks, eps=scale, generator=_generator(seed, images.device))
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
    except Exception as exc:  # an attack's crash is a failed cell, never a crashed run
        counter.detach()
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return AttackRun(None, Verdict("failed", f"attack raised {tb}"))
    finally:
        counter.detach()
    run = AttackRun(None, Verdict("valid"), counter.forward, counter.backward,
                    {"attack_s": time.perf_counter() - start})
    if not before.unchanged(model):
        run.verdict = Verdict("invalid", "the attack changed the model's weights or buffers")
        return run
    verdict = validate_output(adv, images, scale)
    if not verdict.valid:
        run.verdict = verdict
        return run
    if check_determinism:
        try:
            again = attack(model, images, targets, tasks=tasks, eps=scale, generator=_generator(seed, images.device))
        except Exception as exc:
            run.verdict = Verdict("failed", f"attack raised on the repeat run: {type(exc).__name__}: {exc}")
            return run
        if not (isinstance(again, torch.Tensor) and again.shape == adv.shape and torch.equal(again, adv)):
            run.verdict = Verdict("invalid", "not deterministic: the same seed gave a different output")
            return run
    run.adversarial, run.verdict = adv.detach(), verdict
    return run


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))
