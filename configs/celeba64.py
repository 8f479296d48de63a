"""The CelebA 64×64 ladder (DDPM / score_sde settings): one file, ``get_config(level)``.

    python -m train --config configs/celeba64.py:3 --workdir runs/celeba64/level3 \\
        --config.training.batch_size=64 --config.model.dtype=bfloat16

``configs/celeba64_levelK.py`` is the same config under the name users type
(``python -m train --config configs/celeba64_level3.py``).

Every level trains with the same data, SDE, optimiser and budget, so the excess held-out
loss measures capacity; levels differ only in ``model.level``.
"""

import ml_collections

from configs import train_base


def get_config(level: str = "5") -> ml_collections.ConfigDict:
    """Level ``level`` (1–5) of the ladder (``configs/celeba64.py:3`` on the command line), or
    ``gaussian``: the analytic bottom level ``gaussian_rank32`` (a one-pass fit,
    :mod:`mlem.train.gaussian_fit`)."""
    if level not in {*(str(k) for k in range(1, 6)), "gaussian"}:
        raise ValueError(f"configs/celeba64.py:LEVEL: LEVEL must be 1..5 or gaussian, "
                         f"got {level!r}")
    config = train_base.get_config()  # the score_sde settings at this scale
    config.seed = 42
    config.data.name = "celeba64"
    config.model.level = "gaussian_rank32" if level == "gaussian" else f"celeba64_level{level}"
    # eval: 16 × 256 = 4,096 of the 19,867 validation images
    return train_base.gaussian_fit(config) if level == "gaussian" else config
