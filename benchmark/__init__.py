"""mtlbench: a benchmark and leaderboard for adversarial attacks on multi-task vision models."""

from benchmark.errors import UserError
from benchmark.version import __version__

__all__ = ["UserError", "__version__", "evaluate"]


def __getattr__(name: str):
    # ``benchmark.evaluate`` (bring your own model) is imported on first use, so that importing the
    # package stays light
    if name == "evaluate":
        from benchmark.runner.byom import evaluate

        return evaluate
    raise AttributeError(f"module 'benchmark' has no attribute {name!r}")
