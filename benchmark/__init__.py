"""mtlbench: a benchmark and leaderboard for adversarial attacks on multi-task vision models."""

__version__ = "0.1.0"

from benchmark.errors import UserError

__all__ = ["UserError", "__version__"]
