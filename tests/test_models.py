import pytest
import torch
from references import aspp_per_branch

from benchmark.models import BranchedModel, Layout, build_backbone, layout_from_index
from benchmark.models.heads import ASPPHead, dropout
from benchmark.tasks import get_tasks, total_loss

NYU = {t.name: t.channels for t in get_tasks("nyuv2")}
TASKONOMY = {t.name: t.channels for t in get_tasks("taskonomy")}


def _paper_models(paper_layouts):
    for key, tasks in (("nyuv2_resnet34", NYU), ("taskonomy_resnet34", TASKONOMY)):
        for m in paper_layouts[key]["models"]:
            if m["layout"] is not None:
                layout = Layout.from_sets(m["layout"])
            else:  # recovered from the enumeration
                layout = layout_from_index(int(m["index"]), len(tasks))
            yield key, m["index"], layout, tasks, m["params_m"]


def test_every_paper_layout_has_the_paper_parameter_count(paper_layouts):
    """Backbone parameters (heads excluded) within 0.05M of Tables 4, 6, 16, 17 for all 40 models.

    Our blocks have exactly the shapes of the paper's prototxt (torchvision's ResNet34 shapes);
    the tables sit 0.005-0.043M below our exact counts, growing with the number of block copies."""
    seen = 0
    for key, index, layout, tasks, expected in _paper_models(paper_layouts):
        with torch.device("meta"):
            model = BranchedModel(layout, tasks, head_hidden=8)
        got = model.backbone_parameters() / 1e6
        assert abs(got - expected) <= 0.05, (key, index, str(layout), got, expected)
        seen += 1
    assert seen == 40


def test_as_and_ind_counts_exactly():
    with torch.device("meta"):
        shared = BranchedModel("AS", NYU, head_hidden=8)
        ind = BranchedModel("IND", NYU, head_hidden=8)
    assert shared.backbone_parameters() == 21_284_672  # ResNet34 without fc
    assert ind.backbone_parameters() == 3 * 21_284_672


def test_wrong_layout_is_off_by_a_block():
    """A layout built one block wrongly is visibly off (>= 0.2M), so the count test has teeth."""
    with torch.device("meta"):
        right = BranchedModel(layout_from_index(49, 3), NYU, head_hidden=8).backbone_parameters()
        wrong = BranchedModel(layout_from_index(48, 3), NYU, head_hidden=8).backbone_parameters()
    assert abs(right - wrong) > 200_000


def test_mobilenetv2_blocks():
    spec = build_backbone("mobilenetv2")
    assert len(spec.blocks) == 5 and spec.feature_dim == 1280 and spec.output_stride == 32
    assert sum(p.numel() for b in spec.blocks for p in b.parameters()) == 2_223_872  # torchvision features
    x = torch.rand(1, 3, 64, 64)
    shapes = []
    for block in spec.blocks:
        block.eval()
        x = block(x)
        shapes.append(tuple(x.shape[1:]))
    assert shapes == [(24, 16, 16), (64, 4, 4), (96, 4, 4), (320, 2, 2), (1280, 2, 2)]
    dilated = build_backbone("mobilenetv2", width=0.5, output_stride=8)
    x = torch.rand(1, 3, 64, 64)
    for block in dilated.blocks:
        x = block.eval()(x)
    assert x.shape[-2:] == (8, 8) and x.shape[1] == dilated.feature_dim == 640


def test_resnet34_output_stride_8():
    spec = build_backbone("resnet34", width=0.25)
    x = torch.rand(1, 3, 64, 64)
    for block in spec.blocks:
        x = block.eval()(x)
    assert x.shape == (1, 128, 9, 9)  # max-pool rounds up (CEIL) as in the prototxt: 321 -> 41


def test_forward_outputs_at_input_resolution():
    model = BranchedModel("[[{0,1,2}], [{0,1,2}], [{0},{1,2}], [{0},{1,2}], [{0},{1},{2}]]", NYU,
                          width=0.125, head_hidden=16, head_rates=(1, 2)).eval()
    out = model(torch.rand(2, 3, 40, 56))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "segment_semantic": (2, 40, 40, 56), "normal": (2, 3, 40, 56), "depth_zbuffer": (2, 1, 40, 56)}


def test_shared_blocks_run_once_per_forward():
    layout = Layout.parse("[[{0,1,2}], [{0,1,2}], [{0},{1,2}], [{0},{1,2}], [{0},{1},{2}]]")
    model = BranchedModel(layout, NYU, width=0.125, head_hidden=8, head_rates=(1,)).eval()
    calls: dict[str, int] = {}
    for i, block in enumerate(model.blocks):
        for key, module in block.items():
            module.register_forward_hook(lambda *_, k=f"{i}:{key}": calls.__setitem__(k, calls.get(k, 0) + 1))
    model(torch.rand(1, 3, 32, 32))
    assert calls == {"0:0_1_2": 1, "1:0_1_2": 1, "2:0": 1, "2:1_2": 1, "3:0": 1, "3:1_2": 1,
                     "4:0": 1, "4:1": 1, "4:2": 1}


def test_normalisation_is_inside_the_model():
    model = BranchedModel("AS", NYU, width=0.125, head_hidden=8, head_rates=(1,))
    x = torch.rand(1, 3, 8, 8)
    h = model.normalize(x)
    assert torch.allclose(h[0, 0], x[0, 2] * 255 - 104.008)  # blue channel first, as the paper's BGR


def test_config_round_trip_rebuilds_the_same_model():
    torch.manual_seed(1)
    model = BranchedModel("IND", TASKONOMY, backbone="mobilenetv2", width=0.25, output_stride=8,
                          head_hidden=8, head_rates=(1, 2))
    clone = BranchedModel.from_config(model.config.to_dict())
    clone.load_state_dict(model.state_dict())
    x = torch.rand(1, 3, 32, 32)
    a, b = model.eval()(x), clone.eval()(x)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_layout_for_tasks_is_a_clear_error():
    with pytest.raises(ValueError, match="has 3 tasks, expected 5"):
        BranchedModel("[[{0,1,2}], [{0,1,2}], [{0,1,2}], [{0,1,2}], [{0,1,2}]]", TASKONOMY)


@pytest.mark.parametrize("backbone", ["resnet34", "mobilenetv2"])
def test_tiny_model_learns_every_task_on_random_tensors(backbone):
    """A few optimiser steps on a fixed random batch lower every task's loss."""
    torch.manual_seed(0)
    tasks = get_tasks("nyuv2")
    model = BranchedModel("[[{0,1,2}], [{0,1,2}], [{0},{1,2}], [{0},{1,2}], [{0},{1},{2}]]",
                          {t.name: t.channels for t in tasks}, backbone=backbone, width=0.125,
                          output_stride=8, head_hidden=16, head_rates=(1, 2))
    x = torch.rand(4, 3, 32, 32)
    def blocky(t):  # random 8x8-pixel patches: learnable structure, not per-pixel noise
        return torch.nn.functional.interpolate(t, scale_factor=8, mode="nearest")

    targets = {
        "segment_semantic": blocky(torch.randint(0, 40, (4, 1, 4, 4)).float()).long()[:, 0],
        "normal": torch.nn.functional.normalize(blocky(torch.randn(4, 3, 4, 4)), dim=1),
        "depth_zbuffer": blocky(torch.rand(4, 1, 4, 4)) * 5 + 0.5,
    }
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def losses():
        out = model(x)
        return {t.name: t.loss(out[t.name], targets, "mean") for t in tasks}

    model.eval()
    with torch.no_grad():
        before = losses()
    model.train()
    for _ in range(40):
        opt.zero_grad()
        total_loss(tasks, model(x), targets).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = losses()
    for name in before:
        assert after[name] < before[name] * 0.9, (name, before[name].item(), after[name].item())


def test_parameter_count_without_building_the_model():
    from benchmark.models.branched import count_backbone_parameters
    from benchmark.models.layouts import layout_from_index

    for index, backbone, width in ((9, "resnet34", 0.25), (42, "mobilenetv2", 0.5), (0, "resnet34", 1.0)):
        layout = layout_from_index(index, 3)
        model = BranchedModel(layout, {"a": 2, "b": 1, "c": 3}, backbone=backbone, width=width)
        assert count_backbone_parameters(layout, backbone, width) == model.backbone_parameters()


def test_aspp_head_runs_its_branches_side_by_side_as_the_per_branch_sum():
    torch.manual_seed(0)
    head = ASPPHead(16, 5, hidden=8, rates=(1, 2, 3, 4)).eval()
    x = torch.randn(3, 16, 7, 7, requires_grad=True)
    ours, theirs = head(x), aspp_per_branch(head, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    g_ours = torch.autograd.grad(ours.square().sum(), [x, *head.parameters()])
    g_theirs = torch.autograd.grad(theirs.square().sum(), [x, *head.parameters()])
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # the checkpoint names of the authors' heads (after import) are the per-branch ones
    assert {k for k in head.state_dict() if k.startswith("branches.3.")} == {
        f"branches.3.conv{m}.{p}" for m in (1, 2, 3) for p in ("weight", "bias")}


def test_head_dropout_keeps_each_unit_with_probability_one_minus_p_and_rescales():
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout(x, 0.5, True)
    assert set(y.unique().tolist()) == {0.0, 2.0}
    assert abs((y > 0).float().mean().item() - 0.5) < 0.005
    assert abs(dropout(x, 0.2, True).mean().item() - 1.0) < 0.01
    assert dropout(x, 0.5, False) is x
    assert not dropout(x, 1.0, True).any()
    with pytest.raises(ValueError, match="outside"):
        ASPPHead(4, 2, dropout=1.5)
