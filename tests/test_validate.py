import pytest
import torch

from benchmark.attacks import Attack, clip_to_ball, run_attack, validate_output


class Broken(Attack):
    def __init__(self, mode):
        self.mode = mode
        self.calls = 0

    def perturb(self, model, images, targets, *, tasks, eps, generator):
        self.calls += 1
        x = images.clone()
        if self.mode == "nan":
            x[0, 0, 0, 0] = float("nan")
        elif self.mode == "out-of-ball":
            x = (x + 2 * eps).clamp(0, 1)
        elif self.mode == "out-of-range":
            x = x + 1.5 * eps
            x[0, 0, 0, 0] = 1.2
        elif self.mode == "mutate":
            with torch.no_grad():
                next(model.parameters()).add_(0.01)
        elif self.mode == "shape":
            x = x[:, :, :-1]
        elif self.mode == "dtype":
            x = x.double()
        elif self.mode == "nondeterministic":
            x = clip_to_ball(x + eps * torch.randn(x.shape).sign(), images, eps)  # ignores the generator
        elif self.mode == "raise":
            raise RuntimeError("boom")
        elif self.mode == "list":
            return [x]
        elif self.mode == "good":
            noise = torch.rand(x.shape, generator=generator) * 2 - 1
            x = clip_to_ball(x + eps * noise, images, eps)
        return x


@pytest.fixture()
def setup(tiny_nyu):
    model, tasks, batch = tiny_nyu
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    yield model, tasks, batch
    model.load_state_dict(saved)


@pytest.mark.parametrize(("mode", "status", "reason"), [
    ("good", "valid", ""),
    ("nan", "invalid", "non-finite values"),
    ("out-of-ball", "invalid", "left the eps-ball"),
    ("out-of-range", "invalid", "outside [0, 1]"),
    ("mutate", "invalid", "changed the model's weights"),
    ("shape", "invalid", "returned shape"),
    ("dtype", "invalid", "returned dtype torch.float64"),
    ("nondeterministic", "invalid", "not deterministic"),
    ("raise", "failed", "attack raised RuntimeError: boom"),
    ("list", "invalid", "returned list, not a tensor"),
])
def test_validator_verdicts(setup, mode, status, reason):
    model, tasks, batch = setup
    run = run_attack(Broken(mode), model, batch["image"], batch, tasks=tasks, eps=8, seed=0)
    assert run.verdict.status == status, run.verdict
    assert reason in run.verdict.reason
    if status != "valid":
        assert run.adversarial is None
    else:
        assert run.verdict.max_perturbation <= 8 + 1e-3


def test_out_of_ball_reports_the_size():
    x = torch.full((1, 3, 2, 2), 0.5)
    verdict = validate_output(x + 9 / 255, x, 8 / 255)
    assert not verdict.valid and "9.0000/255 > eps = 8.0000/255" in verdict.reason
    assert validate_output(x + 8 / 255, x, 8 / 255).valid  # on the boundary, within float tolerance


def test_determinism_check_can_be_skipped(setup):
    model, tasks, batch = setup
    attack = Broken("nondeterministic")
    run = run_attack(attack, model, batch["image"], batch, tasks=tasks, eps=8, seed=0, check_determinism=False)
    assert run.verdict.valid and attack.calls == 1
