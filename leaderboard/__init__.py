"""Static-HTML leaderboard generator: jinja2 templates, data in ``leaderboard.json`` beside the
pages, no network at view time (works from ``file://``)."""

from leaderboard.render import render_site

__all__ = ["render_site"]
