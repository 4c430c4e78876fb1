"""Square Attack (Andriushchenko et al., ECCV 2020), L-infinity: a score-based black-box attack.

It never asks for a gradient: it starts from vertical stripes at the corners of the eps-ball
(each column of each channel at +eps or -eps) and then, at every query, sets one random square
window of each image to a random corner of the ball (one sign per channel) and keeps the change
where the objective's per-image score rose. The window covers a share ``p`` of the image that
starts at ``p_init`` and is halved on a fixed schedule over the query budget. Dense multi-task
outputs have no margin, so the score is the objective's (GB-MTA: the relative increase of every
task's loss, sum_i (L_i - l_i) / l_i; TOTAL: the summed loss; SINGLE-X: one task's loss).

Each query is one forward pass (and one more scores the clean images): its counted passes are
its queries. As a gradient-free attack it checks gradient masking: a defense against which it
beats every white-box attack is masking gradients, not robust (AutoAttack's check).
"""

from __future__ import annotations

import math

import torch

from benchmark.attacks.base import OptimizerAttack, clip_to_ball
from benchmark.attacks.objectives import output_losses
from benchmark.attacks.registry import register_attack
from benchmark.errors import UserError

__all__ = ["Square"]

#: where (as a share of the query budget) the window's share of the image is halved
HALVINGS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)


@register_attack("square")
class Square(OptimizerAttack):
    budget_option = "queries"
    gradient_free = True

    def __init__(self, objective: str = "gb-mta", *, queries: int = 200, p_init: float = 0.3,
                 loss: str = "image", precision: str = "float32") -> None:
        super().__init__(objective, loss=loss, precision=precision)
        if int(queries) < 1:
            raise UserError(f"queries must be >= 1, got {queries}")
        if not 0 < float(p_init) <= 1:
            raise UserError(f"p_init (the first window's share of the image) must be in (0, 1], got {p_init}")
        self.queries = int(queries)
        self.p_init = float(p_init)

    def window(self, query: int, height: int, width: int) -> int:
        """The side of the square window at ``query``: sqrt(p * H * W), p halved on schedule."""
        p = self.p_init / 2 ** sum(query / self.queries > h for h in HALVINGS)
        return max(1, min(height, width, round(math.sqrt(p * height * width))))

    @torch.no_grad()
    def perturb(self, model, images, targets, *, tasks, eps, generator):
        objective = self.objective(tasks)
        dev, dt = images.device, images.dtype

        def signs(*shape):
            return 2.0 * torch.randint(0, 2, shape, generator=generator, device=dev).to(dt) - 1.0

        def score(x):
            return objective.score(output_losses(model(x), targets, tasks), clean)

        b, c, h, w = images.shape
        clean = output_losses(model(images), targets, tasks)
        best_x = clip_to_ball(images + eps * signs(b, c, 1, w), images, eps)
        best = score(best_x)
        rows = torch.arange(h, device=dev).view(1, h, 1)
        cols = torch.arange(w, device=dev).view(1, 1, w)
        for query in range(1, self.queries):
            side = self.window(query, h, w)
            top = torch.randint(0, h - side + 1, (b, 1, 1), generator=generator, device=dev)
            left = torch.randint(0, w - side + 1, (b, 1, 1), generator=generator, device=dev)
            inside = ((rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)).unsqueeze(1)
            corner = eps * signs(b, c, 1, 1)
            candidate = clip_to_ball(torch.where(inside, images + corner, best_x), images, eps)
            value = score(candidate)
            better = value > best
            best_x = torch.where(better.view(b, 1, 1, 1), candidate, best_x)
            best = torch.where(better, value, best)
        return best_x
