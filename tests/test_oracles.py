"""Oracles: on a single-task model our SINGLE-X FGSM, PGD and MIM give torchattacks' adversarial
images, and our APGD follows torchattacks.APGD (its port of the AutoAttack reference) loss for
loss, including the step-size halvings.

Convention differences, none of which changes the images: torchattacks takes the mean
cross-entropy over the batch and pixels, we sum per-sample losses (a positive factor, so the same
gradient signs and L1-normalised momentum); torchattacks projects with clamp(x_adv - x, -eps, eps),
we with min/max against x -+ eps (equal up to float rounding, hence atol 1e-6)."""

import pytest
import torch
import torch.nn.functional as F

torchattacks = pytest.importorskip("torchattacks")

from benchmark.attacks import create_attack  # noqa: E402
from benchmark.models import BranchedModel  # noqa: E402
from benchmark.tasks import Task  # noqa: E402

EPS = 8 / 255


def seg_task(classes=10):
    return Task("segment_semantic", "segmentation", classes, {"mIoU": True}, "custom")


class ClassificationTask(Task):
    """Image classification from spatially averaged logits (for the APGD oracle)."""

    def loss(self, pred, targets, reduction="none"):
        return F.cross_entropy(pred.mean((2, 3)), targets["label"], reduction=reduction)


@pytest.fixture(scope="module")
def single_task():
    """In float64: the two sides reduce the loss differently (mean against sum), so a gradient
    component that nearly cancels can round to opposite signs in float32 and send one pixel a
    step the other way; in float64 that takes a cancellation 2^29 times closer."""
    torch.manual_seed(0)
    model = BranchedModel("AS", {"segment_semantic": 10}, width=0.125, head_hidden=16, head_rates=(1, 2)).eval()
    model.double()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(4, 3, 24, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.randint(0, 10, (4, 24, 24), generator=torch.Generator().manual_seed(2))
    return model, x, labels


class SegLogits(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x)["segment_semantic"]


def _ours(spec, model, x, labels, **options):
    attack = create_attack(spec, **options)
    return attack(model, x, {"segment_semantic": labels}, tasks=[seg_task()], eps=EPS,
                  generator=torch.Generator().manual_seed(0))


def test_fgsm_matches_torchattacks(single_task):
    model, x, labels = single_task
    ref = torchattacks.FGSM(SegLogits(model), eps=EPS)(x, labels)
    ours = _ours("fgsm:single-segment", model, x, labels)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    assert (ours - x).abs().max() > EPS * 0.99


def test_pgd_matches_torchattacks(single_task):
    model, x, labels = single_task
    ref = torchattacks.PGD(SegLogits(model), eps=EPS, alpha=EPS / 10, steps=10, random_start=False)(x, labels)
    ours = _ours("pgd:single-segment", model, x, labels, steps=10)  # the paper preset: step eps/steps
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    ours_alpha = _ours("pgd:single-segment", model, x, labels, steps=7, step_size=2)
    ref_alpha = torchattacks.PGD(SegLogits(model), eps=EPS, alpha=2 / 255, steps=7, random_start=False)(x, labels)
    torch.testing.assert_close(ours_alpha, ref_alpha, atol=1e-6, rtol=0)


def test_mim_matches_torchattacks(single_task):
    model, x, labels = single_task
    ref = torchattacks.MIFGSM(SegLogits(model), eps=EPS, alpha=2 / 255, steps=6, decay=1.0)(x, labels)
    ours = _ours("mim:single-segment", model, x, labels, steps=6, step_size=2, mu=1.0)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)


class Recorder(torch.nn.Module):
    """Classification logits of the wrapped model; records the per-sample CE of every call."""

    def __init__(self, model, labels):
        super().__init__()
        self.model, self.labels, self.losses = model, labels, []

    def forward(self, x):
        logits = self.model(x)["cls"].mean((2, 3))
        self.losses.append(F.cross_entropy(logits, self.labels, reduction="none").detach())
        return logits


def test_apgd_follows_the_autoattack_reference(single_task):
    torch.manual_seed(0)
    model = BranchedModel("AS", {"cls": 10}, width=0.125, head_hidden=16, head_rates=(1, 2)).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.rand(6, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 10, (6,), generator=torch.Generator().manual_seed(4))
    steps = 40
    recorder = Recorder(model, y)
    ref = torchattacks.APGD(recorder, eps=EPS, steps=steps, n_restarts=1, loss="ce", seed=0)
    torch.manual_seed(0)
    ref.attack_single_run(x, y)
    ref_losses = torch.stack(recorder.losses)  # start point, then one per iteration

    task = ClassificationTask("cls", "classification", 10, {}, "custom")
    attack = create_attack("apgd:single-cls", steps=steps)
    attack(model, x, {"label": y}, tasks=[task], eps=EPS, generator=torch.Generator().manual_seed(0))
    ours = torch.stack(attack.trace.scores)
    torch.testing.assert_close(ours, ref_losses[1:], rtol=1e-4, atol=1e-5)
    steps_taken = torch.stack(attack.trace.step_sizes)
    assert torch.allclose(steps_taken[0], torch.full((6,), 2 * EPS))
    assert (steps_taken[-1] < 2 * EPS).any(), "the run must exercise a step-size halving"
    # the reference's checkpoint schedule: first after 0.22 n iterations, then k -= 0.03 n, k >= 0.06 n
    expected, k, i = [], max(int(0.22 * steps), 1), -1
    while i + k < steps:
        i += k
        expected.append(i)
        k = max(k - max(int(0.03 * steps), 1), max(int(0.06 * steps), 1))
    assert attack.trace.checkpoints == expected
