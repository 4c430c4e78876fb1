"""A tiny all-shared model trained for a few hundred steps on the synthetic NYUv2-like scenes
clearly beats a constant predictor on every task: the scenes carry learnable, correlated signal."""

import pytest
import torch

from benchmark.data import SyntheticScenes, make_loader
from benchmark.evaluation import evaluate
from benchmark.models import BranchedModel
from benchmark.scoring import task_arp
from benchmark.tasks import get_tasks
from benchmark.training import TrainRecipe, train_model


def test_tiny_all_shared_model_beats_a_trivial_predictor():
    tasks = get_tasks("nyuv2")
    train = SyntheticScenes("nyuv2", "train", size=512, resolution=48)
    test = SyntheticScenes("nyuv2", "test", size=64, resolution=48)
    model = BranchedModel("AS", {t.name: t.channels for t in tasks}, width=0.125, head_hidden=32,
                          head_rates=(1, 2, 3, 4))
    stats = train_model(model, tasks, train, TrainRecipe(steps=200, batch_size=16, lr=3e-3))
    assert stats["steps"] == 200
    trained = evaluate(model, tasks, make_loader(test, 32))
    full = test.materialize()
    trivial = {}
    for t in tasks:
        metric = t.new_metric()
        metric.update(t.trivial_prediction(full), full)
        trivial[t.name] = metric.compute()
    # "ARP" of the trained model relative to the trivial one: negative = the model is better
    gain = task_arp(trivial, trained, tasks)
    assert all(v < -10 for v in gain.values()), (gain, trained, trivial)
    assert trained["segment_semantic"]["pixel_acc"] > trivial["segment_semantic"]["pixel_acc"] + 0.15
    assert trained["normal"]["mean"] < trivial["normal"]["mean"] - 10
    assert trained["depth_zbuffer"]["abs_err"] < trivial["depth_zbuffer"]["abs_err"]
    torch.testing.assert_close(model.eval()(full["image"][:2])["normal"], model(full["image"][:2])["normal"])


def test_the_training_loop_resumes_bit_for_bit_and_refuses_another_trainings_state(tmp_path):
    """The one loop every training runs on: killed after a resume file was written, it goes on to
    the weights of an uninterrupted run; a resume file of another training is refused, naming the
    entry of the identity that differs."""
    from benchmark.errors import UserError
    from benchmark.training import RESUME_FILE, run_training

    data = [{"image": torch.linspace(-1, 1, 4) * (i + 1)} for i in range(10)]

    def train(identity, *, die_at=None, resume=True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))

        def loss(step, batch):
            if step == die_at:
                raise KeyboardInterrupt
            return (model(batch["image"]) - 1).pow(2).mean()

        run_training(model, data, loss, steps=9, batch_size=3, seed=0, lr=1e-2, weight_decay=1e-4,
                     schedule=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, 9),
                     resume=tmp_path / RESUME_FILE if resume else None, checkpoint_every=2, identity=identity)
        return model.state_dict()

    whole = train({"member": "AS"}, resume=False)
    with pytest.raises(KeyboardInterrupt):
        train({"member": "AS"}, die_at=5)  # the state after step 4 is on disk
    assert (tmp_path / RESUME_FILE).exists()
    with pytest.raises(UserError, match="another training \\(member was 'AS', now 'IND'\\)"):
        train({"member": "IND"})
    again = train({"member": "AS"})
    assert all(torch.equal(whole[k], again[k]) for k in whole)
