"""The demo's own-ladder sweep alone: ``configs/mnist_sample.py`` without the oracle framing,
the distributional and the samplers stages, seconds timed on batches of 64. The ablation
and per-solver runs of docs/results (ablations.md, odes.md, samplers_pathwise.md) were made
with it (it is the demo's config as it stood before the demo gained those stages):

    python -m experiments.mnist_cpu --config configs/mnist_own_sample.py \\
        --out results/mnist_ddim --config.analysis.solver=ddim
"""

import ml_collections

from configs import mnist_sample, sample_base


def get_config() -> ml_collections.ConfigDict:
    config = mnist_sample.get_config()
    a, base = config.analysis, sample_base.get_config().analysis
    a.prefix_tops, a.oracle_targets = (), ()
    a.timing_batch_size = 64
    a.distributional = base.distributional  # off
    a.samplers = base.samplers  # off
    return config
