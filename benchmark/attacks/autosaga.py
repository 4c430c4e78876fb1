"""Auto-SAGA (the paper's "Auto-SAGE"; Rathbun et al. 2022, paper Eq. 15/16) on one multi-task
model, each task playing the role of one model of the multi-model attack.

Per step, with the objective's per-task gradient terms g_k (raw gradients for TOTAL, divided by
the task's loss for GB-MTA, signs for SIGNTOTAL, one term for SINGLE-X):

1. blend G = sum_k alpha_k * g_k (alpha per task and pixel, initially 1; phi = 1 for CNNs);
2. look ahead: x1 = P(x + s sign(G));
3. adapt alpha by gradient ascent of the objective at x1 through a smooth sign
   (sign(u) ~ tanh(kappa u)): alpha_k += lr * d(x1) * kappa * s * g_k * sech^2(kappa G);
4. G_blend = gamma * G_blend + sum_k alpha_k g_k;  x = P(x + s sign(G_blend)).

Defaults follow the reference code: s = eps/steps, lr 10, kappa 50, gamma 0. The reference's
look-ahead loop reuses the last task's gradient for every task; here it is the objective's ascent
direction at x1 (all tasks), which is what the algorithm describes.

``preset="paper"`` reproduces the GB-MTA authors' code instead: their inputs are mean-subtracted
0-255 images and their gradients those of the batch-mean loss, so every gradient in the alpha
update is 1/255 (and, for per-sample losses, 1/B) of ours and the step 255 times larger; through
sech^2(kappa G) the weights then barely move and Auto-SAGE behaves almost like PGD. The look-ahead
term is T times the last task's gradient, as their loop computes it. With ``loss="batch"`` TOTAL's
and SINGLE-X's task gradients are those of the authors' batch loss.
"""

from __future__ import annotations

import torch

from benchmark.attacks.base import OptimizerAttack, check_steps, clip_to_ball
from benchmark.attacks.registry import register_attack
from benchmark.errors import UserError

__all__ = ["AutoSAGA"]


def _sech2(u: torch.Tensor) -> torch.Tensor:
    return 1.0 - torch.tanh(u) ** 2


@register_attack("autosaga")
class AutoSAGA(OptimizerAttack):
    budget_option = "steps"

    def __init__(self, objective: str = "gb-mta", *, steps: int = 10, step_size: float | None = None,
                 alpha_lr: float = 10.0, fitting: float = 50.0, gamma: float = 0.0, loss: str = "image",
                 precision: str = "float32",
                 preset: str = "reference") -> None:
        super().__init__(objective, loss=loss, precision=precision)
        if preset not in ("reference", "paper"):
            raise UserError(f"unknown Auto-SAGA preset {preset!r}; use 'reference' or 'paper' (the authors' units)")
        self.preset = preset
        self.steps, self.step_size = check_steps(steps), step_size
        self.alpha_lr, self.fitting, self.gamma = float(alpha_lr), float(fitting), float(gamma)

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        objective = self.objective(tasks)
        s = self.step_size / 255.0 if self.step_size is not None else eps / self.steps
        x_adv = images.detach().clone()
        alpha = None
        blend = torch.zeros_like(images)
        paper = self.preset == "paper"
        # the authors' units: gradients w.r.t. 0-255 inputs (1/255), of the batch mean of per-sample
        # losses (1/B; a batch loss is a mean already), and the step in 0-255 units (x 255)
        batch_mean = objective.batch_loss and objective.loss_tasks is not None
        unit = 1.0 / 255.0 / (1 if batch_mean else images.shape[0])
        for _ in range(self.steps):
            grads, _ = objective.task_gradients(model, self._start(x_adv), targets)
            if alpha is None:
                alpha = torch.ones_like(grads)
            g = (alpha * grads).sum(0)
            x1 = clip_to_ball(x_adv + s * g.sign(), images, eps)
            if paper:
                terms, _ = objective.task_gradients(model, self._start(x1), targets)
                ahead = terms[-1] * terms.shape[0] * unit  # their loop: T x the last task's term
                alpha = alpha + self.alpha_lr * ahead * self.fitting * (255.0 * s) * (unit * grads) * _sech2(
                    self.fitting * unit * g)
            else:
                ahead, _ = objective.direction(model, self._start(x1), targets)
                alpha = alpha + self.alpha_lr * ahead * self.fitting * s * grads * _sech2(self.fitting * g)
            blend = self.gamma * blend + (alpha * grads).sum(0)
            x_adv = clip_to_ball(x_adv + s * blend.sign(), images, eps)
        return x_adv.detach()
