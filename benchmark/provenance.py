"""Where a result came from: the code's git commit (when run from a checkout)."""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

__all__ = ["git_commit"]


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """Short commit of the source checkout mtlbench runs from, or ``unknown`` (e.g. a wheel)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
