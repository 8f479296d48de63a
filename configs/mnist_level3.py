"""MNIST-5k 16×16, ladder level 3: ``configs/mnist.py:3`` under the name users type.

    python -m train --config configs/mnist_level3.py --workdir runs/mnist/level3
"""

import ml_collections

from configs import mnist


def get_config() -> ml_collections.ConfigDict:
    return mnist.get_config("3")
