"""Sampling and analysis of the CelebA 64×64 ladder (levels 1–5; GPU/TPU).

    python -m sample --method mlem --config configs/celeba64_sample.py --workdir runs/celeba64

Batches are split over all local devices (``sampling.batch_size`` must be a multiple of the
device count). Everything not set here is as in ``configs/mnist_sample.py``.
"""

import ml_collections

from configs import mnist_sample

REF_STEPS = 1024


def get_config() -> ml_collections.ConfigDict:
    config = mnist_sample.get_config()
    config.levels = tuple(f"level{k}" for k in range(1, 6))
    config.train_configs = tuple(f"configs/celeba64_level{k}.py" for k in range(1, 6))
    config.results_dir = "results/celeba64"

    s = config.sampling
    s.steps = 256
    s.path_steps = REF_STEPS
    s.num_samples = 1024
    s.batch_size = 256
    s.probs = (1.0, 0.5, 0.25, 0.125, 0.0625)

    a = config.analysis
    a.ref_steps = REF_STEPS
    a.em_steps = (16, 32, 64, 128, 256, 512)
    a.mlem_steps = (32, 64, 128, 256, 512)
    a.num_samples = 1024
    a.batch_size = 256
    a.variance_samples = 2048
    return config
