"""Datasets (CelebA 64×64, embedded MNIST-5k, synthetic blobs) and the training pipeline.

    source = data.get_source(config.data, split)   # len(source); source[idx] → (n, H, W, C)
    pipeline = data.TrainPipeline(source, batch_size, seed, random_flip)
    pipeline.batch(step); pipeline.iterate(start_step)
"""

from __future__ import annotations

from mlem.data.blobs import synthetic_source
from mlem.data.celeba import DatasetNotFoundError, celeba_source
from mlem.data.mnist import mnist_source
from mlem.data.pipeline import ArraySource, BatchIterator, Source, TrainPipeline, heldout_batches

__all__ = ["ArraySource", "BatchIterator", "DatasetNotFoundError", "Source", "TrainPipeline",
           "get_source", "heldout_batches", "NUM_CHANNELS"]

_SOURCES = {"celeba64": celeba_source, "mnist5k": mnist_source, "synthetic": synthetic_source}
NUM_CHANNELS = {"celeba64": 3, "mnist5k": 1}  # synthetic takes any


def get_source(data_config, split: str) -> Source:
    """The ``split`` ('train' | 'heldout'; CelebA also 'test') of ``config.data.name``.

    Returns a source: ``len(source)`` and ``source[idx]`` → float32 ``(n, H, W, C)`` in
    [-1, 1], preprocessed and unflipped. Missing CelebA raises :class:`DatasetNotFoundError`.
    """
    name = data_config.name
    if name not in _SOURCES:
        raise ValueError(f"config.data.name: unknown dataset {name!r}; known: {sorted(_SOURCES)}")
    channels = NUM_CHANNELS.get(name, data_config.num_channels)
    if data_config.num_channels != channels:
        raise ValueError(f"config.data.num_channels: {name} has {channels} channels, got "
                         f"{data_config.num_channels}")
    if not isinstance(data_config.image_size, int) or data_config.image_size <= 0:
        raise ValueError(f"config.data.image_size: must be a positive int, got "
                         f"{data_config.image_size!r}")
    return _SOURCES[name](data_config, split)
