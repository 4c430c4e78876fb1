"""APGD (Croce & Hein 2020) for multi-task models, as the paper's Algorithm 3.

Follows the AutoAttack reference implementation step for step: L-infinity random start, initial
step 2 eps (``preset="paper"``: eps/steps, as the paper's runs), momentum 0.75 (none in the first
step), checkpoints after ``0.22 n`` iterations and then every ``max(k - 0.03 n, 0.06 n)``, and at
each checkpoint the step of a sample is halved, and it restarts from its best point, when

1. the score rose in at most 75% of the steps since the last checkpoint, or
2. the step was not halved at the last checkpoint and the best score has not improved since.

The score that decides the best point and the checkpoints is the objective's: the task's loss for
SINGLE-X (exactly the reference), and the paper's multi-task score sum_i (L_i - l_i)/l_i for GB-MTA
and SIGNTOTAL. With restarts, each sample keeps its best point over all runs.

Convention kept from the reference: the oscillation check compares the last k scores with their
predecessors in a zero-initialised history, so the very first check compares the first score with
the (still zero) end of the history.

``preset="paper"`` is the APGD of the GB-MTA authors' code instead, which differs from the reference:
it starts from the clean image with step eps/steps (the first step without momentum, the clean
image kept if it scores higher); each later step takes z = x + eta sign(grad) projected on the
ball but **not** clipped to [0, 1], then x' = x + 0.75 (z - x) + 0.25 (x - x_prev), projected and
clipped; a point at least as good as the best replaces it (``>=``); checkpoints are
ceil(p n) for p = 0, 0.22 and p_j+1 = p_j + max(p_j - p_j-1 - 0.03, 0.06) below 1; at a checkpoint
the step halves when the score rose in fewer than 75% of the steps since the last one, or when
both the step and the score (the current one, not the best) are unchanged since the last one; the
point never restarts from the best. Its score is the authors' too: the batch loss summed over the
attacked tasks for SINGLE-X and TOTAL (with ``loss="batch"``; per sample otherwise), the batch
mean of the relative increase sum_i (mean L_i - l_i) / l_i for GB-MTA (the clean loss l_i of the
batch here; the authors' is the data set's), and the raw per-sample loss sum for SIGNTOTAL. Each
step costs one forward and backward pass at the current point and one forward pass to score the
new one, as in their code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from benchmark.attacks.base import OptimizerAttack, clip_to_ball
from benchmark.attacks.registry import register_attack
from benchmark.errors import UserError

__all__ = ["APGD", "APGDTrace"]


@dataclass
class APGDTrace:
    """What one run did, per iteration: the score at the new point (B,) and the step size (B,)."""

    scores: list[torch.Tensor] = field(default_factory=list)
    step_sizes: list[torch.Tensor] = field(default_factory=list)
    checkpoints: list[int] = field(default_factory=list)


@register_attack("apgd")
class APGD(OptimizerAttack):
    budget_option = "steps"

    def __init__(self, objective: str = "gb-mta", *, steps: int = 20, restarts: int = 1, rho: float = 0.75,
                 momentum: float = 0.75, preset: str = "reference", random_start: bool | None = None,
                 loss: str = "image", precision: str = "float32") -> None:
        super().__init__(objective, loss=loss, precision=precision)
        if preset not in ("reference", "paper"):
            raise UserError(f"unknown APGD preset {preset!r}; use 'reference' (step 2 eps) or 'paper' (eps/steps)")
        if int(steps) < 1 or int(restarts) < 1:
            raise UserError(f"APGD needs steps >= 1 and restarts >= 1, got {steps} and {restarts}")
        self.steps, self.restarts, self.rho, self.momentum = int(steps), int(restarts), float(rho), float(momentum)
        if preset == "paper" and random_start:
            raise UserError("APGD's paper preset starts from the clean image (as the authors' code); "
                            "random_start=True needs preset='reference'")
        self.preset = preset
        self.random_start = (preset == "reference") if random_start is None else bool(random_start)
        self.trace: APGDTrace | None = None

    def initial_step(self, eps: float) -> float:
        return 2.0 * eps if self.preset == "reference" else eps / self.steps

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        objective = self.objective(tasks)
        with torch.no_grad():
            clean = objective.losses(model, images, targets)
        best_x, best_score = None, None
        for _ in range(self.restarts):
            if self.preset == "paper":
                x, score = self._run_paper(model, images, targets, objective, clean, eps)
            else:
                x, score = self._run(model, images, targets, objective, clean, eps, generator)
            if best_x is None:
                best_x, best_score = x, score
            else:
                better = score > best_score
                best_x = torch.where(better.reshape(-1, *([1] * (x.dim() - 1))), x, best_x)
                best_score = torch.where(better, score, best_score)
        return best_x.detach()

    def _run(self, model, x, targets, objective, clean, eps, generator):
        n = self.steps
        n2, n_min, size_decr = max(int(0.22 * n), 1), max(int(0.06 * n), 1), max(int(0.03 * n), 1)
        b = x.shape[0]
        view = (-1,) + (1,) * (x.dim() - 1)
        if self.random_start:
            t = 2 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1
            x_adv = (x + eps * t / t.reshape(b, -1).abs().max(1)[0].reshape(view)).clamp(0.0, 1.0)
        else:
            x_adv = x.clone()
        x_best = x_adv.clone()
        history = torch.zeros(n, b, device=x.device)
        grad, losses = objective.direction(model, self._start(x_adv), targets)
        grad_best = grad.clone()
        score_best = objective.score(losses, clean)
        step = torch.full((b, *view[1:]), self.initial_step(eps), device=x.device, dtype=x.dtype)
        x_adv_old = x_adv.clone()
        k, counter = n2, 0
        best_last_check = score_best.clone()
        reduced_last_check = torch.ones(b, dtype=torch.bool, device=x.device)
        trace = APGDTrace()
        for i in range(n):
            with torch.no_grad():
                grad2 = x_adv - x_adv_old
                x_adv_old = x_adv.clone()
                a = self.momentum if i > 0 else 1.0
                z = clip_to_ball(x_adv + step * grad.sign(), x, eps)
                x_adv = clip_to_ball(x_adv + (z - x_adv) * a + grad2 * (1 - a), x, eps)
            grad, losses = objective.direction(model, self._start(x_adv), targets)
            with torch.no_grad():
                score = objective.score(losses, clean)
                history[i] = score
                improved = score > score_best
                keep = improved.reshape(view)
                x_best = torch.where(keep, x_adv, x_best)
                grad_best = torch.where(keep, grad, grad_best)
                score_best = torch.where(improved, score, score_best)
                trace.scores.append(score.detach())  # stays on the device: no per-step host sync
                trace.step_sizes.append(step.reshape(b).clone())
                counter += 1
                if counter == k:
                    rises = torch.zeros(b, device=x.device)
                    for c in range(k):  # negative indices wrap around, as in the reference
                        rises += (history[i - c] > history[i - c - 1]).float()
                    oscillating = rises <= k * self.rho
                    no_improvement = ~reduced_last_check & (best_last_check >= score_best)
                    halve = oscillating | no_improvement
                    reduced_last_check = halve.clone()
                    best_last_check = score_best.clone()
                    mask = halve.reshape(view)
                    step = torch.where(mask, step / 2.0, step)
                    x_adv = torch.where(mask, x_best, x_adv)
                    grad = torch.where(mask, grad_best, grad)
                    trace.checkpoints.append(i)
                    counter = 0
                    k = max(k - size_decr, n_min)
        trace.scores = [s.cpu() for s in trace.scores]
        trace.step_sizes = [s.cpu() for s in trace.step_sizes]
        self.trace = trace
        return x_best, score_best

    # ------------------------------------------------------------------ the authors' APGD
    @staticmethod
    def paper_checkpoints(n: int) -> list[int]:
        """The authors' checkpoints: ceil(p n) for p = 0, 0.22, then p_j+1 = p_j + max(p_j - p_j-1 -
        0.03, 0.06) while below 1, without repeats."""
        p = [0.0, 0.22]
        while (nxt := p[-1] + max(p[-1] - p[-2] - 0.03, 0.06)) < 1.0:
            p.append(nxt)
        return list(dict.fromkeys(math.ceil(v * n) for v in p))

    def _paper_score(self, model, x, targets, objective, clean) -> torch.Tensor:
        """The authors' score of ``x`` (B,), from one forward pass."""
        with torch.no_grad():
            outputs = model(x)
            tasks = objective.tasks
            if objective.loss_tasks is not None:
                chosen = objective.loss_tasks
                if objective.batch_loss:
                    value = sum(tasks[i].loss(outputs[tasks[i].name], targets, "mean") for i in chosen)
                    return value.expand(x.shape[0]).clone()
                return sum(tasks[i].loss(outputs[tasks[i].name], targets) for i in chosen)
            losses = torch.stack([t.loss(outputs[t.name], targets) for t in tasks], 1)
            if objective.name == "gb-mta":
                base = clean.mean(0)
                return ((losses.mean(0) - base) / base.clamp_min(1e-12)).sum().expand(x.shape[0]).clone()
            return losses.sum(1)  # SIGNTOTAL (and other objectives): the raw loss sum per sample

    def _run_paper(self, model, x0, targets, objective, clean, eps):
        n, b = self.steps, x0.shape[0]
        view = (-1,) + (1,) * (x0.dim() - 1)
        checkpoints = self.paper_checkpoints(n)
        position = {w: j for j, w in enumerate(checkpoints)}
        eta = torch.zeros(n + 1, b, device=x0.device, dtype=x0.dtype)
        eta[0] = eps / n
        f = torch.zeros(n + 1, b, device=x0.device, dtype=torch.float64)
        trace = APGDTrace()
        prev = cur = x0.detach().clone()
        best, f_best = None, None
        for k in range(n):
            grad, _ = objective.direction(model, self._start(cur), targets)
            with torch.no_grad():
                if k == 0:
                    new = clip_to_ball(x0 + eta[0].reshape(view) * grad.sign(), x0, eps)
                    f[0] = self._paper_score(model, x0, targets, objective, clean).double()
                    f[1] = self._paper_score(model, new, targets, objective, clean).double()
                    take = f[1] > f[0]  # on a tie the clean image (the first maximum) stays
                    best = torch.where(take.reshape(view), new, x0)
                    f_best = torch.maximum(f[0], f[1])
                    eta[1] = eta[0]
                    prev, cur = x0, new
                else:
                    z = torch.minimum(torch.maximum(cur + eta[k].reshape(view) * grad.sign(), x0 - eps), x0 + eps)
                    new = cur + self.momentum * (z - cur) + (1 - self.momentum) * (cur - prev)
                    new = clip_to_ball(new, x0, eps)
                    f[k + 1] = self._paper_score(model, new, targets, objective, clean).double()
                    take = f[k + 1] >= f_best
                    best = torch.where(take.reshape(view), new, best)
                    f_best = torch.maximum(f[k + 1], f_best)
                    if k in position and position[k] > 0:
                        w0, w1 = checkpoints[position[k] - 1], checkpoints[position[k]]
                        rises = (f[w0 + 1: w1 + 1] > f[w0:w1]).sum(0)
                        oscillating = rises < self.rho * (w1 - w0)
                        stalled = (eta[w0] == eta[w1]) & (f[w0] == f[w1])
                        eta[k + 1] = torch.where(oscillating | stalled, eta[k] / 2.0, eta[k])
                        trace.checkpoints.append(k)
                    else:
                        eta[k + 1] = eta[k]
                    prev, cur = cur, new
                trace.scores.append(f[k + 1].float().cpu())
                trace.step_sizes.append(eta[k].cpu())
        self.trace = trace
        return best, f_best.to(x0.dtype)
