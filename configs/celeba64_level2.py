"""CelebA 64×64, ladder level 2 (see mlem/models/ladder.py); all else from celeba64_base."""

import ml_collections

from configs import celeba64_base


def get_config() -> ml_collections.ConfigDict:
    config = celeba64_base.get_config()
    config.model.level = "celeba64_level2"
    return config
