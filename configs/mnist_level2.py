"""MNIST-5k 16×16, ladder level 2: ``configs/mnist.py:2`` under the name users type.

    python -m train --config configs/mnist_level2.py --workdir runs/mnist/level2
"""

import ml_collections

from configs import mnist


def get_config() -> ml_collections.ConfigDict:
    return mnist.get_config("2")
