"""Render a site from a JSON-able report: the numbers on the page are the numbers in
``leaderboard.json`` next to it."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

__all__ = ["render_site"]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "–"
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def _env() -> Environment:
    env = Environment(loader=PackageLoader("leaderboard", "templates"),
                      autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    return env


def render_site(report: dict[str, Any], out_dir: str | Path, *, assets: dict[str, Path] | None = None) -> Path:
    """Write ``index.html`` and ``leaderboard.json`` for ``report`` into ``out_dir``; copy
    ``assets`` (name -> file, e.g. a preview PNG) beside them. Returns the index path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, path in (assets or {}).items():
        if Path(path).resolve() != (out / name).resolve():
            shutil.copyfile(path, out / name)
    (out / "leaderboard.json").write_text(json.dumps(report, indent=2, allow_nan=True))
    html = _env().get_template("index.html.j2").render(report=report, assets=sorted(assets or {}))
    index = out / "index.html"
    index.write_text(html, encoding="utf-8")
    return index
