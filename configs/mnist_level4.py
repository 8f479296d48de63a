"""MNIST-5k 16×16, ladder level 4: ``configs/mnist.py:4`` under the name users type.

    python -m train --config configs/mnist_level4.py --workdir runs/mnist/level4
"""

import ml_collections

from configs import mnist


def get_config() -> ml_collections.ConfigDict:
    return mnist.get_config("4")
