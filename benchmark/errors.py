"""Errors a user can cause (bad input, missing files). The CLI prints their message and exits
with status 2 instead of a traceback; anything else is a bug of ours and keeps its traceback."""

from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An error caused by user input; its message says what is wrong and what to do next."""
