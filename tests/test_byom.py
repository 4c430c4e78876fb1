"""Bring your own model: `benchmark.evaluate` on a hand-written module, `mtlbench run --model DIR`,
clear errors for outputs that do not fit the suite's tasks, external entries on the leaderboard."""

import json
import os
import shutil

import pytest
import torch
from torch import nn

import benchmark
from benchmark.cli import main
from benchmark.errors import UserError
from benchmark.runner import ResultsStore
from benchmark.suites import load_suite
from leaderboard import render_leaderboard
from leaderboard.aggregate import headline_view


class TwoLayerNet(nn.Module):
    """Not a BranchedModel: two shared convolutions and a 1x1 head per task."""

    def __init__(self, channels: dict[str, int]) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.heads = nn.ModuleDict({t: nn.Conv2d(16, c, 1) for t, c in channels.items()})

    def forward(self, x):
        h = self.body(x)
        return {t: head(h) for t, head in self.heads.items()}


@pytest.fixture(scope="module")
def net(mini_suite):
    from benchmark.training import TrainRecipe, train_model

    manifest, _ = mini_suite
    suite = load_suite(manifest)
    torch.manual_seed(0)
    model = TwoLayerNet({t.name: t.channels for t in suite.tasks})
    train_model(model, suite.tasks, suite.data("train", size=64), TrainRecipe(steps=150, batch_size=8, lr=3e-3))
    return model


def test_evaluate_a_hand_written_module(mini, net, tmp_path):
    frame = benchmark.evaluate(net, suite=str(mini), attacks=["pgd:gb-mta", "fgsm:total"], eps=[8])
    assert list(frame["attack"]) == ["pgd:gb-mta", "fgsm:total"] and set(frame["status"]) == {"valid"}
    assert set(frame["model"]) == {"TwoLayerNet"} and (frame["arp"] > 0).all()
    assert {"arp_segment_semantic", "arp_normal", "arp_depth_zbuffer"} <= set(frame.columns)

    db = tmp_path / "r.db"
    again = benchmark.evaluate(net, suite=str(mini), attacks=["pgd:gb-mta", "fgsm:total"], eps=[8], results=db,
                               name="my-net")
    # the same cells, and the same numbers, whether or not they are written to a store
    assert list(again["arp"]) == list(frame["arp"]) and set(again["model"]) == {"my-net"}
    with ResultsStore(db, readonly=True) as store:
        (info,) = [m for m in store.models() if m["model"] == "my-net"]
        assert len(store.cells()) == 2
    assert info["kind"] == "external" and info["loaded_from"].startswith("nn.Module")
    assert info["model_revision"].startswith("local-sha256:") and "TwoLayerNet" in info["source"]
    # the leaderboard shows it as an external entry, with its weights hash, outside the ranking
    benchmark.evaluate(net, suite=str(mini), attacks=["pgd:gb-mta"], eps=[8], results=db, name="my-net")
    assert main(["run", "--suite", str(mini), "--attacks", "pgd:gb-mta,fgsm:total", "--eps", "8", "--results",
                 str(db)]) == 0
    index = render_leaderboard(db, tmp_path / "site")
    board = headline_view(json.loads((index.parent / "leaderboard.json").read_text()), "mini-run")
    assert board["external"] == ["my-net"] and "my-net" not in board["models"]
    assert all(r["models"] == 2 for r in board["by_eps"]["8"]["ranking"])
    assert board["by_eps"]["8"]["external"]["my-net"]["pgd:gb-mta"]["arp"] == pytest.approx(again["arp"][0])
    page = (index.parent / "suite-mini-run.html").read_text()
    assert 'data-model="my-net"' in page and info["model_revision"] in page


class MissingTask(TwoLayerNet):
    def forward(self, x):
        out = super().forward(x)
        out.pop("normal")
        return out


class WrongShape(TwoLayerNet):
    def forward(self, x):
        out = super().forward(x)
        out["depth_zbuffer"] = out["depth_zbuffer"][:, :, ::2]
        return out


def test_outputs_that_do_not_fit_the_tasks_are_clear_errors(mini):
    channels = {t.name: t.channels for t in load_suite(mini).tasks}
    with pytest.raises(UserError, match=r"no output for the task 'normal'.*normal: \(2, 3, 32, 32\)"):
        benchmark.evaluate(MissingTask(channels), suite=str(mini), attacks=["fgsm:total"], eps=[8])
    with pytest.raises(UserError, match=r"'depth_zbuffer' has shape \(2, 1, 16, 32\); expected \(2, 1, 32, 32\)"):
        benchmark.evaluate(WrongShape(channels), suite=str(mini), attacks=["fgsm:total"], eps=[8])
    with pytest.raises(UserError, match="returned a Tensor, not a dict"):
        benchmark.evaluate(nn.Conv2d(3, 3, 1), suite=str(mini), attacks=["fgsm:total"], eps=[8])
    with pytest.raises(UserError, match="nn.Module or a checkpoint directory"):
        benchmark.evaluate(42, suite=str(mini))


def test_run_model_dir(mini, tmp_path, capsys, wide_console):
    theirs = tmp_path / "their-model"
    shutil.copytree(os.path.join(os.environ["MTLBENCH_HOME"], "zoo", "mini-run", "layout-9"), theirs)
    db = tmp_path / "r.db"
    # the profile names a FAT defense for its members: an external model is run undefended
    profiled = tmp_path / "profiled.toml"  # beside the test, not in the shared mini suite's folder
    profiled.write_text(mini.read_text().replace("batch_size = 2\n", 'batch_size = 2\ndefenses = ["none", '
                                                 '"fat:pgd:total"]\ndefended_models = ["AS"]\n'))
    assert 'defended_models = ["AS"]' in profiled.read_text()
    assert main(["run", "--suite", str(profiled), "--model", str(theirs), "--attacks", "fgsm:total", "--eps", "8",
                 "--results", str(tmp_path / "p.db")]) == 0
    assert main(["run", "--suite", str(mini), "--model", str(theirs), "--attacks", "fgsm:total", "--eps", "8",
                 "--results", str(db)]) == 0
    with ResultsStore(db, readonly=True) as store:
        (cell,) = store.cells()
        (info,) = store.models()
    assert cell.model == "their-model" and cell.status == "valid" and cell.config["external"] == "dir"
    assert info["kind"] == "external" and info["layout"] and info["source"] == str(theirs.resolve())
    # the same weights as the member give the member's numbers
    assert main(["run", "--suite", str(mini), "--models", "layout-9", "--attacks", "fgsm:total", "--eps", "8",
                 "--results", str(db)]) == 0
    with ResultsStore(db, readonly=True) as store:
        arps = {c.model: c.arp for c in store.cells()}
    assert arps["their-model"] == arps["layout-9"]
    capsys.readouterr()
    for args, message in ((["--model", str(theirs), "--name", "AS"], "is the name of a member"),
                          (["--model", str(tmp_path / "nowhere")], "not a directory"),
                          (["--model", str(tmp_path)], "no config.json"),
                          (["--model", str(theirs), "--models", "AS"], "--models picks suite members"),
                          (["--model", str(theirs), "--defenses", "fat:pgd:total"], "inference-time defense only")):
        assert main(["run", "--suite", str(mini), "--attacks", "fgsm:total", "--eps", "8", "--results",
                     str(db), *args]) == 2, args
        assert message in capsys.readouterr().err, args
