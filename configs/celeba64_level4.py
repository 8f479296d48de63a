"""CelebA 64×64, ladder level 4: ``configs/celeba64.py:4`` under the name users type.

    python -m train --config configs/celeba64_level4.py --workdir runs/celeba64/level4
"""

import ml_collections

from configs import celeba64


def get_config() -> ml_collections.ConfigDict:
    return celeba64.get_config("4")
