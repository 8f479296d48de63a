"""MNIST-5k 16×16, ladder level 3 (see mlem/models/ladder.py); all else from mnist_base."""

import ml_collections

from configs import mnist_base


def get_config() -> ml_collections.ConfigDict:
    config = mnist_base.get_config()
    config.model.level = "mnist_level3"
    return config
