"""Sampling and analysis of the distilled MNIST-5k ladder: the demo's top level (the same
``level4``), lower levels distilled from it (``configs/mnist.py:KdT``, docs/training.md).

    cp -r runs/mnist/level4 runs/mnist_distilled/level4   # or train it: configs/mnist.py:4
    python -m train --config configs/mnist.py:3d4 --workdir runs/mnist_distilled/level3
    ...
    python -m analysis.variance --config configs/mnist_distilled_sample.py \\
        --workdir runs/mnist_distilled --out results/mnist_distilled

``configs/mnist_distilled_sample.py:above`` is the chain instead (level K from level K+1),
in ``runs/mnist_distilled_above``. Every other setting is ``configs/mnist_sample.py``'s.
"""

import ml_collections

from configs import mnist_sample

TEACHERS = {"top": (4, 4, 4), "above": (2, 3, 4)}  # teacher of levels 1, 2, 3


def get_config(teachers: str = "top") -> ml_collections.ConfigDict:
    if teachers not in TEACHERS:
        raise ValueError(f"configs/mnist_distilled_sample.py:TEACHERS: one of "
                         f"{sorted(TEACHERS)}, got {teachers!r}")
    config = mnist_sample.get_config()
    config.train_configs = (*(f"configs/mnist.py:{k}d{t}"
                              for k, t in enumerate(TEACHERS[teachers], start=1)),
                            "configs/mnist.py:4")
    suffix = "" if teachers == "top" else f"_{teachers}"
    config.results_dir = f"results/mnist_distilled{suffix}"
    return config
