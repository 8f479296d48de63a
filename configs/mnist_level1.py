"""MNIST-5k 16×16, ladder level 1: ``configs/mnist.py:1`` under the name users type.

    python -m train --config configs/mnist_level1.py --workdir runs/mnist/level1
"""

import ml_collections

from configs import mnist


def get_config() -> ml_collections.ConfigDict:
    return mnist.get_config("1")
