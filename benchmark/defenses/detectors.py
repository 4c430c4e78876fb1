"""Detectors: defenses that keep the model's predictions and add a per-image rejection score; an
image whose score is above the detector's threshold is rejected (flagged as adversarial).

The threshold is fixed on clean held-out images of the suite (:data:`CALIBRATION_SPLIT`, never the
evaluation images) at the false-positive rate the detector's argument gives, in percent
(``consistency:5``: 5 % of clean images rejected). The runner calibrates it when the target is
loaded and measures the false-positive rate again on the evaluation images.

How a detector is scored (the attacker's view): an attack succeeds on an image only where the
detector does not reject it; a rejected adversarial image counts as unharmed (the system abstains,
it does not act on a wrong prediction), so the cell's ARP is computed with each rejected image's
clean prediction in place of its adversarial one. The cell also keeps the plain ARP (every
adversarial prediction, as if nothing were detected) and its detection rate. A detector that
rejects everything would score an ARP of 0; its false-positive rate, shown beside it, is what it
costs on clean images.

===========================  ===================================================================
detector                     rejection score
===========================  ===================================================================
consistency:FPR              cross-task edge disagreement (no training): 1 - the mean cosine
                             similarity between the edge maps of the image and of every task's
                             prediction (segmentation's soft class boundaries, depth's log-depth
                             edges, normals' edges), in the spirit of Klingner et al. (2022)
learned-consistency:FPR      a small consistency head, trained on the member's clean predictions,
                             predicts depth from the segmentation and the normals; the score is
                             its relative disagreement with the model's depth
===========================  ===================================================================

Both scores are differentiable, so attacks that know the detector
(:class:`benchmark.attacks.evasion.EvadePGD`) descend them directly.
"""

from __future__ import annotations

from abc import abstractmethod
from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn

from benchmark.defenses.inference import DefendedModel, InferenceDefense
from benchmark.defenses.registry import register_defense
from benchmark.enums import DefenseKind
from benchmark.errors import UserError

__all__ = ["CALIBRATION_SPLIT", "ConsistencyDetector", "ConsistencyHead", "Detector", "DetectorModel",
           "LearnedConsistency"]

#: the split of a suite's data the thresholds are set on (synthetic suites: scenes the evaluation
#: split never shows; real data: the training split)
CALIBRATION_SPLIT = "val"
#: clean images the threshold is set on
CALIBRATION_IMAGES = 256


class Detector(InferenceDefense):
    """Base of every detector: the model's outputs unchanged, plus :meth:`score`."""

    kind = DefenseKind.DETECTOR
    argument_help = "false-positive rate on clean held-out images, percent (0.1-50)"
    default_argument = "5"

    def __init__(self, argument: str = "") -> None:
        super().__init__(argument)
        self.fpr = self.parse_argument(float, "false-positive rate (%)", 0.1, 50.0)

    #: whether it has a head trained per member (loaded by the target that wraps the member)
    learned = False

    @abstractmethod
    def score(self, x: torch.Tensor, outputs: dict[str, torch.Tensor], tasks) -> torch.Tensor:
        """Per-image rejection score (B,) of images ``x`` with the model's ``outputs``: higher is
        more suspicious. Differentiable where it can be (an adaptive attack descends it)."""


class DetectorModel(DefendedModel):
    """``model`` behind a detector: its forward pass is the model's; :meth:`rejection_score` and
    :meth:`rejected` say what the detector makes of an input. ``threshold`` is set by
    :meth:`calibrate`."""

    def __init__(self, model: nn.Module, detector: Detector, tasks) -> None:
        super().__init__(model, detector)
        self.tasks = list(tasks)
        self.threshold: float | None = None

    def rejection_score(self, x: torch.Tensor) -> torch.Tensor:
        return self.defense.score(x, self.model(x), self.tasks)

    @torch.no_grad()
    def calibrate(self, batches) -> float:
        """The threshold that rejects the detector's false-positive rate of the clean images of
        ``batches`` (an iterable of image tensors)."""
        scores = torch.cat([self.rejection_score(b).float().cpu() for b in batches])
        if scores.numel() < 20:
            raise UserError(f"{self.defense.canonical_name}: {scores.numel()} calibration images are too few to set a "
                            f"threshold at a {self.defense.fpr:g} % false-positive rate")
        self.threshold = float(torch.quantile(scores, 1.0 - self.defense.fpr / 100.0))
        return self.threshold

    @torch.no_grad()
    def rejected(self, x: torch.Tensor) -> torch.Tensor:
        """Which images of ``x`` the detector rejects (B,) bool."""
        if self.threshold is None:
            raise RuntimeError("the detector's threshold is not calibrated")
        return self.rejection_score(x) > self.threshold


# ---------------------------------------------------------------------- cross-task edge consistency
def _edges(maps: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude (B, H, W) of a (B, C, H, W) map, summed over channels."""
    dx = F.pad(maps[..., :, 1:] - maps[..., :, :-1], (0, 1, 0, 0))
    dy = F.pad(maps[..., 1:, :] - maps[..., :-1, :], (0, 0, 0, 1))
    return (dx.pow(2) + dy.pow(2) + 1e-12).sqrt().sum(1)


def _task_map(task, out: torch.Tensor) -> torch.Tensor:
    """A task's prediction as the map whose edges mark its boundaries."""
    if task.kind == "segmentation":
        return out.softmax(1)  # soft class boundaries: differentiable
    if task.kind == "normal":
        return out / out.norm(dim=1, keepdim=True).clamp_min(1e-6)
    if task.kind == "depth":
        return out.clamp_min(1e-3).log()
    return out


def edge_maps(x: torch.Tensor, outputs: dict[str, torch.Tensor], tasks) -> list[torch.Tensor]:
    """The image's edges and each task's, each scaled to unit norm per image (B, H, W)."""
    gray = x.mean(1, keepdim=True)
    maps = [_edges(gray)] + [_edges(_task_map(t, outputs[t.name])) for t in tasks]
    return [m / m.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1) for m in maps]


@register_defense("consistency")
class ConsistencyDetector(Detector):
    """Cross-task edge consistency, no training: 1 - the mean cosine similarity of every pair of
    edge maps (the image's and each task's prediction's)."""

    def score(self, x, outputs, tasks):
        maps = edge_maps(x, outputs, tasks)
        sims = [(a * b).flatten(1).sum(1) for a, b in combinations(maps, 2)]
        return 1.0 - torch.stack(sims).mean(0)


# ---------------------------------------------------------------------- the learned consistency head
class ConsistencyHead(nn.Module):
    """Predicts log-depth from the segmentation's class probabilities and the unit normals (a few
    convolutions at the prediction's resolution)."""

    def __init__(self, classes: int, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(classes + 3, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=2, dilation=2), nn.ReLU(),
                                 nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, 1, 1))

    def forward(self, seg: torch.Tensor, normal: torch.Tensor) -> torch.Tensor:
        unit = normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-6)
        return self.net(torch.cat([seg.softmax(1), unit], 1))


def head_inputs(outputs: dict[str, torch.Tensor], tasks) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The segmentation logits, normals and log-depth of a model's outputs (a NYUv2-style suite's)."""
    kinds = {t.kind: t for t in tasks}
    missing = [k for k in ("segmentation", "normal", "depth") if k not in kinds]
    if missing:
        raise UserError(f"learned-consistency needs segmentation, normal and depth predictions; the suite has no "
                        f"{', '.join(missing)} task")
    depth = outputs[kinds["depth"].name].clamp_min(1e-3).log()
    return outputs[kinds["segmentation"].name], outputs[kinds["normal"].name], depth


@register_defense("learned-consistency")
class LearnedConsistency(Detector):
    """A consistency head trained on the member's clean predictions (``mtlbench defend``):
    the score is the mean absolute difference between the head's log-depth and the model's."""

    #: its head is trained per member (``mtlbench defend SUITE --defense learned-consistency``) and
    #: pinned in the manifest's ``[weights.detectors."learned-consistency"]``
    learned = True

    def __init__(self, argument: str = "") -> None:
        super().__init__(argument)
        self.head: ConsistencyHead | None = None

    def use(self, head: ConsistencyHead) -> None:
        """The member's trained head (loaded by :func:`benchmark.zoo.detectors.load_head`)."""
        self.head = head.eval()
        for p in self.head.parameters():
            p.requires_grad_(False)

    def score(self, x, outputs, tasks):
        if self.head is None:
            raise RuntimeError("learned-consistency: the head is not loaded (bind it to a member first)")
        seg, normal, depth = head_inputs(outputs, tasks)
        return (self.head(seg, normal) - depth).abs().flatten(1).mean(1)

