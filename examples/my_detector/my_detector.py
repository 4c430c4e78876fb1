"""A detector in one file: flag images whose depth prediction is unusually rough.

Load it with `--plugins examples/my_detector/my_detector.py` (or MTLBENCH_PLUGINS) and evaluate it
like any defense: `mtlbench run --suite tiny-nyuv2-resnet34 --models AS --defenses none,rough-depth:5`.
The argument is the false-positive rate (percent) its threshold is set at on clean held-out images.
"""

from benchmark.defenses import Detector, register_defense


@register_defense("rough-depth")
class RoughDepth(Detector):
    """Rejection score: the mean absolute difference between neighbouring pixels of the predicted
    log-depth (adversarial noise tends to roughen it). Differentiable, so evade-pgd descends it."""

    def score(self, x, outputs, tasks):
        depth = next(outputs[t.name] for t in tasks if t.kind == "depth").clamp_min(1e-3).log()
        dx = (depth[..., :, 1:] - depth[..., :, :-1]).abs().flatten(1).mean(1)
        dy = (depth[..., 1:, :] - depth[..., :-1, :]).abs().flatten(1).mean(1)
        return dx + dy
