"""The CelebA 64×64 ladder (DDPM / score_sde settings): one file, ``get_config(level)``.

    python -m train --config configs/celeba64.py:3 --workdir runs/celeba64/level3 \\
        --config.training.batch_size=64 --config.model.dtype=bfloat16

``configs/celeba64_levelK.py`` is the same config under the name users type
(``python -m train --config configs/celeba64_level3.py``).

Every level trains with the same data, SDE, optimiser and budget, so the excess held-out
loss measures capacity; levels differ only in ``model.level``.
"""

import ml_collections
from ml_collections import config_dict


def get_config(level: str = "5") -> ml_collections.ConfigDict:
    """Level ``level`` (1–5) of the ladder (``configs/celeba64.py:3`` on the command line), or
    ``gaussian``: the analytic bottom level ``gaussian_rank32`` (a one-pass fit,
    :mod:`mlem.train.gaussian_fit`)."""
    if level not in {*(str(k) for k in range(1, 6)), "gaussian"}:
        raise ValueError(f"configs/celeba64.py:LEVEL: LEVEL must be 1..5 or gaussian, "
                         f"got {level!r}")
    config = ml_collections.ConfigDict()
    config.seed = 42

    config.data = data = ml_collections.ConfigDict()
    data.name = "celeba64"
    data.image_size = 64
    data.num_channels = 3
    data.source = "auto"  # 'auto' = local_path if set, else tfds; or 'tfds' | 'local'
    data.data_dir = config_dict.placeholder(str)  # tfds data_dir (None: ~/tensorflow_datasets)
    data.local_path = config_dict.placeholder(str)  # img_align_celeba.zip or extracted folder
    data.random_flip = True

    config.model = model = ml_collections.ConfigDict()
    model.level = "gaussian_rank32" if level == "gaussian" else f"celeba64_level{level}"
    model.dropout = 0.1
    model.dtype = "float32"  # compute dtype; 'bfloat16' on GPU/TPU (params stay float32)

    config.sde = sde = ml_collections.ConfigDict()
    sde.beta_min = 0.1
    sde.beta_max = 20.0
    sde.t_min = 1e-3

    config.distill = distill = ml_collections.ConfigDict()
    distill.teacher_workdir = ""  # '' = no teacher; relative: a sibling of --workdir
    distill.weight = 0.0  # w: loss = (1 − w)·‖ε̂ − ε‖² + w·‖ε̂ − ε̂_teacher‖² (mlem.train.distill)
    distill.teacher_step = config_dict.placeholder(int)  # recorded by training, not set
    distill.teacher_param_sha256 = config_dict.placeholder(str)  # recorded by training

    config.optim = optim = ml_collections.ConfigDict()
    optim.learning_rate = 2e-4
    optim.warmup_steps = 5000
    optim.weight_decay = 0.0
    optim.grad_clip = 1.0
    optim.b1 = 0.9
    optim.b2 = 0.999

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128
    training.num_steps = 300_000
    training.ema_decay = 0.9999
    training.log_every = 100
    training.eval_every = 5000
    training.checkpoint_every = 5000
    training.keep_checkpoints = 3
    training.sample_every = 25_000
    training.num_sample_images = 64

    config.eval = evaluation = ml_collections.ConfigDict()
    evaluation.batch_size = 256  # 16 × 256 = 4,096 of the 19,867 validation images
    evaluation.num_batches = 16

    config.wandb = wandb = ml_collections.ConfigDict()
    wandb.mode = "offline"  # 'online' to sync, 'disabled' to skip; $WANDB_MODE overrides
    wandb.project = "mlem"
    wandb.entity = config_dict.placeholder(str)
    if level == "gaussian":
        config.training.num_steps = 1  # the one-pass fit (mlem.train.gaussian_fit.FIT_STEP)
    return config
