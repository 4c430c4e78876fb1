"""Import of the paper authors' checkpoints (TreeMTL MTSeqModel state dicts), on fixtures written
in that format from a description of AdaShare's Deeplab-ResNet34 prototxt that is independent
of the converter: fine branch blocks in prototxt order, node indices counting every layer."""

import json

import pytest
import torch
from manifests import AS_AND_LAYOUT_9

from benchmark.cli import main
from benchmark.models.layouts import Layout, layout_from_index, treemtl_set_order
from benchmark.suites import load_suite
from benchmark.zoo.build import load_model
from benchmark.zoo.paper import PaperImportError, load_paper_checkpoint

TASKS = {"segment_semantic": 40, "normal": 3, "depth_zbuffer": 1}


def test_treemtl_set_order_matches_the_papers_printed_layouts(paper_layouts):
    """The paper prints each block's task sets in TreeMTL's list order; we reproduce it."""
    checked = 0
    for key, num_tasks in (("nyuv2_resnet34", 3), ("taskonomy_resnet34", 5)):
        for m in paper_layouts[key]["models"]:
            if m["layout"] is None or m["index"] in ("AS", "IND"):
                continue
            order = treemtl_set_order(layout_from_index(int(m["index"]), num_tasks))
            assert order == [[frozenset(s) for s in block] for block in m["layout"]], m["index"]
            checked += 1
    assert checked == 31


def _fine_blocks(width: float):
    """ResNet34 fine blocks as (coarse block, [(node index, kind, shape args)]) in prototxt order:
    stem conv-bn-relu-pool, then basic blocks [projection conv-bn,] conv-bn-relu-conv-bn-add-relu."""
    c = [round(x * width) for x in (64, 128, 256, 512)]
    yield 0, [(0, "conv", (c[0], 3, 7)), (1, "bn", c[0])]
    cin = c[0]
    for coarse, (cout, n) in enumerate(zip(c, (3, 4, 6, 3), strict=True), start=1):
        for b in range(n):
            nodes, j = [], 0
            if b == 0 and cin != cout:
                nodes += [(0, "conv", (cout, cin, 1)), (1, "bn", cout)]
                j = 2
            nodes += [(j, "conv", (cout, cin, 3)), (j + 1, "bn", cout), (j + 3, "conv", (cout, cout, 3)),
                      (j + 4, "bn", cout)]
            yield coarse, nodes
            cin = cout


def write_paper_checkpoint(path, layout_sets, width=0.125, hidden=128, seed=0):
    """A state dict shaped like the paper code's MTSeqModel for ``layout_sets`` (TreeMTL order)."""
    gen = torch.Generator().manual_seed(seed)
    state, k = {}, 0
    for coarse, nodes in _fine_blocks(width):
        for _ in layout_sets[coarse]:
            for j, kind, shape in nodes:
                p = f"backbone.mtl_blocks.{k}.compute_nodes.{j}.basicOp."
                if kind == "conv":
                    cout, cin, ks = shape
                    state[p + "weight"] = torch.randn(cout, cin, ks, ks, generator=gen)
                else:
                    for name in ("weight", "bias", "running_mean"):
                        state[p + name] = torch.randn(shape, generator=gen)
                    state[p + "running_var"] = torch.rand(shape, generator=gen) + 0.5
                    state[p + "num_batches_tracked"] = torch.tensor(100)
            k += 1
    feat = round(512 * width)
    for task, ch in TASKS.items():
        for n in range(1, 5):
            for m, (cout, cin, ks) in enumerate(((hidden, feat, 3), (hidden, hidden, 1), (ch, hidden, 1)), start=1):
                state[f"module.heads.{task}.fc{n}.conv{m}.weight"] = torch.randn(cout, cin, ks, ks, generator=gen)
                state[f"module.heads.{task}.fc{n}.conv{m}.bias"] = torch.randn(cout, generator=gen)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "epoch": 7}, path)
    return state


MANIFEST = """
[suite]
name = "paper-mini"
dataset = "nyuv2"
width = 0.125
input_size = 32

[profiles.quick]
eps = [8]
attacks = ["fgsm:total"]

""" + AS_AND_LAYOUT_9


def test_zoo_import_converts_a_paper_checkpoint(paper_layouts, tmp_path, monkeypatch, capsys, wide_console):
    monkeypatch.setenv("MTLBENCH_HOME", str(tmp_path / "home"))
    entry = next(m for m in paper_layouts["nyuv2_resnet34"]["models"] if m["index"] == "9")
    sets = [[frozenset(s) for s in block] for block in entry["layout"]]
    root = tmp_path / "weights"
    theirs = write_paper_checkpoint(root / "9" / "segment_semantic_normal_depth_zbuffer.model", sets)
    manifest = tmp_path / "paper-mini.toml"
    manifest.write_text(MANIFEST)

    assert main(["zoo", "import", str(manifest), str(root), "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "imported 1 checkpoint" in captured.out and "no paper checkpoint for 1 model(s): AS" in captured.err

    suite = load_suite(manifest)
    model, info = load_model(suite, "layout-9", weights_dir=tmp_path / "out")
    assert info.source.startswith("paper checkpoint")
    ours = model.state_dict()
    # block copy k = 8 is the first fine block of layer2 (fine index 4) for the first task set of
    # coarse block 2 in TreeMTL's order; its node 0 is the 1x1 projection of the residual block
    k = 2 * 4  # fine blocks 0..3 (stem + layer1) each have the 2 task sets of blocks 0 and 1
    first_set = "_".join(str(t) for t in sorted(sets[2][0]))
    assert torch.equal(ours[f"blocks.2.{first_set}.0.downsample.0.weight"],
                       theirs[f"backbone.mtl_blocks.{k}.compute_nodes.0.basicOp.weight"])
    assert torch.equal(ours[f"blocks.2.{first_set}.0.conv1.weight"],
                       theirs[f"backbone.mtl_blocks.{k}.compute_nodes.2.basicOp.weight"])
    second = "_".join(str(t) for t in sorted(sets[0][1]))
    assert torch.equal(ours[f"blocks.0.{second}.1.running_var"],
                       theirs["backbone.mtl_blocks.1.compute_nodes.1.basicOp.running_var"])
    assert torch.equal(ours["heads.normal.branches.3.conv2.bias"], theirs["module.heads.normal.fc4.conv2.bias"])
    n_theirs = sum(v.numel() for v in theirs.values())
    assert n_theirs == sum(v.numel() for v in ours.values())
    assert model(torch.rand(1, 3, 32, 32))["depth_zbuffer"].shape == (1, 1, 32, 32)


def test_a_checkpoint_of_another_layout_is_refused(paper_layouts, tmp_path, capsys):
    root = tmp_path / "weights"
    # layout 9's copies written under AS's index: the block counts do not fit
    entry = next(m for m in paper_layouts["nyuv2_resnet34"]["models"] if m["index"] == "9")
    write_paper_checkpoint(root / "0" / "segment_semantic_normal_depth_zbuffer.model",
                           [[frozenset(s) for s in block] for block in entry["layout"]])
    manifest = tmp_path / "paper-mini.toml"
    manifest.write_text(MANIFEST)
    assert main(["zoo", "import", str(manifest), str(root), "--model", "AS", "--out", str(tmp_path / "o")]) == 2
    assert "backbone block copies" in capsys.readouterr().err


def test_pickles_with_code_are_never_loaded(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.model"
    torch.save({"state_dict": {}, "x": Payload()}, path)
    with pytest.raises(PaperImportError, match="weights-only"):
        load_paper_checkpoint(path)
    with pytest.raises(PaperImportError, match="does not exist"):
        load_paper_checkpoint(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"garbage")
    with pytest.raises(PaperImportError, match="cannot be read"):
        load_paper_checkpoint(tmp_path / "junk.model")
    assert json.dumps(Layout.parse("AS", num_tasks=3).to_json())
