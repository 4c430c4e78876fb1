"""Where a result came from: the code's git commit (when run from a checkout) and the CPU instruction set."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__all__ = ["cpu_capability", "git_commit"]


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit of the source checkout mtlbench runs from, or ``unknown`` (e.g. a wheel)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_capability() -> str:
    """The CPU instruction set torch's kernels use here (``AVX512``, ``AVX2``, ...): a float result
    is bit for bit the same only on the same instruction set, torch build and thread count."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except (ImportError, AttributeError, RuntimeError):
        return "unknown"
