"""Generated images for tests and the tiny config: smooth random colour blobs from a seed.

Not the ML-EM synthetic SDE testbed (that is :mod:`mlem.testbed`). Each image is a
random background plus three Gaussian blobs (random centre, width and colour), clipped to
[-1, 1]: smooth, varied and cheap, so a tiny UNet can learn something in a few steps.
"""

from __future__ import annotations

import numpy as np

from mlem.data.pipeline import ArraySource

__all__ = ["NUM_BLOBS", "SEEDS", "SIZES", "blobs", "synthetic_source"]

SIZES = {"train": 1024, "heldout": 256}
SEEDS = {"train": 0, "heldout": 1}
NUM_BLOBS = 3


def blobs(num: int, image_size: int, num_channels: int, seed: int) -> np.ndarray:
    """float32 ``(num, S, S, C)`` in [-1, 1], a pure function of the arguments."""
    if num <= 0 or image_size <= 0 or num_channels <= 0:
        raise ValueError(f"blobs: num, image_size, num_channels must be positive, got "
                         f"{num}, {image_size}, {num_channels}")
    rng = np.random.default_rng(seed)
    grid = (np.arange(image_size) + 0.5) / image_size
    centres = rng.uniform(0.2, 0.8, size=(num, NUM_BLOBS, 2))
    widths = rng.uniform(0.08, 0.25, size=(num, NUM_BLOBS))
    colours = rng.uniform(-1.5, 1.5, size=(num, NUM_BLOBS, num_channels))
    background = rng.uniform(-0.8, 0.0, size=(num, 1, 1, num_channels))
    # Separable Gaussians: bump_k(y, x) = exp(-dy²/2w²) · exp(-dx²/2w²).
    inv = 1.0 / (2.0 * widths[..., None] ** 2)  # (num, K, 1)
    rows = np.exp(-((grid - centres[..., 0:1]) ** 2) * inv).astype(np.float32)  # (num, K, S)
    cols = np.exp(-((grid - centres[..., 1:2]) ** 2) * inv).astype(np.float32)
    images = np.empty((num, image_size, image_size, num_channels), np.float32)
    images[...] = background
    for k in range(NUM_BLOBS):
        bump = rows[:, k, :, None] * cols[:, k, None, :]  # (num, S, S)
        images += bump[..., None] * colours[:, k, None, None, :].astype(np.float32)
    return np.clip(images, -1.0, 1.0, out=images)


def synthetic_source(data_config, split: str) -> ArraySource:
    """``config.data`` (image_size, num_channels) → :class:`ArraySource` of fixed blobs
    (1,024 train images from seed 0, 256 held-out from seed 1)."""
    if split not in SIZES:
        raise ValueError(f"split: synthetic has {list(SIZES)}, got {split!r}")
    return ArraySource(blobs(SIZES[split], data_config.image_size, data_config.num_channels,
                             SEEDS[split]))
