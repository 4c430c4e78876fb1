import math

import pytest

from benchmark.scoring import arp, bootstrap_ci, metric_drop, task_arp, transferability
from benchmark.tasks import get_tasks


def test_metric_drop_signs():
    # higher is better: accuracy 0.5 -> 0.4 is a 20% drop
    assert metric_drop(0.5, 0.4, True) == pytest.approx(20.0)
    # lower is better: error 2.0 -> 3.0 is a 50% drop
    assert metric_drop(2.0, 3.0, False) == pytest.approx(50.0)
    # an "improvement" is a negative drop
    assert metric_drop(2.0, 1.0, False) == pytest.approx(-50.0)
    with pytest.raises(ValueError, match="non-zero clean value"):
        metric_drop(0.0, 1.0, True)


def test_arp_hand_computed_with_lower_is_better_metrics():
    directions = {"seg": {"mIoU": True, "acc": True}, "depth": {"abs_err": False}}
    clean = {"seg": {"mIoU": 0.40, "acc": 0.80}, "depth": {"abs_err": 0.50}}
    adv = {"seg": {"mIoU": 0.30, "acc": 0.60}, "depth": {"abs_err": 1.00}}
    # seg: mean(25%, 25%) = 25; depth: +100% error = 100; ARP = (25 + 100) / 2
    assert task_arp(clean, adv, directions) == {"seg": pytest.approx(25.0), "depth": pytest.approx(100.0)}
    assert arp(clean, adv, directions) == pytest.approx(62.5)
    assert arp(clean, clean, directions) == 0.0


def test_arp_with_real_task_directions():
    tasks = get_tasks("nyuv2")
    clean = {"segment_semantic": {"mIoU": 0.2, "pixel_acc": 0.5},
             "normal": {"mean": 20.0, "median": 15.0, "within_11.25": 30.0, "within_22.5": 60.0, "within_30": 70.0},
             "depth_zbuffer": {"abs_err": 0.5, "rel_err": 0.2, "delta_1.25": 60.0, "delta_1.25^2": 80.0,
                               "delta_1.25^3": 90.0}}
    adv = {"segment_semantic": {"mIoU": 0.1, "pixel_acc": 0.25},          # both -50% -> 50
           "normal": {"mean": 30.0, "median": 22.5, "within_11.25": 15.0,  # +50%, +50%, -50%
                      "within_22.5": 30.0, "within_30": 35.0},              # -50%, -50% -> 50
           "depth_zbuffer": {"abs_err": 0.5, "rel_err": 0.2, "delta_1.25": 60.0, "delta_1.25^2": 80.0,
                             "delta_1.25^3": 90.0}}                         # unchanged -> 0
    assert arp(clean, adv, tasks) == pytest.approx((50 + 50 + 0) / 3)


def test_transferability_eq_11():
    per_task = {"seg": 40.0, "normal": 10.0, "depth": 20.0}
    assert transferability(per_task, "seg") == pytest.approx((10 / 40 + 20 / 40) / 2)
    assert transferability(per_task, "depth") == pytest.approx((40 / 20 + 10 / 20) / 2)
    assert math.isnan(transferability({"a": 0.0, "b": 1.0}, "a"))
    with pytest.raises(KeyError):
        transferability(per_task, "edge")


def test_bootstrap_ci():
    mean, low, high = bootstrap_ci([1.0, 2.0, 3.0, 4.0, 5.0], seed=1)
    assert mean == 3.0 and 1.0 <= low < mean < high <= 5.0
    assert bootstrap_ci([1.0, 2.0, 3.0], seed=1) == bootstrap_ci([1.0, 2.0, 3.0], seed=1)
    assert bootstrap_ci([7.0]) == (7.0, 7.0, 7.0)
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([1.0, float("nan"), 3.0])[0] == 2.0
