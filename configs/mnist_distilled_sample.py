"""Sampling and analysis of the distilled MNIST-5k ladder: the demo's top level (the same
``level4``), each lower level distilled from the level above it (``configs/mnist.py:KdT``,
docs/training.md).

    cp -r runs/mnist/level4 runs/mnist_distilled/level4   # or train it: configs/mnist.py:4
    python -m train --config configs/mnist.py:3d4 --workdir runs/mnist_distilled/level3
    python -m train --config configs/mnist.py:2d3 --workdir runs/mnist_distilled/level2
    python -m train --config configs/mnist.py:1d2 --workdir runs/mnist_distilled/level1
    python -m analysis.variance --config configs/mnist_distilled_sample.py \\
        --workdir runs/mnist_distilled --out results/mnist_distilled

``configs/mnist_distilled_sample.py:top`` distils every level from the top instead
(``runs/mnist_distilled_top``, ``results/mnist_distilled_top``). Measured with the demo's
budget (1,000 steps per level): the chain gives 7% lower ``V_2`` and ``V_3`` than distilling
from the top, in every time bin, and its teachers are cheaper to run. Every other setting is
``configs/mnist_own_sample.py``'s (the demo's own-ladder sweep).
"""

import ml_collections

from configs import mnist_own_sample

TEACHERS = {"top": (4, 4, 4), "above": (2, 3, 4)}  # teacher of levels 1, 2, 3


def get_config(teachers: str = "above") -> ml_collections.ConfigDict:
    if teachers not in TEACHERS:
        raise ValueError(f"configs/mnist_distilled_sample.py:TEACHERS: one of "
                         f"{sorted(TEACHERS)}, got {teachers!r}")
    config = mnist_own_sample.get_config()
    config.train_configs = (*(f"configs/mnist.py:{k}d{t}"
                              for k, t in enumerate(TEACHERS[teachers], start=1)),
                            "configs/mnist.py:4")
    suffix = "" if teachers == "above" else f"_{teachers}"
    config.results_dir = f"results/mnist_distilled{suffix}"
    return config
