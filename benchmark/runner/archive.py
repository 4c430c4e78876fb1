"""A bundle's files read in place, bounded: a directory, or a zip that is never extracted.

A bundle is third-party input. Reading it must not cost more than its grid can need: only plain
files (no links, no member pointing outside the bundle, no name twice), each read with a byte
limit the caller derives from the manifest's grid, so a small zip cannot expand into gigabytes,
and JSON that nests too deeply is a message, not a ``RecursionError``.
"""

from __future__ import annotations

import json
import stat
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from benchmark.runner.bundle import BundleError

__all__ = ["Archive", "open_archive"]


class Archive:
    """A bundle's files read in place (a directory, or a zip that is never extracted): their
    names and sizes, and their bytes read with a bound."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        self.sizes: dict[str, int] = {}
        if path.is_dir():
            self._list_dir()
        elif path.is_file():
            self._list_zip()
        else:
            raise BundleError(f"bundle {path} does not exist")

    def _list_dir(self) -> None:
        for entry in sorted(self.path.rglob("*")):
            rel = entry.relative_to(self.path).as_posix()
            if entry.is_symlink():
                raise BundleError(f"bundle {self.path}: {rel} is a link; a bundle holds plain files only")
            if entry.is_file():
                self.sizes[rel] = entry.stat().st_size
            elif not entry.is_dir():
                raise BundleError(f"bundle {self.path}: {rel} is not a plain file")

    def _list_zip(self) -> None:
        if not zipfile.is_zipfile(self.path):
            raise BundleError(f"bundle {self.path} is neither a directory nor a .zip file")
        try:
            self.zip = zipfile.ZipFile(self.path)
            infos = self.zip.infolist()
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            raise BundleError(f"bundle {self.path}: not a readable zip file ({exc})") from None
        for info in infos:
            name = info.filename
            parts = Path(name).parts
            if name.startswith("/") or Path(name).is_absolute() or ".." in parts or "\\" in name:
                raise BundleError(f"bundle {self.path}: member {name!r} points outside the bundle")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise BundleError(f"bundle {self.path}: member {name!r} is a link; a bundle holds plain files only")
            if info.is_dir():
                continue
            if name in self.sizes:
                raise BundleError(f"bundle {self.path}: member {name!r} appears twice")
            self.sizes[name] = info.file_size

    def read(self, name: str, limit: int) -> bytes:
        size = self.sizes.get(name)
        if size is None:
            raise BundleError(f"bundle {self.path}: no {name}")
        if size > limit:
            raise BundleError(f"bundle {self.path}: {name} is {size:,} bytes, more than the {limit:,} its grid "
                              "can need")
        try:
            if self.zip is not None:
                with self.zip.open(name) as f:
                    data = f.read(limit + 1)
            else:
                with open(self.path / name, "rb") as f:
                    data = f.read(limit + 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
            raise BundleError(f"bundle {self.path}: {name} cannot be read ({exc})") from None
        if len(data) > limit:
            raise BundleError(f"bundle {self.path}: {name} holds more than the {limit:,} bytes it declares")
        return data

    def json(self, name: str, limit: int) -> Any:
        try:
            return json.loads(self.read(name, limit))
        except ValueError as exc:
            raise BundleError(f"bundle {self.path}: {name} is not valid JSON ({exc})") from None
        except RecursionError:
            raise BundleError(f"bundle {self.path}: {name} nests its values too deeply to be a bundle's") from None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


@contextmanager
def open_archive(path: Path) -> Iterator[Archive]:
    reader = Archive(path)
    try:
        yield reader
    finally:
        reader.close()
