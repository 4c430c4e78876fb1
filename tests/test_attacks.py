import importlib.metadata
import itertools

import pytest
import torch

from benchmark import registry as generic_registry
from benchmark.attacks import create_attack, create_objective, list_attacks, run_attack
from benchmark.attacks import registry as registry_module
from benchmark.attacks.objectives import per_task_losses
from benchmark.attacks.spec import AttackSpec
from benchmark.errors import UserError
from benchmark.evaluation import evaluate
from benchmark.scoring import arp


def test_every_optimizer_objective_combination_is_listed():
    names = list_attacks()
    optimizers = ["apgd", "autosaga", "evade-pgd", "fgsm", "mim", "pgd", "square"]
    objectives = ["single-segment", "single-normal", "single-depth", "single-keypoint", "single-edge",
                  "total", "signtotal", "gb-mta"]
    for opt in optimizers:
        for obj in objectives:
            assert f"{opt}:{obj}" in names
    assert "autoattack" in names
    assert list_attacks("apgd:*") == [n for n in names if n.startswith("apgd:")]
    # every optimizer with GB-MTA: the seven built-in ones (the registries are restored after each test)
    gb_mta = list_attacks("*:gb-mta")
    assert gb_mta == [n for n in names if n.endswith(":gb-mta")]
    assert set(gb_mta) == {f"{opt}:gb-mta" for opt in optimizers}


@pytest.mark.parametrize(("spec", "options", "message"), [
    ("cw:total", {}, "unknown attack 'cw'"),
    ("pgd", {}, "needs an objective"),
    ("pgd:max", {}, "unknown objective 'max'"),
    ("pgd:total", {"stepz": 3}, "bad options for attack 'pgd:total'"),
    ("pgd:total", {"steps": 0}, "steps must be >= 1"),
    ("autoattack:total", {}, "takes no objective"),
    ("apgd:total", {"preset": "fast"}, "unknown APGD preset 'fast'"),
])
def test_bad_attack_specs_are_user_errors(tiny_nyu, spec, options, message):
    _, tasks, _ = tiny_nyu
    with pytest.raises(UserError, match=message):
        create_attack(spec, **options).objective(tasks)


def test_single_objective_needs_the_task(tiny_nyu):
    _, tasks, _ = tiny_nyu
    with pytest.raises(UserError, match="has no task 'keypoint'"):
        create_objective("single-keypoint", tasks)
    assert create_objective("single-depth_zbuffer", tasks).name == "single-depth"


def test_single_x_is_read_in_one_place(tiny_nyu):
    """A task is named by its full name, short name or label, in any case; the attack's name, the
    objective's and the leaderboard's reading of a label agree."""
    from benchmark.attacks.objectives import parse_single

    _, tasks, _ = tiny_nyu
    for written in ("single-depth", "single-depth_zbuffer", " SINGLE-Depth "):
        assert parse_single(written, tasks) == ("depth_zbuffer", "single-depth", True)
        assert AttackSpec.parse(f"pgd:{written.strip()}", tasks=tasks).objective == "single-depth"
        assert create_objective(written, tasks).name == "single-depth"
    assert parse_single("single-keypoint", tasks) == ("keypoint", "single-keypoint", False)
    assert parse_single("total", tasks) is None and parse_single("gb-mta", tasks) is None


def _slow_task_gradients(model, x, batch, tasks):
    grads, losses = [], []
    for i, _ in enumerate(tasks):
        xi = x.detach().clone().requires_grad_(True)
        loss = per_task_losses(model, xi, batch, tasks)[:, i]
        (g,) = torch.autograd.grad(loss.sum(), xi)
        grads.append(g)
        losses.append(loss.detach())
    return grads, losses


def test_gb_mta_direction_equals_per_task_normalised_gradients(tiny_nyu):
    model, tasks, batch = tiny_nyu
    x = batch["image"].clone().requires_grad_(True)
    fast, _ = create_objective("gb-mta", tasks).direction(model, x, batch)
    grads, losses = _slow_task_gradients(model, batch["image"], batch, tasks)
    slow = sum(g / loss.view(-1, 1, 1, 1) for g, loss in zip(grads, losses, strict=True))
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-7)
    # and it is not simply the TOTAL gradient
    total, _ = create_objective("total", tasks).direction(model, batch["image"].clone().requires_grad_(True), batch)
    assert not torch.allclose(total.sign(), fast.sign())


def test_signtotal_and_total_directions(tiny_nyu):
    model, tasks, batch = tiny_nyu
    grads, _ = _slow_task_gradients(model, batch["image"], batch, tasks)
    sign_total, _ = create_objective("signtotal", tasks).direction(
        model, batch["image"].clone().requires_grad_(True), batch)
    torch.testing.assert_close(sign_total, sum(g.sign() for g in grads))
    total, _ = create_objective("total", tasks).direction(model, batch["image"].clone().requires_grad_(True), batch)
    torch.testing.assert_close(total, sum(grads), rtol=1e-4, atol=1e-7)


def _arp(model, tasks, batch, spec, eps, **options):
    run = run_attack(create_attack(spec, **options), model, batch["image"], batch, tasks=tasks, eps=eps, seed=0,
                     check_determinism=False)
    assert run.verdict.valid, run.verdict
    clean = evaluate(model, tasks, [batch])
    adv = evaluate(model, tasks, [{**batch, "image": run.adversarial}])
    return arp(clean, adv, tasks)


def test_larger_eps_never_lowers_arp(tiny_nyu):
    model, tasks, batch = tiny_nyu
    values = [_arp(model, tasks, batch, "pgd:gb-mta", eps, steps=5) for eps in (1, 2, 4, 8)]
    assert all(b >= a - 0.5 for a, b in itertools.pairwise(values)), values
    assert values[-1] > values[0] + 5, values


@pytest.mark.parametrize("objective", ["total", "gb-mta"])
def test_pgd_beats_fgsm(tiny_nyu, objective):
    model, tasks, batch = tiny_nyu
    fgsm = _arp(model, tasks, batch, f"fgsm:{objective}", 4)
    pgd = _arp(model, tasks, batch, f"pgd:{objective}", 4, steps=10)
    assert pgd > fgsm, (fgsm, pgd)


def test_every_attack_beats_random_noise(tiny_nyu):
    model, tasks, batch = tiny_nyu
    noise = torch.rand(batch["image"].shape, generator=torch.Generator().manual_seed(0)).sign() * 2 - 1
    noisy = (batch["image"] + 4 / 255 * noise).clamp(0, 1)
    clean = evaluate(model, tasks, [batch])
    noise_arp = arp(clean, evaluate(model, tasks, [{**batch, "image": noisy}]), tasks)
    for spec in ("mim:gb-mta", "apgd:gb-mta", "autosaga:gb-mta", "apgd:signtotal"):
        assert _arp(model, tasks, batch, spec, 4, steps=5) > noise_arp + 3, spec


def test_apgd_returns_its_best_point(tiny_nyu):
    model, tasks, batch = tiny_nyu
    attack = create_attack("apgd:gb-mta", steps=12)
    objective = attack.objective(tasks)
    gen = torch.Generator().manual_seed(0)
    adv = attack(model, batch["image"], batch, tasks=tasks, eps=8 / 255, generator=gen)
    with torch.no_grad():
        clean = per_task_losses(model, batch["image"], batch, tasks)
        score = objective.score(per_task_losses(model, adv, batch, tasks), clean)
    best_seen = torch.stack(attack.trace.scores).max(0).values
    torch.testing.assert_close(score, torch.maximum(score, best_seen), rtol=1e-5, atol=1e-5)
    assert (score >= best_seen - 1e-4).all()


def test_autoattack_is_at_least_as_strong_as_its_members(tiny_nyu):
    model, tasks, batch = tiny_nyu
    ens = _arp(model, tasks, batch, "autoattack", 4, steps=5, objectives="total,gb-mta")
    member = _arp(model, tasks, batch, "apgd:gb-mta", 4, steps=5)
    assert ens >= member - 1.0, (ens, member)


def test_attacks_leave_the_model_as_it_was(tiny_nyu):
    model, tasks, batch = tiny_nyu
    model.train()
    try:
        create_attack("pgd:total", steps=2)(model, batch["image"], batch, tasks=tasks, eps=4 / 255,
                                            generator=torch.Generator().manual_seed(0))
        assert model.training and all(p.requires_grad for p in model.parameters())
    finally:  # the fixture is shared: back in eval mode whether or not the assert held
        model.eval()


def test_every_builtin_attack_is_deterministic_on_the_cpu(tiny_nyu):
    """What lets a run skip the determinism re-run of mtlbench's own attacks on its own models on
    the CPU (benchmark.runner.cells.needs_determinism_check): every built-in attack and objective,
    with its defaults and with the options the paper profile gives it, returns the same images bit
    for bit when run again with the same seed (the runner's own check, run_attack's re-run)."""
    from benchmark.suites import load_suite

    model, tasks, batch = tiny_nyu
    two = {k: v[:2] for k, v in batch.items()}
    paper = load_suite("tiny-nyuv2-resnet34").profile("paper").options
    ours = {"apgd", "autosaga", "evade-pgd", "fgsm", "mim", "pgd", "square", "autoattack"}  # plugins may be there too
    names = [n for n in list_attacks(tasks=tasks) if n.partition(":")[0] in ours]
    assert len(names) == 7 * 6 + 1
    for name in names:
        spec = AttackSpec.parse(name, tasks=tasks)
        assert spec.builtin, name
        budget = getattr(spec.attack_class, "budget_option", None)
        for options in ({}, paper.get(spec.optimizer, {})):
            attack = create_attack(spec, **options, **({budget: 2} if budget else {}))
            run = run_attack(attack, model, two["image"], two, tasks=tasks, eps=8, seed=5, check_determinism=True)
            assert run.verdict.valid, (name, options, run.verdict.reason)


def test_plugin_attacks_register_through_entry_points(tiny_nyu, monkeypatch):
    model, tasks, batch = tiny_nyu
    ep = importlib.metadata.EntryPoint(name="random-sign", value="plugin_example:RandomSignNoise",
                                       group="mtlbench.attacks")
    monkeypatch.setattr(generic_registry, "entry_points", lambda group: [ep] if group == "mtlbench.attacks" else [])
    monkeypatch.setattr(registry_module.ATTACKS, "_plugins_loaded", False)
    try:
        assert "random-sign" in list_attacks()
        run = run_attack(create_attack("random-sign"), model, batch["image"], batch, tasks=tasks, eps=4, seed=1)
        assert run.verdict.valid and run.verdict.max_perturbation == pytest.approx(4, abs=1e-3)
    finally:
        registry_module.ATTACKS.pop("random-sign", None)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_attacks_run_on_cuda(tiny_nyu):
    model, tasks, batch = tiny_nyu
    model = model.cuda()
    gpu = {k: v.cuda() for k, v in batch.items()}
    try:
        for spec in ("fgsm:total", "pgd:gb-mta", "mim:signtotal", "apgd:gb-mta", "autosaga:gb-mta"):
            run = run_attack(create_attack(spec, **({} if spec.startswith("fgsm") else {"steps": 3})), model,
                             gpu["image"], gpu, tasks=tasks, eps=8, seed=0)
            assert run.verdict.valid and run.adversarial.is_cuda, (spec, run.verdict)
    finally:
        model.cpu()
