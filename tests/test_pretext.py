"""Tiny members trained like the paper's: one common initialisation (a backbone pre-trained on a
pretext objective that reads no task label, heads from one seeded draw), the same budget for every
member, block copies that learn only from their own tasks, and the faster training step's
operations equal to the library's."""

import json
import re
import textwrap

import pytest
import torch
import torch.nn.functional as F

from benchmark.models import BranchedModel, Layout
from benchmark.models.branched import set_key, upsample_bilinear
from benchmark.suites import SuiteError, load_suite
from benchmark.tasks import IGNORE_INDEX, _pixel_cross_entropy, _unit, get_tasks
from benchmark.zoo.build import build_pretext, build_suite, member_model
from benchmark.zoo.checkpoint import file_sha256, read_config
from benchmark.zoo.hub import local_checkpoint_dir, pretext_dir
from benchmark.zoo.pretext import (
    PretextModel,
    PretextRecipe,
    init_from_pretext,
    load_pretext,
    pretrain_backbone,
)

LAYOUT_9 = "[[{0,2},{1}], [{0,2},{1}], [{0},{1},{2}], [{0},{1},{2}], [{0},{1},{2}]]"
SUITE = """
[suite]
name = "pre"
dataset = "nyuv2"
data = "synthetic-nyuv2"
width = 0.125
input_size = 32
head_hidden = 16
head_rates = [1, 2]

[training]
steps = {steps}
batch_size = 8
lr = 0.003
train_size = 32
init = "pretext"

[training.pretext]
objective = "{objective}"
steps = 6
batch_size = 8
train_size = 16

[profiles.quick]
eps = [8]
attacks = ["fgsm:total"]

[[models]]
name = "AS"
layout = "AS"

[[models]]
name = "layout-9"
layout = "{layout9}"

[[models]]
name = "IND"
layout = "IND"
"""


def write(tmp_path, *, steps=4, objective="masked", name="pre.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(SUITE.format(steps=steps, objective=objective, layout9=LAYOUT_9)))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


# ---------------------------------------------------------------- the common initialisation
def test_every_member_starts_from_the_pretext_backbone_and_common_heads(tmp_path, home):
    suite = load_suite(write(tmp_path))
    blocks, meta = load_pretext(build_pretext(suite))
    models = {m.name: init_from_pretext(member_model(suite, m), blocks) for m in suite.members}
    for name, model in models.items():
        for i, task_sets in enumerate(model.layout.blocks):
            for s in task_sets:
                copy = model.blocks[i][set_key(s)].state_dict()
                assert copy.keys() == blocks[i].keys()
                assert all(torch.equal(copy[k], blocks[i][k]) for k in copy), (name, i, s)
        heads = model.heads.state_dict()
        reference = models["AS"].heads.state_dict()
        assert all(torch.equal(heads[k], reference[k]) for k in heads), name
    # the pretext weights are not the random initial weights of a block
    fresh = member_model(suite, suite.member("AS")).blocks[4]["0_1_2"].state_dict()
    assert any(not torch.equal(fresh[k], blocks[4][k]) for k in fresh if fresh[k].is_floating_point())
    assert meta["recipe"]["objective"] == "masked" and meta["stats"]["steps"] == 6


def test_built_members_record_their_initialisation_and_budget(tmp_path, home):
    suite = load_suite(write(tmp_path))
    dirs = build_suite(suite, workers=1)
    pretext = pretext_dir(suite)
    digest = file_sha256(pretext / "model.safetensors")
    for name, d in dirs.items():
        training = read_config(d).training
        assert training["init"] == "pretext" and training["warm_start"] is None, name
        assert training["steps"] == 4, name  # the same budget for every member, AS included
        assert training["pretext"] == {"objective": "masked", "sha256": digest, "steps": 6}
        assert training["recipe_id"] == suite.training_id
        card = (d / "README.md").read_text()
        assert "| initialisation | the suite's common backbone" in card and digest in card
    # a second build reuses the pretext backbone and the members
    stamps = {p: p.stat().st_mtime_ns for p in [pretext / "model.safetensors",
                                                 *(d / "model.safetensors" for d in dirs.values())]}
    assert build_suite(suite, workers=1) == dirs
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_a_changed_recipe_rebuilds_the_pretext_backbone_and_the_members(tmp_path, home, capsys):
    first = load_suite(write(tmp_path))
    build_suite(first, ["AS"], workers=1)
    old_digest = load_pretext(pretext_dir(first))[1]["sha256"]
    changed = load_suite(write(tmp_path, objective="rotation"))  # same suite name, other pretext
    assert changed.training_id != first.training_id
    from benchmark.zoo.locate import is_built

    assert not is_built(changed, changed.member("AS"))  # built with another recipe: stale
    build_suite(changed, ["AS"], workers=1)
    meta = load_pretext(pretext_dir(changed))[1]
    assert meta["recipe"]["objective"] == "rotation" and meta["sha256"] != old_digest
    training = read_config(local_checkpoint_dir(changed, changed.member("AS"))).training
    assert training["pretext"]["sha256"] == meta["sha256"]
    assert "built with another training recipe and are rebuilt: AS" in " ".join(capsys.readouterr().err.split())


def test_a_build_takes_the_shipped_backbone_of_its_recipe(tmp_path, monkeypatch):
    """A suite whose backbone ships with mtlbench (same suite, recipe, architecture and training
    version) gets a byte-identical copy of it without pre-training; another recipe, or
    ``pretrain=True``, pre-trains here."""
    import benchmark.paths as paths
    import benchmark.zoo.build as build

    suite = load_suite(write(tmp_path))
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "maker"))
    made = build_pretext(suite)
    monkeypatch.setattr(paths, "SHIPPED_ZOO", tmp_path / "shipped")
    (tmp_path / "shipped" / suite.name).mkdir(parents=True)
    made.rename(tmp_path / "shipped" / suite.name / "_pretext")
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "user"))
    calls = []
    real = build.pretrain_backbone
    monkeypatch.setattr(build, "pretrain_backbone", lambda *a, **k: calls.append(1) or real(*a, **k))
    told = []
    out = build_pretext(suite, log=told.append)
    assert not calls and out == pretext_dir(suite)
    for name in ("model.safetensors", "config.json"):
        assert (out / name).read_bytes() == (tmp_path / "shipped" / suite.name / "_pretext" / name).read_bytes()
    assert "shipped with mtlbench" in told[0]
    build_pretext(suite, pretrain=True)
    assert calls == [1]
    other = load_suite(write(tmp_path, objective="rotation"))  # the same suite name, another recipe
    build_pretext(other)
    assert calls == [1, 1] and load_pretext(pretext_dir(other))[1]["recipe"]["objective"] == "rotation"


def test_pretraining_again_names_the_members_that_keep_the_backbone_they_started_from(tmp_path, home, capsys):
    suite = load_suite(write(tmp_path))
    build_suite(suite, ["AS"], workers=1)
    capsys.readouterr()
    build_suite(suite, ["AS", "IND"], workers=1, pretrain=True)  # IND is built from the new backbone, AS is not
    err = " ".join(capsys.readouterr().err.split())
    assert "1 member(s) built before keep the backbone they started from: AS" in err
    build_suite(suite, ["AS"], workers=1, pretrain=True)  # nothing to build: the backbone alone
    err = " ".join(capsys.readouterr().err.split())
    assert "pre-trained the common backbone of pre" in err and "started from: AS" in err


@pytest.mark.slow
def test_the_shipped_backbones_are_their_recipes_pre_trained(tmp_path, monkeypatch):
    """Each tiny suite's shipped backbone is intact and of its manifest's recipe, architecture and
    training version (else the demo pre-trains one), and pre-training tiny-nyuv2-resnet34's here
    as a build does (one thread) gives it: bit for bit on the CPU it was made on; elsewhere float
    rounding may move the weights, so an equally good rotation classifier is asked for."""
    from benchmark.suites import TRAINING_VERSION
    from benchmark.threads import set_threads
    from benchmark.zoo.hub import shipped_pretext_dir

    for name in ("tiny-nyuv2-resnet34", "tiny-nyuv2-mobilenetv2", "tiny-taskonomy-resnet34"):
        suite = load_suite(name)
        first = suite.members[0]
        _, meta = load_pretext(shipped_pretext_dir(suite))  # checks the weights' sha256
        assert meta["suite"] == name and meta["training_version"] == TRAINING_VERSION, name
        assert meta["recipe"] == suite.training.pretext_recipe().to_dict(), name
        assert meta["architecture"] == {"backbone": first.backbone, "width": first.width,
                                        "output_stride": first.output_stride}, name
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "home"))
    suite = load_suite("tiny-nyuv2-resnet34")
    threads = torch.get_num_threads()
    set_threads(None, small_model=True)
    try:
        here, meta = load_pretext(build_pretext(suite, pretrain=True))
    finally:
        torch.set_num_threads(threads)
    shipped, shipped_meta = load_pretext(shipped_pretext_dir(suite))
    if meta["sha256"] == shipped_meta["sha256"]:
        return
    scenes = suite.data("test", size=64).materialize()["image"]
    scores = []
    for blocks in (here, shipped):
        net = PretextModel("rotation", backbone="resnet34", width=0.125, output_stride=None)
        for block, state in zip(net.blocks, blocks, strict=True):
            block.load_state_dict(state)
        scores.append(_rotation_accuracy(net, scenes))
    assert abs(scores[0] - scores[1]) < 0.05, scores  # a random backbone: 0.84, the shipped one 0.99


def _rotation_accuracy(net: PretextModel, scenes: torch.Tensor) -> float:
    """How well a linear probe on the pooled features of ``net`` tells the 4 rotations apart (the
    pretext head is not kept with the blocks): least squares on half the scenes, scored on the rest."""
    net.eval()
    with torch.no_grad():
        feats, labels = [], []
        for k in range(4):
            feats.append(net.features(torch.rot90(scenes, k, dims=(2, 3))).mean((2, 3)))
            labels.append(torch.full((len(scenes),), k))
    x, y = torch.cat(feats).double(), torch.cat(labels)
    half = torch.arange(len(y)) % 2 == 0
    onehot = F.one_hot(y[half], 4).double()
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    w = torch.linalg.lstsq(xb[half], onehot).solution
    return ((xb[~half] @ w).argmax(1) == y[~half]).double().mean().item()


def test_a_damaged_pretext_backbone_is_pre_trained_again(tmp_path, home):
    suite = load_suite(write(tmp_path))
    out = build_pretext(suite)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-7] + b"garbage")
    with pytest.raises(Exception, match="sha256 differs"):
        load_pretext(out)
    build_pretext(suite)  # detects the damage and pre-trains again
    assert load_pretext(out)[1]["sha256"] == file_sha256(weights)


# ---------------------------------------------------------------- the pretext objectives
class _ImagesOnly(torch.utils.data.Dataset):
    """Scenes without any ground truth: a pretext objective must not need one."""

    def __init__(self, n):
        self.images = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


@pytest.mark.parametrize("objective", ["masked", "rotation"])
def test_pretext_objectives_read_images_only_and_learn(objective):
    from benchmark.data import SyntheticScenes

    torch.manual_seed(0)
    net = PretextModel(objective, backbone="resnet34", width=0.125, output_stride=8)
    stats = pretrain_backbone(net, _ImagesOnly(16), PretextRecipe(objective=objective, steps=2, batch_size=8))
    assert stats["steps"] == 2 and stats["final_loss"] == stats["final_loss"]  # ran, finite
    scenes = SyntheticScenes("nyuv2", "train", size=32, resolution=32, seed=7).materialize()["image"]
    net = PretextModel(objective, backbone="resnet34", width=0.125, output_stride=8)
    torch.manual_seed(1)
    before = net.loss(scenes)[0].item()
    pretrain_backbone(net, _Scenes(scenes), PretextRecipe(objective=objective, steps=30, batch_size=16, seed=3))
    torch.manual_seed(1)
    net.train()
    after = net.loss(scenes)[0].item()
    assert after < 0.8 * before, (objective, before, after)


class _Scenes(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


# ---------------------------------------------------------------- block copies learn from their tasks only
def test_a_block_copy_gets_gradients_only_from_the_tasks_of_its_task_set():
    tasks = get_tasks("nyuv2")
    layout = Layout.parse(LAYOUT_9, num_tasks=3)
    model = BranchedModel(layout, {t.name: t.channels for t in tasks}, width=0.125, head_hidden=8, head_rates=(1,))
    out = model(torch.rand(2, 3, 32, 32))
    for t, task in enumerate(tasks):
        model.zero_grad(set_to_none=True)
        out[task.name].square().mean().backward(retain_graph=True)
        for i, task_sets in enumerate(layout.blocks):
            for s in task_sets:
                grads = [p.grad for p in model.blocks[i][set_key(s)].parameters()]
                reached = any(g is not None and g.abs().sum() > 0 for g in grads)
                assert reached == (t in s), (task.name, i, sorted(s))


# ---------------------------------------------------------------- the faster step equals the library
@pytest.mark.parametrize("shape", [((2, 40, 6, 6), (48, 48)), ((1, 3, 7, 5), (48, 33)), ((2, 1, 12, 12), (5, 7)),
                                   ((1, 2, 9, 9), (9, 9))])
def test_matrix_upsampling_equals_interpolate(shape):
    (size_in, size_out) = shape
    x = torch.randn(*size_in, dtype=torch.float64, requires_grad=True)
    ours = upsample_bilinear(x, size_out)
    theirs = F.interpolate(x, size=size_out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, x, g)[0], torch.autograd.grad(theirs, x, g)[0],
                               rtol=1e-12, atol=1e-12)


def test_written_out_cross_entropy_and_normalisation_equal_the_library():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 40, 9, 9, generator=g, dtype=torch.float64) * 30).requires_grad_(True)
    target = torch.randint(0, 40, (3, 9, 9), generator=g)
    target[0, :4] = IGNORE_INDEX
    ours = _pixel_cross_entropy(logits, target)
    theirs = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    w = torch.randn_like(ours)
    torch.testing.assert_close(torch.autograd.grad(ours, logits, w)[0], torch.autograd.grad(theirs, logits, w)[0],
                               rtol=1e-12, atol=1e-12)
    x = torch.randn(2, 3, 5, 5, generator=g, dtype=torch.float64)
    x[0, :, 0, 0] = 0.0  # a zero vector stays zero, as F.normalize leaves it
    torch.testing.assert_close(_unit(x), F.normalize(x, dim=1, eps=1e-8), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the manifest says how members start
@pytest.mark.parametrize(("edit", "message"), [
    (('init = "pretext"', 'init = "vgg"'), "training.init: expected one of scratch, pretext, imagenet"),
    (('init = "pretext"', 'init = "imagenet"'), "a [training.pretext] table needs init = 'pretext'"),
    (('init = "pretext"', 'init = "pretext"\nwarm_start = "AS"'), "not both"),
    (('objective = "masked"', 'objective = "jigsaw"'), "training.pretext.objective: expected one of rotation, masked"),
    (('objective = "masked"', 'objective = "masked"\nepochs = 3'), "training.pretext.epochs: unknown key"),
    (('steps = 6', 'steps = 0'), "training.pretext.steps"),
])
def test_bad_pretext_recipes_are_messages(tmp_path, edit, message):
    path = write(tmp_path)
    path.write_text(path.read_text().replace(*edit, 1))
    with pytest.raises(SuiteError, match=re.escape(message)):
        load_suite(path)


def test_the_tiny_suites_train_every_member_alike_from_a_pretext_backbone():
    for name in ("tiny-nyuv2-resnet34", "tiny-nyuv2-mobilenetv2", "tiny-taskonomy-resnet34"):
        suite = load_suite(name)
        training = suite.training
        assert training.init == "pretext" and training.warm_start is None and training.finetune_steps is None
        assert training.pretext["objective"] in ("masked", "rotation")
        assert json.dumps(training.table)  # the recipe is data, recorded as it is in every member's card
