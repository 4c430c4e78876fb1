"""Every path mtlbench writes or reads of its own, in one place (the lowest layer: it imports
nothing of mtlbench).

* ``$MTLBENCH_HOME`` (default ``$XDG_CACHE_HOME/mtlbench`` or ``~/.cache/mtlbench``): the local zoo
  ``zoo/<suite>/<member>/``, a suite's pre-trained backbone ``zoo/<suite>/_pretext/`` and its
  defended checkpoints ``zoo/<suite>/defended/<defense>/<member>/``;
* the weights that ship with mtlbench, in the same layout under ``benchmark/zoo/weights/``.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["PRETEXT_DIR", "SHIPPED_ZOO", "defended_root", "mtlbench_home", "safe_name", "zoo_root"]

#: the folder of a suite's common pre-trained backbone (member names start with a letter or digit)
PRETEXT_DIR = "_pretext"
#: the tiny suites' weights that ship with mtlbench
SHIPPED_ZOO = Path(__file__).parent / "zoo" / "weights"


def mtlbench_home() -> Path:
    """mtlbench's cache: ``$MTLBENCH_HOME``, else ``$XDG_CACHE_HOME/mtlbench`` or ``~/.cache/mtlbench``."""
    if os.environ.get("MTLBENCH_HOME"):
        return Path(os.environ["MTLBENCH_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mtlbench"


def zoo_root(suite: str, *, shipped: bool = False) -> Path:
    """The folder of a suite's checkpoints: the local zoo's, or (``shipped``) mtlbench's own."""
    return (SHIPPED_ZOO if shipped else mtlbench_home() / "zoo") / suite


def defended_root(suite: str, defense: str, *, shipped: bool = False) -> Path:
    """The folder of a suite's checkpoints under the training defense ``defense``."""
    return zoo_root(suite, shipped=shipped) / "defended" / safe_name(defense)


def safe_name(text: str, *, keep: str = "._-") -> str:
    """``text`` as one file name: ASCII letters, digits and ``keep`` stay, every other character is ``_``."""
    return "".join(ch if (ch.isascii() and ch.isalnum()) or ch in keep else "_" for ch in text)
