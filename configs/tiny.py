"""A config for tests: tiny UNet on generated 8×8×3 blobs, a few steps, wandb disabled.

Built on mnist_base (same schema); ``--config.model.level=tiny_level2`` picks the other
tiny level.
"""

import ml_collections

from configs import mnist_base


def get_config() -> ml_collections.ConfigDict:
    config = mnist_base.get_config()
    config.data.name = "synthetic"
    config.data.image_size = 8
    config.data.num_channels = 3
    config.data.random_flip = True
    config.model.level = "tiny_level1"

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
