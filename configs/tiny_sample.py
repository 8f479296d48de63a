"""Sampling and analysis of the two tiny test levels (``configs/tiny.py``): the test suite's
ladder, trained by the ``tiny_ladder`` fixture of ``tests/conftest.py``."""

import ml_collections

from configs import sample_base


def get_config() -> ml_collections.ConfigDict:
    config = sample_base.get_config()
    config.levels = ("level1", "level2")
    config.train_configs = tuple(f"configs/tiny.py:{k}" for k in (1, 2))
    config.results_dir = "results/tiny"

    s = config.sampling
    s.steps = 4
    s.path_steps = 16
    s.num_samples = 4
    s.batch_size = 4
    s.probs = (1.0, 0.5)

    a = config.analysis
    a.ref_steps = 16
    a.em_steps = (2, 4)
    a.mlem_steps = (4,)
    a.top_evals = (0.5, 2.0)
    a.switch_times = (0.5,)
    a.realisations = 3
    a.selection_realisations = 2
    a.pattern_search = 3
    a.pattern_steps = (4,)
    a.batch_size = 4
    a.speedup_bootstrap = 50
    a.timing_batch_size = 4
    a.num_time_bins = 4
    a.variance_samples = 8
    a.gamma_bootstrap = 50
    return config
