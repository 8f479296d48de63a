"""Reading the project's JSON files with errors that name the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_json(path: str | Path, what: str = "file") -> Any:
    """``json.loads`` of ``path``; a malformed file is a one-line ``ValueError`` naming it
    (``what`` says what the file is, e.g. ``"schedule file"``)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err}); fix or regenerate it"
                         ) from None
