import math

import pytest
import torch
import torch.nn.functional as F

from benchmark.tasks import IGNORE_INDEX, get_tasks


def nyu():
    return {t.name: t for t in get_tasks("nyuv2")}


def tasko(weights=None):
    return {t.name: t for t in get_tasks("taskonomy", class_weights=weights)}


def test_task_order_and_channels():
    assert [(t.name, t.channels) for t in get_tasks("nyuv2")] == [
        ("segment_semantic", 40), ("normal", 3), ("depth_zbuffer", 1)]
    assert [t.name for t in get_tasks("taskonomy")] == [
        "segment_semantic", "normal", "depth_zbuffer", "keypoints2d", "edge_texture"]
    with pytest.raises(ValueError, match="unknown dataset 'kitti'"):
        get_tasks("kitti")


def test_segmentation_per_sample_loss_ignores_255():
    seg = nyu()["segment_semantic"]
    pred = torch.randn(2, 40, 4, 4)
    target = torch.randint(0, 40, (2, 4, 4))
    target[0, :2] = IGNORE_INDEX  # sample 0 has 8 valid pixels, sample 1 has 16
    losses = seg.loss(pred, {"segment_semantic": target})
    assert losses.shape == (2,)
    for b in range(2):
        valid = target[b] != IGNORE_INDEX
        expected = F.cross_entropy(pred[b].permute(1, 2, 0)[valid], target[b][valid])
        assert torch.allclose(losses[b], expected, atol=1e-6)
    # the batch loss is the paper's pixel-weighted mean (nn.CrossEntropyLoss(ignore_index=255))
    assert torch.allclose(seg.loss(pred, {"segment_semantic": target}, "mean"),
                          F.cross_entropy(pred, target, ignore_index=IGNORE_INDEX), atol=1e-6)


def test_batch_mean_equals_mean_of_per_sample_losses_when_valid_counts_match():
    tasks = nyu()
    pred = {"segment_semantic": torch.randn(3, 40, 5, 5), "normal": torch.randn(3, 3, 5, 5),
            "depth_zbuffer": torch.rand(3, 1, 5, 5)}
    targets = {"segment_semantic": torch.randint(0, 40, (3, 5, 5)),
               "normal": F.normalize(torch.randn(3, 3, 5, 5), dim=1),
               "depth_zbuffer": torch.rand(3, 1, 5, 5) + 0.1}
    for name, task in tasks.items():
        per_sample = task.loss(pred[name], targets)
        assert torch.allclose(per_sample.mean(), task.loss(pred[name], targets, "mean"), atol=1e-6), name


def test_class_weighted_taskonomy_segmentation():
    weights = torch.arange(1, 18, dtype=torch.float32)
    seg = tasko(weights)["segment_semantic"]
    pred = torch.randn(1, 17, 3, 3)
    target = torch.randint(0, 17, (1, 3, 3))
    target[0, 0, 0] = IGNORE_INDEX
    got = seg.loss(pred, {"segment_semantic": target})
    expected = F.cross_entropy(pred, target, weight=weights, ignore_index=IGNORE_INDEX)
    assert torch.allclose(got[0], expected, atol=1e-6)
    with pytest.raises(ValueError, match="17 class weights"):
        get_tasks("taskonomy", class_weights=torch.ones(3))


def test_normal_loss_is_one_minus_cosine_over_valid_pixels():
    normal = nyu()["normal"]
    target = torch.zeros(1, 3, 1, 2)
    target[0, 2] = 1.0  # both pixels point along z
    pred = torch.zeros(1, 3, 1, 2)
    pred[0, 2, 0, 0] = 5.0   # same direction (scale does not matter): loss 0
    pred[0, 0, 0, 1] = 1.0   # orthogonal: loss 1
    assert torch.allclose(normal.loss(pred, {"normal": target}), torch.tensor([0.5]))
    mask = torch.tensor([[[[1.0, 0.0]]]])
    assert torch.allclose(normal.loss(pred, {"normal": target, "mask": mask}), torch.tensor([0.0]))
    target[0, :, 0, 1] = IGNORE_INDEX
    assert torch.allclose(normal.loss(pred, {"normal": target}), torch.tensor([0.0]))


def test_depth_uses_mask_or_positive_target():
    depth = nyu()["depth_zbuffer"]
    target = torch.tensor([[[[2.0, 0.0, 4.0]]]])
    pred = torch.tensor([[[[3.0, 9.0, 4.0]]]])
    assert torch.allclose(depth.loss(pred, {"depth_zbuffer": target}), torch.tensor([0.5]))  # (1 + 0) / 2
    mask = torch.tensor([[[[1.0, 1.0, 0.0]]]])
    assert torch.allclose(depth.loss(pred, {"depth_zbuffer": target, "mask": mask}), torch.tensor([5.0]))


def test_keypoint_and_edge_l1_skip_255():
    key = tasko()["keypoints2d"]
    target = torch.tensor([[[[0.5, 255.0]]]])
    pred = torch.tensor([[[[0.0, 0.0]]]])
    assert torch.allclose(key.loss(pred, {"keypoints2d": target}), torch.tensor([0.5]))


def test_segmentation_metrics_hand_computed():
    metric = nyu()["segment_semantic"].new_metric()
    # labels: predicted classes 0,0,1,1 vs target 0,1,1,255
    pred = torch.zeros(1, 40, 1, 4)
    pred[0, 0, 0, :2] = 1
    pred[0, 1, 0, 2:] = 1
    target = torch.tensor([[[0, 1, 1, 255]]])
    metric.update(pred, {"segment_semantic": target})
    out = metric.compute()
    # class 0: tp 1, union 2 -> 0.5; class 1: tp 1, union 2 -> 0.5
    assert out["mIoU"] == pytest.approx(0.5)
    assert out["pixel_acc"] == pytest.approx(2 / 3)


def test_normal_metrics_hand_computed():
    metric = nyu()["normal"].new_metric()
    angles = torch.tensor([0.0, 10.0, 20.0, 40.0])
    rad = torch.deg2rad(angles)
    pred = torch.stack([torch.sin(rad), torch.zeros(4), torch.cos(rad)]).view(1, 3, 1, 4)
    target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 4)
    metric.update(pred, {"normal": target})
    out = metric.compute()
    assert out["mean"] == pytest.approx(17.5, abs=0.01)
    # the grouped-data median: half of the 4 values lie below it; interpolated in the bin of the 2nd (10 deg)
    assert out["median"] == pytest.approx(10.25)
    assert out["within_11.25"] == pytest.approx(50.0)
    assert out["within_22.5"] == pytest.approx(75.0)
    assert out["within_30"] == pytest.approx(75.0)


def test_depth_metrics_hand_computed():
    metric = nyu()["depth_zbuffer"].new_metric()
    target = torch.tensor([[[[1.0, 2.0, 4.0, 0.0]]]])
    pred = torch.tensor([[[[1.1, 3.0, 4.0, 7.0]]]])
    metric.update(pred, {"depth_zbuffer": target})
    out = metric.compute()
    assert out["abs_err"] == pytest.approx((0.1 + 1.0 + 0.0) / 3)
    assert out["rel_err"] == pytest.approx((0.1 + 0.5 + 0.0) / 3)
    assert out["delta_1.25"] == pytest.approx(200 / 3)   # ratios 1.1, 1.5, 1.0
    assert out["delta_1.25^2"] == pytest.approx(100.0)   # 1.5 < 1.5625


def test_taskonomy_metrics():
    tasks = tasko()
    target = torch.tensor([[[[0.2, 255.0]]]])
    pred = torch.tensor([[[[0.5, 0.0]]]])
    for name, metric_name in (("keypoints2d", "key_err"), ("edge_texture", "edge_err")):
        m = tasks[name].new_metric()
        m.update(pred, {name: target})
        assert m.compute()[metric_name] == pytest.approx(0.3)
    cos = tasks["normal"].new_metric()
    unit_x = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    cos.update(unit_x, {"normal": torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)})
    assert cos.compute()["cosine_similarity"] == pytest.approx(math.sqrt(0.5))
    err = tasks["segment_semantic"].new_metric()
    logits = torch.randn(2, 17, 2, 2)
    labels = torch.randint(0, 17, (2, 2, 2))
    err.update(logits, {"segment_semantic": labels})
    assert err.compute()["err"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)


@pytest.mark.parametrize("name", ["segment_semantic", "normal", "depth_zbuffer"])
def test_streaming_and_merging_equal_one_pass(name):
    task = nyu()[name]
    torch.manual_seed(3)
    preds = [torch.randn(2, task.channels, 6, 6) for _ in range(3)]
    if name == "segment_semantic":
        targets = [{name: torch.randint(0, 40, (2, 6, 6))} for _ in range(3)]
    elif name == "normal":
        targets = [{name: F.normalize(torch.randn(2, 3, 6, 6), dim=1)} for _ in range(3)]
    else:
        preds = [p.abs() + 0.1 for p in preds]
        targets = [{name: torch.rand(2, 1, 6, 6) + 0.5} for _ in range(3)]
    whole = task.new_metric()
    whole.update(torch.cat(preds), {name: torch.cat([t[name] for t in targets])})
    parts = [task.new_metric() for _ in range(3)]
    for m, p, t in zip(parts, preds, targets, strict=True):
        m.update(p, t)
    merged = parts[0].merge(parts[1]).merge(parts[2])
    for key, value in whole.compute().items():
        assert merged.compute()[key] == pytest.approx(value, rel=1e-9), key
    merged.reset()
    assert all(math.isnan(v) for v in merged.compute().values())


def test_trivial_prediction_shapes():
    tasks = nyu()
    targets = {"segment_semantic": torch.randint(0, 40, (2, 4, 4)),
               "normal": F.normalize(torch.randn(2, 3, 4, 4), dim=1),
               "depth_zbuffer": torch.rand(2, 1, 4, 4) + 1}
    for task in tasks.values():
        pred = task.trivial_prediction(targets)
        assert pred.shape == (2, task.channels, 4, 4)
        assert torch.isfinite(task.loss(pred, targets)).all()


def test_a_tasks_kind_is_its_class():
    """Each kind's loss, valid pixels and constant prediction are its class's; ``Task(...)`` gives
    the class of the kind it names (an ``l1`` task stays a plain Task)."""
    from benchmark.tasks import DepthTask, NormalTask, SegmentationTask, Task

    assert [type(t) for t in get_tasks("nyuv2")] == [SegmentationTask, NormalTask, DepthTask]
    assert [type(t) for t in get_tasks("taskonomy")][3:] == [Task, Task]
    made = Task("d", "depth", 1, {"abs_err": False}, "custom")
    assert type(made) is DepthTask and made.kind == "depth"
    # depth counts only pixels with depth (or the data's mask); an l1 task every labelled pixel
    target = torch.tensor([[[[0.0, 2.0], [IGNORE_INDEX, 1.0]]]])
    pred = torch.zeros_like(target)
    _, depth_valid = made.pixel_error(pred, {"d": target})
    _, l1_valid = Task("k", "l1", 1, {"key_err": False}, "custom").pixel_error(pred, {"k": target})
    assert depth_valid.flatten().tolist() == [False, True, True, True]
    assert l1_valid.flatten().tolist() == [True, True, False, True]


def test_a_metric_direction_that_contradicts_its_metric_is_refused():
    """A task table saying lower mIoU is better would score every drop as a gain: the metric
    class declares its directions and get_tasks checks the table against them."""
    from benchmark.tasks import SegmentationMetric, Task, register_dataset_tasks

    @register_dataset_tasks("contradicting")
    def tasks():
        return [Task("segment_semantic", "segmentation", 4, {"mIoU": False, "pixel_acc": True}, "contradicting",
                     _metric_factory=lambda t: SegmentationMetric(t.channels))]

    with pytest.raises(ValueError, match="declares"):
        get_tasks("contradicting")
    for dataset in ("nyuv2", "taskonomy"):  # the built-in tables agree with their metrics
        for t in get_tasks(dataset):
            assert t.new_metric().directions == t.metrics, t.name
