"""File names of the site's pages and images, in one place (the render and the inspection pages)."""

from __future__ import annotations

import zlib

from benchmark.paths import safe_name

__all__ = ["slug"]


def slug(name: str) -> str:
    """A file-name-safe version of ``name`` (a hash keeps distinct names distinct)."""
    safe = safe_name(name)
    return safe if safe == name else f"{safe}-{zlib.crc32(name.encode()):08x}"
