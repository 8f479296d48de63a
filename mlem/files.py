"""The project's files: reading JSON with errors that name the file, file digests, and PNG
image grids."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["file_sha256", "read_json", "save_grid"]


def read_json(path: str | Path, what: str = "file") -> Any:
    """``json.loads`` of ``path``; a malformed file is a one-line ``ValueError`` naming it
    (``what`` says what the file is, e.g. ``"schedule file"``)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{what} {path} is not valid JSON ({err}); fix or regenerate it"
                         ) from None


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_grid(images: np.ndarray, path: Path) -> None:
    """Write ``(n, H, W, C)`` images in ``[-1, 1]`` as one PNG grid of ``ceil(√n)`` columns."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), np.uint8)
    pixels = np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = pixels[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image  # the [train] extra; the core installs without it

    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)
