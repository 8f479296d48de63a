"""Regenerate the tables of the results pages (docs/results/*.md) from their commands.

    python -m analysis.pages docs/results/*.md

A table sits between ``<!-- report: COMMAND -->`` and ``<!-- /report -->``. Each block whose
COMMAND is ``python -m analysis.report DIR ...`` is replaced by what that command prints
now, when every ``DIR`` exists here; any other block (another command, or results that are
not on this machine) is left as it is and named. Nothing else in a page changes.
"""

from __future__ import annotations

import re
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from analysis import report

BLOCK = re.compile(r"(<!-- report: (?P<cmd>.+?) -->\n)(?P<body>.*?)(<!-- /report -->)", re.S)
PREFIX = ["python", "-m", "analysis.report"]


def update(text: str) -> tuple[str, list[str], list[str]]:
    """``(new text, commands regenerated, commands left as they were)`` of one page."""
    done, kept = [], []

    def replace(match: re.Match) -> str:
        words = shlex.split(match["cmd"])
        dirs = words[len(PREFIX):]
        if words[:len(PREFIX)] != PREFIX or not dirs or not all(
                (Path(d) / "summary.json").is_file() for d in dirs):
            kept.append(match["cmd"])
            return match[0]
        done.append(match["cmd"])
        return f"{match[1]}{report.report(dirs)}{match[4]}"

    return BLOCK.sub(replace, text), done, kept


def main(argv: Sequence[str]) -> None:
    if not argv:
        sys.exit("error: give the pages to update: python -m analysis.pages docs/results/*.md")
    for name in argv:
        path = Path(name)
        text, done, kept = update(path.read_text())
        path.write_text(text)
        for cmd in done:
            print(f"{path}: regenerated `{cmd}`")
        for cmd in kept:
            print(f"{path}: left as it is `{cmd}`")


if __name__ == "__main__":
    main(sys.argv[1:])
