"""CelebA 64×64, ladder level 1: ``configs/celeba64.py:1`` under the name users type.

    python -m train --config configs/celeba64_level1.py --workdir runs/celeba64/level1
"""

import ml_collections

from configs import celeba64


def get_config() -> ml_collections.ConfigDict:
    return celeba64.get_config("1")
