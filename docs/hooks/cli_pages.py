"""mkdocs hook: one page per `mtlbench` command, generated from the parser at build time (the help
text is the program's own, never copied by hand), and the index page that links them."""

from __future__ import annotations

import argparse
import os

from mkdocs.structure.files import File

#: the width argparse wraps the help text at (the pages do not depend on the terminal that builds them)
WIDTH = "100"


def _commands() -> list[tuple[str, argparse.ArgumentParser]]:
    from benchmark.cli import build_parser

    def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    out = []
    for name, parser in subcommands(build_parser()).items():
        inner = subcommands(parser)
        if inner:
            out += [(f"{name} {action}", p) for action, p in inner.items()]
        else:
            out.append((name, parser))
    return out


def _slug(command: str) -> str:
    return command.replace(" ", "-")


def on_files(files, config):
    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        commands = [(name, parser.format_help(), parser.description or "") for name, parser in _commands()]
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    rows = []
    for name, text, _ in commands:
        page = f"reference/cli/{_slug(name)}.md"
        files.append(File.generated(config, page, content=f"# mtlbench {name}\n\n```text\n{text}```\n"))
        summary = next((line.strip() for line in text.split("\n\n", 2)[1:2] if line.strip()), "")
        rows.append(f"| [`mtlbench {name}`](cli/{_slug(name)}.md) | {summary.splitlines()[0] if summary else ''} |")
    index = ("# The command line\n\nEvery `mtlbench` command, its help generated from the program's own parser "
             "when the documentation is built.\n\n| command | what it does |\n|---|---|\n" + "\n".join(rows) + "\n")
    files.append(File.generated(config, "reference/cli.md", content=index))
    return files
