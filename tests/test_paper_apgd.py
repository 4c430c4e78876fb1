"""APGD's ``paper`` preset against a literal re-implementation of the authors' APGD
(``AutoAttackMatGPUBase`` and ``AutoAttackMatGPUMTL`` of their ``main_r/autoattack.py``), on a tiny
model, with the same losses: the same adversarial images come out."""

import copy
import math

import numpy as np
import pytest
import torch

from benchmark.attacks import create_attack
from benchmark.attacks.apgd import APGD


def _authors_checkpoints(n, decrement=0.03):
    p = [0, 0.22]

    def grow(plist, start):
        nxt = plist[start] + max(plist[start] - plist[start - 1] - decrement, 0.06)
        if nxt >= 1.0:
            return
        plist.append(nxt)
        grow(plist, start + 1)

    grow(p, 1)
    out = []
    for v in p:
        w = int(np.ceil(v * n))
        if w not in out:
            out.append(w)
    return out, {k: v for v, k in enumerate(out)}


def _condition_one(f, j, w):
    rises = sum(1 for i in range(w[j - 1], w[j]) if f[i + 1] > f[i])
    return rises < 0.75 * (w[j] - w[j - 1])


def _condition_two(f, eta, j, w):
    return bool(eta[w[j - 1]] == eta[w[j]] and f[w[j - 1]] == f[w[j]])


def _authors_apgd(x_data, model, grad_fn, score_fn, eps, steps):
    """The authors' loop, transcribed (clip range [0, 1], eps on the [0, 1] scale)."""
    model.eval()  # as theirs: "Change model to evaluation mode for the attack"
    w, index = _authors_checkpoints(steps)
    b = x_data.shape[0]
    eta = torch.zeros(steps + 1, b)
    eta[0, :] = eps / steps
    f = torch.zeros(steps + 1, b)
    x = torch.zeros(3, *x_data.shape)
    x[0] = x_data
    for k in range(steps):
        if k == 0:
            g = grad_fn(x[0])
            x[1] = x[0] + eta[0][:, None, None, None] * torch.sign(g)
            x[1] = torch.clamp(torch.max(torch.min(x[1], x[0] + eps), x[0] - eps), 0, 1)
            f[0] = score_fn(x[0])
            f[1] = score_fn(x[1])
            values, indices = torch.max(f[0:2], dim=0)
            x_best = torch.stack([x[indices[i], i] for i in range(b)])
            f_best = values
            eta[1] = eta[0]
        else:
            g = grad_fn(x[1])
            z = x[1] + eta[k][:, None, None, None] * torch.sign(g)
            z = torch.max(torch.min(z, x_data + eps), x_data - eps)
            x[2] = x[1] + 0.75 * (z - x[1]) + 0.25 * (x[1] - x[0])
            x[2] = torch.max(torch.min(x[2], x_data + eps), x_data - eps)
            x[2] = torch.clamp(x[2], 0, 1)
            f[k + 1] = score_fn(x[2])
            for i in range(b):
                if f[k + 1, i] >= f_best[i]:
                    x_best[i] = x[2, i]
            f_best = torch.maximum(f[k + 1], f_best)
            if k in index:
                j = index[k]
                for i in range(b):
                    if _condition_one(f[:, i], j, w) or _condition_two(f[:, i], eta[:, i], j, w):
                        eta[k + 1, i] = eta[k, i] / 2.0
                    else:
                        eta[k + 1, i] = eta[k, i]
            else:
                eta[k + 1] = eta[k]
            x[0], x[1] = x[1].clone(), x[2].clone()
    return x_best


def test_the_checkpoints_are_the_authors():
    for n in (1, 5, 10, 20, 37, 100):
        assert APGD.paper_checkpoints(n) == _authors_checkpoints(n)[0]


@pytest.mark.parametrize("objective", ["total", "single-depth", "gb-mta"])
def test_paper_apgd_gives_the_authors_images(tiny_nyu, objective):
    model, tasks, batch = tiny_nyu
    images, eps, steps = batch["image"][:4], 8 / 255, 10
    targets = {k: v[:4] for k, v in batch.items()}
    chosen = [t for t in tasks if objective in ("total", "gb-mta") or t.name == "depth_zbuffer"]

    def batch_loss(x):
        out = model(x)
        return sum(t.loss(out[t.name], targets, "mean") for t in chosen)

    def per_sample(x):
        out = model(x)
        return torch.stack([t.loss(out[t.name], targets) for t in tasks], 1)

    with torch.no_grad():
        base = per_sample(images).mean(0)

    if objective == "gb-mta":
        def grad_fn(x):  # GB-MTA: sum over tasks of grad L_i / L_i, per sample
            x = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(per_sample(x).clamp_min(1e-12).log().sum(), x)
            return g

        def score_fn(x):  # the batch mean of each task's loss, relative to the clean loss
            with torch.no_grad():
                return sum((per_sample(x)[:, i].mean().item() - base[i].item()) / base[i].item()
                           for i in range(len(tasks)))
    else:
        def grad_fn(x):
            x = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(batch_loss(x), x)
            return g

        def score_fn(x):
            with torch.no_grad():
                return batch_loss(x)

    theirs = _authors_apgd(images, model, grad_fn, score_fn, eps, steps)
    attack = create_attack(f"apgd:{objective}", steps=steps, preset="paper", loss="batch")
    ours = attack(model, images, targets, tasks=tasks, eps=eps, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(ours, images)
    assert torch.allclose(ours, theirs, atol=1e-6), (ours - theirs).abs().max()
    halved = [s for s in attack.trace.step_sizes if (s < eps / steps - 1e-9).any()]
    assert math.isclose(float(attack.trace.step_sizes[0][0]), eps / steps, rel_tol=1e-6)
    assert attack.trace.checkpoints and (halved or len(attack.trace.checkpoints) >= 1)


def test_the_paper_preset_starts_from_the_clean_image():
    with pytest.raises(Exception, match="starts from the clean image"):
        create_attack("apgd:total", preset="paper", random_start=True)
    assert create_attack("apgd:total", preset="paper").random_start is False
    assert create_attack("apgd:total").random_start is True


# ---------------------------------------------------------------- Auto-SAGE in the authors' units
def _authors_autosage(x_clean, model255, tasks, criterion, eps, eps_step, steps, clip_min, clip_max,
                      lr=1e1, fitting=50, decay=0, normalize=False):
    """The authors' SelfAttentionGradientAttackProto, transcribed (their loop variable ``task`` in
    the look-ahead loop included), on their mean-subtracted 0-255 inputs."""
    model255.eval()
    def native_gradient(task, x_adv):
        x = x_adv.detach().clone().requires_grad_(True)
        loss = criterion(task, model255(x, task))
        loss.mean().backward()
        g = x.grad.detach()
        return g if not normalize else g / loss.detach()[:, None, None, None]

    def sech_squared(u):
        return 4 * torch.exp(2 * u) / ((torch.exp(2 * u) + 1) * (torch.exp(2 * u) + 1))

    x_adv = x_clean.clone()
    hi, lo = x_clean + eps, x_clean - eps
    alpha = torch.ones(len(tasks), *x_clean.shape)
    blend = torch.zeros_like(x_clean)
    for _ in range(steps):
        dcdx = torch.zeros(len(tasks), *x_clean.shape)
        for m, task in enumerate(tasks):
            dcdx[m] = native_gradient(task, x_adv)
        cumulative = sum(alpha[m] * dcdx[m] for m in range(len(tasks)))
        step_one = torch.max(lo, torch.min(hi, x_adv + eps_step * cumulative.sign()))
        step_one = torch.clamp(step_one.permute(0, 2, 3, 1), clip_min, clip_max).permute(0, 3, 1, 2)
        dfdx = torch.zeros_like(x_clean)
        for _m in range(len(tasks)):
            dfdx = dfdx - native_gradient(task, step_one)  # the authors' loop reuses the last `task`
        inner = sech_squared(sum(alpha[m] * dcdx[m] for m in range(len(tasks))) * fitting)
        dxdalpha = torch.stack([fitting * eps_step * dcdx[m] * inner for m in range(len(tasks))])
        alpha = alpha - torch.stack([dfdx * dxdalpha[m] for m in range(len(tasks))]) * lr
        blend = decay * blend + sum(alpha[m] * dcdx[m] for m in range(len(tasks)))
        x_adv = torch.max(lo, torch.min(hi, x_adv + eps_step * blend.sign()))
        x_adv = torch.clamp(x_adv.permute(0, 2, 3, 1), clip_min, clip_max).permute(0, 3, 1, 2)
    return x_adv


@pytest.mark.parametrize("objective", ["total", "gb-mta"])
def test_paper_autosage_reproduces_the_authors_units(tiny_nyu, objective):
    # in float64: the two unit systems round differently, and in float32 the sign of a gradient
    # component within rounding of zero can differ between them
    model, tasks, batch = tiny_nyu
    model = copy.deepcopy(model).double()
    images, eps, steps = batch["image"][:4].double(), 8 / 255, 3
    targets = {k: (v[:4].double() if v.is_floating_point() else v[:4]) for k, v in batch.items()}
    mean = torch.tensor([104.00698793, 116.66876762, 122.67891434], dtype=torch.float64)
    by_name = {t.name: t for t in tasks}

    class Model255(torch.nn.Module):  # the model on the authors' inputs, one task's output
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x, task):
            return self.inner((x + mean.view(1, 3, 1, 1)) / 255.0)[task]

    model255 = Model255()

    def criterion(task, out):
        if objective == "total":  # the authors' batch loss (reduction mean)
            return by_name[task].loss(out, targets, "mean")
        return by_name[task].loss(out, targets)  # per sample (reduction none)

    x255 = images * 255.0 - mean.view(1, 3, 1, 1)
    theirs = _authors_autosage(x255, model255, [t.name for t in tasks], criterion, eps * 255, eps * 255 / steps,
                               steps, -mean, 255 - mean, normalize=objective == "gb-mta")
    theirs = (theirs + mean.view(1, 3, 1, 1)) / 255.0
    attack = create_attack(f"autosaga:{objective}", steps=steps, preset="paper", loss="batch")
    ours = attack(model, images, targets, tasks=tasks, eps=eps, generator=torch.Generator().manual_seed(0))
    same = (ours - theirs).abs() < 1e-9
    assert same.double().mean() > 0.999, f"{(~same).sum().item()} of {same.numel()} values differ"
    if objective == "gb-mta":  # our units move the weights, and the result, where theirs barely do
        images = batch["image"].double()  # every image, 10 steps: the weights' moves add up to sign flips
        targets = {k: (v.double() if v.is_floating_point() else v) for k, v in batch.items()}
        out = {preset: create_attack(f"autosaga:{objective}", steps=10, preset=preset, loss="batch")(
            model, images, targets, tasks=tasks, eps=eps, generator=torch.Generator().manual_seed(0))
            for preset in ("paper", "reference")}
        assert ((out["paper"] - out["reference"]).abs() > 1e-6).any()
