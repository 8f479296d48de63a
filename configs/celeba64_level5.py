"""CelebA 64×64, ladder level 5: ``configs/celeba64.py:5`` under the name users type.

    python -m train --config configs/celeba64_level5.py --workdir runs/celeba64/level5
"""

import ml_collections

from configs import celeba64


def get_config() -> ml_collections.ConfigDict:
    return celeba64.get_config("5")
