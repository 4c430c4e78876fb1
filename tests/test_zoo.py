"""The model zoo: checkpoint format, tiny builds, Hub push/download (fake Hub, no network),
offline cache, and the import of the paper authors' checkpoints."""

import json
import textwrap

import pytest
import torch
from fakehub import FakeHub
from safetensors.torch import load_file

from benchmark.cli import main
from benchmark.models import BranchedModel
from benchmark.suites import load_suite
from benchmark.zoo.build import build_suite, load_model, member_model
from benchmark.zoo.checkpoint import CheckpointError, CheckpointInfo, file_sha256, load_checkpoint, save_checkpoint
from benchmark.zoo.hub import MissingWeightsError, local_checkpoint_dir

LAYOUT_9 = "[[{0,2},{1}], [{0,2},{1}], [{0},{1},{2}], [{0},{1},{2}], [{0},{1},{2}]]"
HEAD = """
[suite]
name = "{name}"
dataset = "nyuv2"
data = "{data}"
width = 0.125
input_size = 32
head_hidden = 16
head_rates = [1, 2]

[training]
steps = 30
batch_size = 8
lr = 0.003
train_size = 64
warm_start = "AS"
finetune_steps = 10

[profiles.quick]
eps = [8]
attacks = ["fgsm:total"]
"""
MODELS = """
[[models]]
name = "AS"
layout = "AS"{hub_as}

[[models]]
name = "layout-9"
index = 9
layout = "{layout9}"{hub_9}

[[models]]
name = "IND"
layout = "IND"
"""


def write_suite(tmp_path, name="mini", data="synthetic-nyuv2", hub=False):
    def pub(member):
        return f'\nrepo_id = "mtlbench-test/{name}-{member}"\nrevision = ""\nsha256 = ""' if hub else ""

    text = HEAD.format(name=name, data=data) + MODELS.format(layout9=LAYOUT_9, hub_as=pub("AS"), hub_9=pub("layout-9"))
    path = tmp_path / f"{name}.toml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A 3-model synthetic suite built once (AS, then layout 9 and IND warm-started from it)."""
    tmp = tmp_path_factory.mktemp("zoo")
    mp = pytest.MonkeyPatch()
    mp.setenv("MTLBENCH_HOME", str(tmp / "home"))
    suite = load_suite(write_suite(tmp))
    dirs = build_suite(suite)
    yield suite, dirs, tmp
    mp.undo()


def test_building_a_tiny_suite(built, monkeypatch):
    suite, dirs, tmp = built
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp / "home"))
    assert set(dirs) == {"AS", "layout-9", "IND"}
    for name, d in dirs.items():
        assert {p.name for p in d.iterdir()} == {"model.safetensors", "config.json", "README.md"}
        config = json.loads((d / "config.json").read_text())
        assert config["suite"] == "mini" and config["member"] == name
        assert set(config["clean_metrics"]) == {"segment_semantic", "normal", "depth_zbuffer"}
        assert config["training"]["warm_start"] == (None if name == "AS" else "AS")
        assert config["training"]["steps"] == (30 if name == "AS" else 10)
        card = (d / "README.md").read_text()
        assert card.startswith("---\nlibrary_name: mtlbench") and file_sha256(d / "model.safetensors") in card
    # a second build has nothing to do and leaves the checkpoints alone
    stamps = {n: (d / "model.safetensors").stat().st_mtime_ns for n, d in dirs.items()}
    assert build_suite(suite) == dirs
    assert stamps == {n: (d / "model.safetensors").stat().st_mtime_ns for n, d in dirs.items()}
    model, info = load_model(suite, "layout-9")
    out = model(torch.rand(2, 3, 32, 32))
    assert out["segment_semantic"].shape == (2, 40, 32, 32) and not model.training
    assert info.model.layout == LAYOUT_9


def test_building_is_deterministic_and_resumes(built, tmp_path, monkeypatch):
    suite, dirs, _ = built
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "other"))
    # build only layout-9: AS is built first (it is the warm start), IND is left for later
    again = build_suite(suite, ["layout-9"])
    assert set(again) == {"layout-9"} and (local_checkpoint_dir(suite, suite.member("AS")) / "config.json").exists()
    assert not (local_checkpoint_dir(suite, suite.member("IND")) / "config.json").exists()
    # the same tensors (the safetensors header's key order is not fixed, so compare tensors, not files)
    for name in ("AS", "layout-9"):
        a = load_file(local_checkpoint_dir(suite, suite.member(name)) / "model.safetensors")
        b = load_file(dirs[name] / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_checkpoint_round_trip_and_tamper_detection(tmp_path):
    suite = load_suite(write_suite(tmp_path))
    model = member_model(suite, suite.member("layout-9")).eval()
    info = CheckpointInfo(model=model.config, dataset="synthetic-nyuv2", member="layout-9", input_size=32)
    digest = save_checkpoint(model, info, tmp_path / "ckpt")
    assert not list((tmp_path / "ckpt").glob("*.tmp"))
    loaded, info2 = load_checkpoint(tmp_path / "ckpt", sha256=digest, expect={"layout": LAYOUT_9, "width": 0.125})
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        for task, out in model(x).items():
            assert torch.equal(out, loaded(x)[task])
    assert info2.member == "layout-9"

    with pytest.raises(CheckpointError, match="belongs to another model"):
        load_checkpoint(tmp_path / "ckpt", expect={"layout": "AS"})
    weights = tmp_path / "ckpt" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the pinned"):
        load_checkpoint(tmp_path / "ckpt", sha256=digest)
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(tmp_path / "ckpt")
    weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(tmp_path / "ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "ckpt" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid mtlbench config"):
        load_checkpoint(tmp_path / "ckpt")


def test_nan_weights_are_refused(tmp_path):
    suite = load_suite(write_suite(tmp_path))
    model = member_model(suite, suite.member("AS"))
    next(model.parameters()).data[0] = float("nan")
    save_checkpoint(model, CheckpointInfo(model=model.config, dataset="x"), tmp_path / "c")
    with pytest.raises(CheckpointError, match="NaN or inf"):
        load_checkpoint(tmp_path / "c")


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_fake_token_for_tests")
    hub = FakeHub().install()
    yield hub
    FakeHub.uninstall()


def test_push_pin_download_and_offline_cache(built, fake_hub, tmp_path, monkeypatch, capsys, wide_console):
    _, dirs, _ = built
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "empty-home"))
    manifest = write_suite(tmp_path, name="hubsuite", data="nyuv2", hub=True)
    suite = load_suite(manifest)
    with pytest.raises(MissingWeightsError, match="no published weights yet.*zoo train.*zoo import.*--weights-dir"):
        load_model(suite, "layout-9")

    # push: uploads through the Hub API and pins revision + sha256 into the manifest
    assert main(["zoo", "push", str(dirs["layout-9"]), "--manifest", str(manifest), "--model", "layout-9"]) == 0
    out = capsys.readouterr().out
    assert "pinned layout-9" in out and ("POST", "/api/repos/create") in fake_hub.requests
    suite = load_suite(manifest)
    member = suite.member("layout-9")
    assert member.published and member.sha256 == file_sha256(dirs["layout-9"] / "model.safetensors")
    assert f'revision = "{member.revision}"' in out
    pushed = fake_hub.repos[member.repo_id][member.revision]
    assert pushed["config.json"] == (dirs["layout-9"] / "config.json").read_bytes()

    # download at the pinned revision, verify the hash, load
    model, info = load_model(suite, "layout-9")
    assert info.member == "layout-9" and any("/resolve/" + member.revision in p for _, p in fake_hub.requests)
    reference, _ = load_checkpoint(dirs["layout-9"])
    for (k, a), (_, b) in zip(model.state_dict().items(), reference.state_dict().items(), strict=True):
        assert torch.equal(a, b), k

    # offline: served from the cache, no request leaves the process
    fake_hub.offline = True
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model2, _ = load_model(suite, "layout-9")
    assert torch.equal(next(model2.parameters()), next(model.parameters()))
    # offline cache miss: a clear message, not a traceback
    text = manifest.read_text().replace(member.revision, "d" * 40)
    manifest.write_text(text)
    with pytest.raises(MissingWeightsError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        load_model(load_suite(manifest), "layout-9")


def test_hub_download_detects_a_tampered_cache(built, fake_hub, tmp_path, monkeypatch):
    _, dirs, _ = built
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "empty-home"))
    manifest = write_suite(tmp_path, name="hubsuite", data="nyuv2", hub=True)
    from benchmark.zoo.hub import pin_in_manifest, push_checkpoint

    revision, digest = push_checkpoint(dirs["AS"], "mtlbench-test/hubsuite-AS")
    pin_in_manifest(manifest, "AS", repo_id="mtlbench-test/hubsuite-AS", revision=revision, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="does not match the pinned"):
        load_model(load_suite(manifest), "AS")
    pin_in_manifest(manifest, "AS", repo_id="mtlbench-test/hubsuite-AS", revision=revision, sha256=digest)
    load_model(load_suite(manifest), "AS")


def test_weights_dir_and_config_mismatch(built, tmp_path, monkeypatch):
    _, dirs, _ = built
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "empty-home"))
    full = load_suite(write_suite(tmp_path, name="realsuite", data="nyuv2", hub=True))
    wd = tmp_path / "weights"
    wd.mkdir()
    (wd / "layout-9").symlink_to(dirs["layout-9"], target_is_directory=True)
    (wd / "AS").symlink_to(dirs["IND"], target_is_directory=True)  # the wrong model under AS's name
    model, info = load_model(full, "layout-9", weights_dir=wd)
    assert info.member == "layout-9" and not model.training
    with pytest.raises(CheckpointError, match=r"model.layout is .*suite manifest says 'AS'"):
        load_model(full, "AS", weights_dir=wd)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        load_model(full, "AS", weights_dir=tmp_path / "missing")


def test_train_and_run_on_real_data_directories(tmp_path, monkeypatch, capsys):
    """A full (real-data) suite end to end, offline, on a fixture in the NYUv2 directory format:
    zoo train -> a checkpoint directory -> mtlbench run --weights-dir --data-root."""
    from test_data import _write_nyuv2

    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "home"))
    data = tmp_path / "nyuv2"
    _write_nyuv2(data, n=4, h=24, w=24)
    manifest = write_suite(tmp_path, name="realsuite", data="nyuv2", hub=True)
    assert main(["zoo", "train", str(manifest), "--model", "AS", "--steps", "40", "--data-root", str(data),
                 "--out", str(tmp_path / "weights"), "--device", "cpu"]) == 0
    config = json.loads((tmp_path / "weights" / "AS" / "config.json").read_text())
    assert config["training"]["steps"] == 40 and config["dataset"] == "nyuv2" and config["clean_metrics"]
    assert main(["zoo", "train", str(manifest), "--model", "AS"]) == 2
    assert "--data-root" in capsys.readouterr().err
    db = tmp_path / "r.db"
    code = main(["run", "--suite", str(manifest), "--models", "AS", "--weights-dir", str(tmp_path / "weights"),
                 "--data-root", str(data), "--attacks", "fgsm:total", "--eps", "8", "--results", str(db),
                 "--device", "cpu"])
    from benchmark.runner import ResultsStore

    with ResultsStore(db, readonly=True) as store:
        (cell,) = store.cells()
    assert code == 0, cell.reason
    assert cell.status == "valid" and cell.images == 4 and cell.model_revision.startswith("local-sha256:")


def _card_snippet(directory) -> str:
    import re

    card = (directory / "README.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    return block


def test_model_card_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    """The card next to every checkpoint shows code that works: for a standard suite's member by
    suite and member name, for any other checkpoint from its own folder."""
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "home"))
    suite = load_suite("tiny-nyuv2-resnet34")
    member = suite.member("layout-9")
    model = member_model(suite, member)
    info = CheckpointInfo(model=model.config, dataset=suite.data_source, suite=suite.name, member=member.name,
                          input_size=member.input_size)
    save_checkpoint(model, info, local_checkpoint_dir(suite, member))
    snippet = _card_snippet(local_checkpoint_dir(suite, member))
    assert 'load_model("tiny-nyuv2-resnet34", "layout-9")' in snippet
    exec(compile(snippet, "README.md", "exec"), {})
    shapes = capsys.readouterr().out
    assert "'depth_zbuffer': (2, 1, 48, 48)" in shapes and "'segment_semantic': (2, 40, 48, 48)" in shapes

    own = tmp_path / "my-checkpoint"
    save_checkpoint(model, CheckpointInfo(model=model.config, dataset="synthetic-nyuv2", input_size=32), own)
    snippet = _card_snippet(own)
    assert "load_checkpoint(" in snippet
    monkeypatch.chdir(own)
    exec(compile(snippet, "README.md", "exec"), {})
    assert "'normal': (2, 3, 32, 32)" in capsys.readouterr().out


def test_the_same_weights_give_the_same_file_in_every_process(tmp_path):
    """The weights file's sha256 identifies the weights: it must not depend on the process that
    wrote it (safetensors writes a metadata map in a per-process random order)."""
    import subprocess
    import sys

    script = textwrap.dedent("""
        import sys, torch
        from benchmark.models import BranchedModel
        from benchmark.zoo.checkpoint import CheckpointInfo, save_checkpoint
        torch.manual_seed(0)
        model = BranchedModel("AS", {"a": 2, "b": 1}, width=0.0625)
        save_checkpoint(model, CheckpointInfo(model=model.config, dataset="x"), sys.argv[1])
    """)
    digests = set()
    for i in range(4):
        out = tmp_path / f"ckpt{i}"
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, timeout=120)
        digests.add(file_sha256(out / "model.safetensors"))
    assert len(digests) == 1


def test_a_saved_model_loads_with_its_tasks_in_order(tmp_path):
    """The layout names tasks by id: the config must keep their order (format 1 wrote a sorted
    table, and an asymmetric layout came back with branches feeding the wrong heads)."""
    torch.manual_seed(0)
    tasks = {"segment_semantic": 5, "normal": 3, "depth_zbuffer": 1}
    layout = "[[{0,1},{2}], [{0,1},{2}], [{0},{1},{2}], [{0},{1},{2}], [{0},{1},{2}]]"
    model = BranchedModel(layout, tasks, backbone="resnet34", width=0.0625).eval()
    x = torch.rand(2, 3, 32, 32)
    save_checkpoint(model, CheckpointInfo(model=model.config, dataset="synthetic-nyuv2"), tmp_path / "m")
    loaded, info = load_checkpoint(tmp_path / "m")
    assert list(info.model.tasks) == list(tasks)
    with torch.no_grad():
        for name, out in model(x).items():
            assert torch.equal(loaded(x)[name], out)
    # a format-1 config (tasks as a sorted table) is read in the data set's task order
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    cfg["format"], cfg["model"]["tasks"] = 1, dict(sorted(tasks.items()))
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg, sort_keys=True))
    loaded, info = load_checkpoint(tmp_path / "m")
    assert list(info.model.tasks) == list(tasks)
    with torch.no_grad():
        assert torch.equal(loaded(x)["depth_zbuffer"], model(x)["depth_zbuffer"])


def test_a_build_in_worker_processes_gives_the_same_checkpoints(tmp_path, monkeypatch):
    from conftest import MINI_SUITE

    manifest = tmp_path / "three.toml"
    manifest.write_text(MINI_SUITE.replace('name = "mini-run"', 'name = "three-run"')
                        + '\n[[models]]\nname = "IND"\nlayout = "IND"\n')
    digests = []
    for workers in ("1", "2"):
        home = tmp_path / f"home{workers}"
        monkeypatch.setenv("MTLBENCH_HOME", str(home))
        assert main(["zoo", "build", str(manifest), "--workers", workers, "--device", "cpu"]) == 0
        digests.append({m: file_sha256(home / "zoo" / "three-run" / m / "model.safetensors")
                        for m in ("AS", "layout-9", "IND")})
    assert digests[0] == digests[1]
