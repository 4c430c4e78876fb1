"""Streaming evaluation of a multi-task model: per-task metrics over a data loader."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from benchmark.data import to_device
from benchmark.metric_base import TaskMetrics
from benchmark.tasks import Task, TaskMetric

__all__ = ["check_outputs", "evaluate", "per_image_metrics"]

Batch = dict[str, torch.Tensor]


@torch.no_grad()
def evaluate(model: torch.nn.Module, tasks: list[Task], batches: Iterable[Batch], *,
             device: torch.device | str = "cpu") -> dict[str, dict[str, float]]:
    """Metrics of every task over ``batches`` (the runner scores adversarial images with
    :func:`per_image_metrics`)."""
    model.eval()
    metrics = TaskMetrics.of(tasks)
    for batch in batches:
        batch = to_device(batch, device)
        metrics.update(model(batch["image"]), batch)
    return metrics.compute()


@torch.no_grad()
def per_image_metrics(tasks: list[Task], outputs: dict[str, torch.Tensor], batch: Batch) -> list[dict[str, TaskMetric]]:
    """Each task's streaming metric over each image of ``batch`` alone, one ``{task: metric}``
    per image: merged, they are the batch's metrics; one taken out of the merge leaves the others'."""
    size = batch["image"].shape[0]
    out = []
    for i in range(size):
        one = {k: v[i: i + 1] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == size else v
               for k, v in batch.items()}
        out.append(TaskMetrics.of(tasks).update({t.name: outputs[t.name][i: i + 1] for t in tasks}, one))
    return out


def check_outputs(model: torch.nn.Module, tasks: list[Task], images: torch.Tensor, *, what: str = "the model") -> None:
    """Refuse a model whose outputs do not fit ``tasks``: it must map [0, 1] images (B, 3, H, W)
    to ``{task: (B, channels, H, W)}``. The message names the task and the shape expected."""
    from benchmark.errors import UserError

    expected = {t.name: (images.shape[0], t.channels, *images.shape[2:]) for t in tasks}
    wanted = ", ".join(f"{name}: {tuple(shape)}" for name, shape in expected.items())
    try:
        with torch.no_grad():
            outputs = model(images)
    except Exception as exc:  # any failure of a user's model is reported, not raised
        raise UserError(f"{what} failed on a batch of shape {tuple(images.shape)} ({type(exc).__name__}: {exc}); "
                        f"it must map [0, 1] images to {{task: output}} with {wanted}") from None
    if not isinstance(outputs, dict):
        raise UserError(f"{what} returned a {type(outputs).__name__}, not a dict {{task: output}}; expected {wanted}")
    for name, shape in expected.items():
        if name not in outputs:
            raise UserError(f"{what} has no output for the task {name!r} (it returned "
                            f"{', '.join(map(str, outputs)) or 'nothing'}); expected {wanted}")
        out = outputs[name]
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UserError(f"{what}'s output for the task {name!r} has shape {got}; expected {shape} "
                            f"(batch, {name} channels, height, width)")
        if not out.is_floating_point() or not torch.isfinite(out).all():
            raise UserError(f"{what}'s output for the task {name!r} must be finite floating-point values "
                            f"(got dtype {out.dtype}{'' if not out.is_floating_point() else ' with NaN or inf'})")


def model_problem(model: torch.nn.Module, images: torch.Tensor, *, name: str = "") -> str:
    """What makes ``model`` (in its deployed form) unfit to be attacked, checked on its own before
    any attack, so that a fault of the model is not blamed on an attack: it must leave its weights
    and buffers alone when it runs, give the same outputs for the same images twice, and pass a
    gradient from its outputs back to its input. Empty when it does; the model is left as it was."""
    from benchmark.defenses.inference import deployed

    who = f"the model {name!r}" if name else "the model"
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        outs = []
        for _ in range(2):
            with torch.no_grad(), deployed(model, 0):
                outs.append({k: v.detach().clone() for k, v in model(images).items()})
        changed = [k for k, v in model.state_dict().items() if k in state and not torch.equal(v, state[k])]
        if changed:
            more = ", ..." if len(changed) > 3 else ""
            return (f"{who} changes its own weights or buffers when it runs ({', '.join(changed[:3])}{more}; e.g. "
                    "BatchNorm statistics in training mode, or a counter): an attack needs a fixed function; put it "
                    "in eval mode and keep its state out of forward()")
        gap = max(float((outs[0][k].float() - outs[1][k].float()).abs().max()) for k in outs[0])
        if gap != 0:
            return (f"{who} is not deterministic: two forwards of the same images differ by up to {gap:.3g}; a "
                    "randomised model is attacked as a defense that declares its randomness (EOT), not as a plain "
                    "model")
        x = images.detach().clone().requires_grad_(True)
        with torch.enable_grad(), deployed(model, 0):
            total = sum(v.float().sum() for v in model(x).values())
        if not isinstance(total, torch.Tensor) or not total.requires_grad:
            return (f"{who} passes no gradient to its input: its outputs do not depend differentiably on the images "
                    "(does its forward run under torch.no_grad(), detach, or round its input?); gradient attacks "
                    "need d(outputs)/d(input)")
        (grad,) = torch.autograd.grad(total, x, allow_unused=True)
        if grad is None or not bool(torch.isfinite(grad).all()) or not bool(grad.abs().max() > 0):
            what = "missing" if grad is None else "zero or not finite"
            return f"{who} passes no usable gradient to its input (it is {what}); gradient attacks need it"
        return ""
    finally:
        with torch.no_grad():
            model.load_state_dict(state, strict=False)


def degenerate_metrics(clean: dict[str, dict[str, float]], tasks: list[Task], batches) -> list[str]:
    """What is degenerate about a model's clean metrics on ``batches`` (empty when nothing is): a
    metric at 0 (its relative drop, and so the ARP, is undefined), or a task on which the model is
    no better than a constant prediction (majority class, mean value, mean direction) on the same
    images, so that an attack on it measures little."""
    import math

    from benchmark.scoring import task_arp

    problems = [f"{task} {metric} is {value:g}" for task, values in clean.items() for metric, value in values.items()
                if value == 0 or not math.isfinite(value)]
    trivial = TaskMetrics.of(tasks)
    for batch in batches:
        trivial.update({t.name: t.trivial_prediction(batch) for t in tasks}, batch)
    constant = trivial.compute()
    for t in tasks:
        try:
            gain = task_arp({t.name: constant[t.name]}, {t.name: clean[t.name]}, [t])[t.name]
        except (ValueError, KeyError):
            continue
        if gain >= 0:  # the model's metrics are not better than the constant's
            first = next(iter(t.metrics))
            problems.append(f"{t.name}: no better than a constant prediction ({first} {clean[t.name][first]:.4g} "
                            f"against {constant[t.name][first]:.4g})")
    return problems
