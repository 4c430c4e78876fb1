"""The ``mtlbench`` command (also ``python -m benchmark``).

Errors a user can cause (:class:`benchmark.errors.UserError`) print one message and exit with
status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.text import Text

from benchmark.cli import explore, records, report, run, zoo
from benchmark.cli.common import EXIT_INTERRUPTED, EXIT_USAGE, err_console
from benchmark.errors import UserError
from benchmark.version import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mtlbench", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"mtlbench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for group in (explore, zoo, run, report, records):
        group.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except UserError as exc:
        err_console.print(Text.assemble(("error:", "bold red"), f" {exc}"))
        return EXIT_USAGE
    except KeyboardInterrupt:
        err_console.print("interrupted; finished results are kept")
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
