"""A config for tests: tiny UNet on generated 8×8×3 blobs, a few steps, wandb disabled.

Built on configs/mnist.py (same schema); ``configs/tiny.py:2`` is the other tiny level.
"""

import ml_collections

from configs import mnist


def get_config(level: str = "1") -> ml_collections.ConfigDict:
    if level not in ("1", "2"):
        raise ValueError(f"configs/tiny.py:LEVEL: LEVEL must be 1 or 2, got {level!r}")
    config = mnist.get_config()
    config.data.name = "synthetic"
    config.data.image_size = 8
    config.data.num_channels = 3
    config.data.random_flip = True
    config.model.level = f"tiny_level{level}"

    config.optim.warmup_steps = 2
    training = config.training
    training.batch_size = 8
    training.num_steps = 4
    training.ema_decay = 0.9
    training.log_every = 1
    training.eval_every = 2
    training.checkpoint_every = 2
    training.keep_checkpoints = 2
    training.sample_every = 4
    training.num_sample_images = 4

    config.eval.batch_size = 8
    config.eval.num_batches = 2
    config.wandb.mode = "disabled"
    return config
