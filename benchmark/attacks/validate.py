"""The output validator: every attack output is checked before it is scored.

A result is *valid* only if the output has the input's shape, dtype and device, is finite, lies in
[0, 1], lies in the L-infinity eps-ball around the clean images up to ``TOLERANCE``, the attack
left the model's weights, buffers and hooks, its inputs and torch's autograd state unchanged
(whatever it changed is undone: :mod:`benchmark.attacks.sandbox`), and (when checked) the output
is the same for the same seed. An attack that raises (or calls ``sys.exit``) is *failed*. Either
way the verdict carries the reason, and the run goes on.
"""

from __future__ import annotations

import hashlib
import math
import time
import traceback
from dataclasses import dataclass, field

import torch

from benchmark.attacks.base import Attack, PassCounter
from benchmark.attacks.sandbox import StateGuard, interrupt_is_the_users
from benchmark.enums import Status
from benchmark.tasks import Task
from benchmark.threads import deterministic_kernels

__all__ = [
    "NONDETERMINISTIC",
    "TOLERANCE",
    "AttackRun",
    "OutputProblem",
    "Verdict",
    "WeightSnapshot",
    "model_fingerprint",
    "output_problem",
    "run_attack",
    "unit_eps",
    "validate_output",
]

#: how a verdict of the determinism check begins (the runner extends it to every eps of the cell)
NONDETERMINISTIC = "not deterministic"
#: slack on the eps-ball and [0, 1] checks: float32 rounding of x +- eps, not a real budget
TOLERANCE = 1e-5


@dataclass
class Verdict:
    status: str  # "valid", "invalid" or "failed"
    reason: str = ""
    max_perturbation: float = float("nan")  # in 0-255 units

    @property
    def valid(self) -> bool:
        return self.status == Status.VALID


@dataclass
class AttackRun:
    adversarial: torch.Tensor | None
    verdict: Verdict
    forward_passes: int = 0
    backward_passes: int = 0
    extra: dict = field(default_factory=dict)


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer of the model (and, for a branched model, the order
    of its tasks, which decides which branch feeds which head)."""
    h = hashlib.sha256()
    h.update(repr(getattr(model, "task_names", "")).encode())
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer of the model, non-persistent buffers (not in the state dict,
    such as the input normalisation) included."""
    out = {f"param:{k}": v for k, v in model.named_parameters(remove_duplicate=False)}
    out.update({f"buffer:{k}": v for k, v in model.named_buffers(remove_duplicate=False)})
    return out


class WeightSnapshot:
    """A copy of a model's parameters and buffers (non-persistent ones included) to check,
    cheaply and exactly, that an attack left them alone (an element-wise comparison instead of
    hashing every byte), and to put them back when it did not."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.state = {k: v.detach().clone() for k, v in _tensors(model).items()}
        #: set when :meth:`restore` found the model's structure changed: only a reload puts it back
        self.needs_reload = False

    def unchanged(self, model: torch.nn.Module) -> bool:
        now = _tensors(model)
        return now.keys() == self.state.keys() and all(
            now[k].shape == v.shape and now[k].dtype == v.dtype and torch.equal(now[k], v)
            for k, v in self.state.items())

    def restore(self, model: torch.nn.Module) -> bool:
        """Copy the snapshot back into the model's tensors; ``False`` when the model's structure
        changed (other names, shapes or dtypes), so it must be reloaded instead."""
        now = _tensors(model)
        if now.keys() != self.state.keys() or any(now[k].shape != v.shape or now[k].dtype != v.dtype
                                                  for k, v in self.state.items()):
            self.needs_reload = True
            return False
        with torch.no_grad():
            for k, v in self.state.items():
                if not torch.equal(now[k], v):
                    now[k].copy_(v)
        return True


@dataclass(frozen=True)
class OutputProblem:
    """The first image of an attack's output that is not finite, not in [0, 1] or not inside the
    eps-ball (each up to :data:`TOLERANCE` on the [0, 1] scale): ``kind`` is ``"non-finite"``,
    ``"range"`` or ``"ball"``; ``low``/``high`` are that image's extreme values and ``delta`` its
    largest change in 0-255 units."""

    kind: str
    image: int
    low: float
    high: float
    delta: float


def output_problem(adv: torch.Tensor, images: torch.Tensor, eps: float | torch.Tensor) -> OutputProblem | None:
    """The output checks every consumer of adversarial images applies (the validator, the bundle
    verifier, adversarial training), per image; ``eps`` on the [0, 1] scale (a 1-D tensor: each
    image's own). None when all pass."""
    flat = adv.detach().flatten(1)
    finite = torch.isfinite(flat).all(1)
    if not bool(finite.all()):
        i = int((~finite).nonzero()[0])
        return OutputProblem("non-finite", i, math.nan, math.nan, math.nan)
    low, high = flat.min(1).values, flat.max(1).values
    delta = (flat - images.detach().flatten(1).to(flat)).abs().max(1).values
    if isinstance(eps, torch.Tensor):
        eps = eps.to(delta).flatten()
    for kind, bad in (("range", (low < -TOLERANCE) | (high > 1 + TOLERANCE)), ("ball", delta > eps + TOLERANCE)):
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            return OutputProblem(kind, i, float(low[i]), float(high[i]), float(delta[i]) * 255)
    return None


def validate_output(adv, images: torch.Tensor, eps: float | torch.Tensor) -> Verdict:
    """Shape/dtype/device, finiteness, range and eps-ball checks of one output (eps on [0, 1]; a
    1-D tensor gives each image its own)."""
    if not isinstance(adv, torch.Tensor):
        return Verdict(Status.INVALID, f"returned {type(adv).__name__}, not a tensor")
    if adv.shape != images.shape:
        return Verdict(Status.INVALID, f"returned shape {tuple(adv.shape)}, expected {tuple(images.shape)}")
    if adv.dtype != images.dtype:
        return Verdict(Status.INVALID, f"returned dtype {adv.dtype}, expected {images.dtype}")
    if adv.device != images.device:
        return Verdict(Status.INVALID, f"returned device {adv.device}, expected {images.device}")
    problem = output_problem(adv, images, eps)
    if problem is not None and problem.kind == "non-finite":
        bad = int((~torch.isfinite(adv)).sum())
        return Verdict(Status.INVALID, f"{bad} non-finite values (NaN or inf) in the output")
    if problem is not None and problem.kind == "range":
        return Verdict(Status.INVALID, f"pixels outside [0, 1]: min {float(adv.min()):.6g}, max {float(adv.max()):.6g}")
    delta = float((adv - images).abs().max())
    if problem is not None:
        if isinstance(eps, torch.Tensor):  # per-image eps: the first image out of its own ball
            own = float(eps[problem.image]) * 255
            return Verdict(Status.INVALID, f"left the eps-ball: image {problem.image}'s max |delta| = "
                                           f"{problem.delta:.4f}/255 > its eps = {own:.4f}/255", delta * 255)
        return Verdict(Status.INVALID,
                       f"left the eps-ball: max |delta| = {delta * 255:.4f}/255 > eps = {eps * 255:.4f}/255",
                       delta * 255)
    return Verdict(Status.VALID, "", delta * 255)


def unit_eps(eps: float | torch.Tensor) -> float | torch.Tensor:
    """``eps`` in 0-255 pixel units (the CLI's, the manifests' and the results' unit: 8 means 8/255)
    on the [0, 1] image scale the attacks and the checks work in (a tensor of per-image eps too).
    Every eps crosses from one unit to the other here."""
    return eps / 255.0


def run_attack(attack: Attack, model: torch.nn.Module, images: torch.Tensor, targets: dict[str, torch.Tensor], *,
               tasks: list[Task], eps: float | torch.Tensor, seed: int, check_determinism: bool = True,
               snapshot: WeightSnapshot | None = None) -> AttackRun:
    """Run ``attack`` (eps in 0-255 units) with a generator seeded by ``seed`` and validate it.

    ``eps`` may be a 1-D tensor of one eps per image, for an attack whose ``images_independent``
    is true (each image's result depends on that image alone): the attack gets it as a
    ``(B, 1, 1, 1)`` tensor on the images' device and dtype, and each image is checked against its
    own ball.

    The attack gets its own copies of the images and targets, and whatever it does to the model
    (weights, buffers, hooks) or to torch's global autograd state is undone afterwards and makes
    the result invalid, so it cannot spoil anything but its own result. ``snapshot`` is a
    :class:`WeightSnapshot` of the model when the caller keeps one; ``extra["model_restored"]``
    is ``False`` when the model could not be put back in place (the caller must reload it). The
    attack's own wall time (first run, synchronised on CUDA) is in ``extra["attack_s"]``."""
    deterministic_kernels(images.device)  # the same seed gives the same output on a GPU too
    scale = unit_eps(eps)
    ball = scale  # what each image is checked against
    if isinstance(eps, torch.Tensor):
        if not getattr(attack, "images_independent", False):
            raise ValueError(f"{type(attack).__name__} does not declare images_independent: one eps per image "
                             "would change what it computes")
        if eps.dim() != 1 or eps.shape[0] != images.shape[0]:
            raise ValueError(f"a per-image eps needs one value per image: {tuple(eps.shape)} for {images.shape[0]}")
        ball = scale.to(images.device, torch.float32)
        scale = ball.to(images.dtype).view(-1, *([1] * (images.dim() - 1)))
    before = snapshot or WeightSnapshot(model)
    run = AttackRun(None, Verdict(Status.VALID))
    adv, verdict = _sandboxed(attack, model, images, targets, tasks, scale, seed, before, run)
    if verdict is not None:
        run.verdict = verdict
        return run
    verdict = validate_output(adv, images, ball)
    if not verdict.valid:
        run.verdict = verdict
        return run
    if check_determinism:
        repeat = AttackRun(None, verdict)
        again, problem = _sandboxed(attack, model, images, targets, tasks, scale, seed, before, repeat)
        if problem is not None:
            run.verdict = Verdict(problem.status, f"on the repeat run: {problem.reason}")
            return run
        if not (isinstance(again, torch.Tensor) and again.shape == adv.shape and torch.equal(again, adv)):
            run.verdict = Verdict(Status.INVALID, f"{NONDETERMINISTIC}: the same seed gave a different output")
            return run
    run.adversarial, run.verdict = adv.detach(), verdict
    return run


def _sandboxed(attack, model, images, targets, tasks, scale, seed, before: WeightSnapshot,
               run: AttackRun) -> tuple[torch.Tensor | None, Verdict | None]:
    """One call of the attack on copies of its inputs, counting passes into ``run``; returns the
    output and, when the call failed or changed something it must not, the verdict saying so.
    Whatever the attack did to the model or to autograd's global state is undone here, also when
    a :class:`~benchmark.attacks.sandbox.CellTimeout` or the user's Ctrl-C ends it."""
    x = images.clone()
    given = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in targets.items()}
    guard = StateGuard(model)
    # a defended model is charged for the passes of the network inside it (EOT makes several per call)
    counter = PassCounter().attach(getattr(model, "counted_module", model))
    if hasattr(model, "reseed"):  # a randomised defense draws the same randomness for the same seed
        model.reseed(seed)
    failure: Verdict | None = None
    adv = None
    start = time.perf_counter()
    try:
        adv = attack(model, x, given, tasks=tasks, eps=scale, generator=_generator(seed, images.device))
        if images.is_cuda:
            torch.cuda.synchronize(images.device)
        run.extra["attack_s"] = time.perf_counter() - start
    except KeyboardInterrupt:
        if interrupt_is_the_users():
            raise
        failure = Verdict(Status.FAILED, "attack raised KeyboardInterrupt (not the user's Ctrl-C)")
    except SystemExit as exc:
        failure = Verdict(Status.FAILED, f"attack called sys.exit({exc.code!r})")
    except Exception as exc:  # an attack's crash is a failed cell, never a crashed run
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        failure = Verdict(Status.FAILED, f"attack raised {tb}")
    finally:
        counter.detach()
        run.forward_passes += counter.forward
        run.backward_passes += counter.backward
        problems = guard.restore()
        if not before.unchanged(model):
            restored = before.restore(model)
            run.extra["model_restored"] = restored
            problems.insert(0, "the attack changed the model's weights or buffers "
                               + ("(restored)" if restored else "(its structure: the model must be reloaded)"))
    if failure is not None:
        return None, failure
    if not torch.equal(x, images):
        problems.append("the attack changed the clean images it was given in place")
    changed = [k for k, v in targets.items() if isinstance(v, torch.Tensor) and not torch.equal(given[k], v)]
    if changed:
        problems.append(f"the attack changed the targets in place ({', '.join(changed)})")
    if problems:
        return None, Verdict(Status.INVALID, "; ".join(problems))
    return adv, None


def _generator(seed: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed))
