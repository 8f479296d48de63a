"""Sampling and analysis of the MNIST-5k CPU ladder (``make demo``); the other sample configs
override this one.

    python -m sample --method mlem --config configs/mnist_sample.py --workdir runs/mnist
    python -m sample --method em --em_level 4 --steps 128 --config configs/mnist_sample.py \\
        --workdir runs/mnist

``levels`` are subdirectories of ``--workdir`` (cheapest first), each trained with the
matching entry of ``train_configs``. The Brownian path of a sample batch lives on a grid of
``sampling.path_steps`` steps, so every ``steps`` dividing it shares the same path
(DESIGN.md §3); it equals ``analysis.ref_steps``, the reference grid of the cost–error sweep.
"""

import ml_collections

REF_STEPS = 256


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.levels = ("level1", "level2", "level3", "level4")
    config.train_configs = tuple(f"configs/mnist_level{k}.py" for k in range(1, 5))
    config.results_dir = "results/mnist_cpu"  # analysis output (--out default)

    config.sampling = s = ml_collections.ConfigDict()
    s.method = "mlem"  # 'mlem' | 'em'
    s.steps = 32  # also the operating point of the sweep (EM at the top level, 32 steps)
    s.path_steps = REF_STEPS  # grid of the shared Brownian path; steps must divide it
    s.num_samples = 64
    s.batch_size = 64  # split over all local devices: a multiple of the device count
    s.seed = 0
    s.em_level = -1  # 1-based level for --method em; -1 = the top level K
    s.schedule = "constant"  # 'constant' | 'variance' | 'file'
    s.probs = (1.0, 0.5, 0.25, 0.125)  # constant schedule: p_k per level, p_1 = 1
    # Variance schedule p_k(τ) = min(1, c·sqrt(V_k(τ)/C_k)), V_k = E‖fᵏ − fᵏ⁻¹‖² per sample,
    # C_k in FLOPs. On this ladder c = 30 gives p ≈ (1, 0.35–1, 0.1–0.3, 0.03–0.08) over τ.
    s.c = 30.0
    s.variance_file = ""  # '' = <results_dir>/variance/variances.json
    s.schedule_file = ""  # schedule 'file': JSON of mlem.schedules.save

    config.analysis = a = ml_collections.ConfigDict()
    a.ref_steps = REF_STEPS  # N_ref: the finest grid (reference: top level, EM)
    a.em_steps = (4, 8, 16, 32, 64, 128)  # each divides ref_steps
    a.mlem_steps = (8, 16, 32, 64)
    a.schedules = ("variance",)  # ML-EM schedules of the sweep: variance | constant | dyadic
    a.c_values = (30.0, 100.0, 300.0)  # c <= 10 never reaches past level 1 here
    a.seeds = 3
    a.num_samples = 64
    a.batch_size = 64
    a.num_time_bins = 16
    a.variance_samples = 256
    a.gamma_bootstrap = 1000
    a.operating_point = "auto"  # an MSE value, or 'auto'
    return config
