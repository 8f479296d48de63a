"""The training schema every ladder config overrides (DDPM / score_sde settings at CelebA
scale): ``configs/celeba64.py`` and ``configs/mnist.py`` set only what differs.

Every field is defined here once, with its meaning; a dataset config never adds one.
"""

import ml_collections
from ml_collections import config_dict


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = data = ml_collections.ConfigDict()
    data.name = ""  # 'celeba64' | 'mnist5k' | 'synthetic' (generated blobs, for tests)
    data.image_size = 64
    data.num_channels = 3
    data.source = "auto"  # CelebA: 'auto' = local_path if set, else tfds; or 'tfds' | 'local'
    data.data_dir = config_dict.placeholder(str)  # tfds data_dir (None: ~/tensorflow_datasets)
    data.local_path = config_dict.placeholder(str)  # img_align_celeba.zip or extracted folder
    data.random_flip = True

    config.model = model = ml_collections.ConfigDict()
    model.level = ""  # a name of mlem.models.registry (the UNet size of this level)
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
    evaluation.batch_size = 256
    evaluation.num_batches = 16

    config.wandb = wandb = ml_collections.ConfigDict()
    wandb.mode = "offline"  # 'online' to sync, 'disabled' to skip; $WANDB_MODE overrides
    wandb.project = "mlem"
    wandb.entity = config_dict.placeholder(str)
    return config


def gaussian_fit(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config`` as the analytic Gaussian bottom level: a one-pass fit
    (:data:`mlem.train.gaussian_fit.FIT_STEP`)."""
    config.training.num_steps = 1
    return config
