"""Static-HTML leaderboard generator: jinja2 templates, matplotlib SVG plots, the numbers in
``leaderboard.json`` beside the pages, no network at view time (works from ``file://``)."""

from leaderboard.aggregate import build_board
from leaderboard.render import render_board, render_leaderboard

__all__ = ["build_board", "render_board", "render_leaderboard"]
