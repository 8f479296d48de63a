"""Sampling and analysis of the CelebA 64×64 ladder (levels 1–5; GPU/TPU).

    python -m sample --method mlem --config configs/celeba64_sample.py --workdir runs/celeba64

The solvers a GPU user would run (``SOLVERS``, docs/solvers.md), each with ``--solver`` and
a grid (``--grid``): EM on the reverse SDE (``sde``, the paper's), Euler on the PF-ODE
(``ode``), DDIM (``ddim``, usually with ``--grid logsnr`` or ``quadratic``), DDPM
ancestral (``ancestral``), DPM-Solver++(2M) and its SDE variant (``dpmpp2m``,
``dpmpp2m-sde``, usually with ``--grid logsnr``) and EDM's Heun (``heun`` with ``--grid
karras``); the sweep takes ``--config.analysis.solver=...`` and ``--config.analysis.grid=...``.
``analysis.samplers`` (enabled below, after ``analysis.distributional``) compares the
cheapest single-level sampler of every kind with the cheapest multilevel one in FID-space
distance to the oracle and to the data.

Batches are split over all local devices (``sampling.batch_size`` and
``analysis.batch_size`` must be multiples of the device count). Defaults and the meaning of
every field: ``configs/sample_base.py``.
"""

import ml_collections

from configs import sample_base

REF_STEPS = 2048
SOLVERS = (("sde", "uniform"), ("ode", "uniform"), ("ddim", "logsnr"), ("ancestral", "uniform"),
           ("dpmpp2m", "logsnr"), ("dpmpp2m-sde", "logsnr"), ("heun", "karras"))


def get_config() -> ml_collections.ConfigDict:
    config = sample_base.get_config()
    config.levels = tuple(f"level{k}" for k in range(1, 6))
    config.train_configs = tuple(f"configs/celeba64.py:{k}" for k in range(1, 6))
    config.results_dir = "results/celeba64"

    s = config.sampling
    s.steps = 256
    s.path_steps = REF_STEPS
    s.num_samples = 1024
    s.batch_size = 256
    s.probs = (1.0, 0.5, 0.25, 0.125, 0.0625)
    s.top_evals = 4.0  # the schedule constant is chosen per ladder from this

    a = config.analysis
    a.ref_steps = REF_STEPS  # 4x the finest swept grid (512 steps)
    a.em_steps = (16, 32, 64, 128, 256, 512)
    a.mlem_steps = (32, 64, 128, 256, 512)
    a.top_evals = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
    a.realisations = 16
    a.selection_realisations = 8  # targets, envelopes, the headline variant, patterns
    a.timing_batch_size = 64  # seconds as deployed: this GPU config's batch
    a.schedules = ("variance", "constant")
    a.switch_times = (0.25, 0.5, 0.75)  # the baseline: a small level at high noise
    a.pattern_search = 15  # the paper's best-of-15 patterns, chosen on the selection batches
    a.pattern_steps = (256,)
    # The oracle framing (docs/design.md §3): level 5 on the 2048-step grid is the oracle;
    # EM at levels 1-4, ML-EM and switching on the prefix ladders 1-2, 1-3, 1-4, at targets
    # a decade above what level 4 alone reaches on the finest EM grid (no pilot run exists)
    a.prefix_tops = (2, 3, 4)
    a.oracle_target_ratios = (10.0, 5.0, 2.5, 1.6, 1.25)
    a.batch_size = 64
    a.variance_samples = 2048
    a.solver, a.grid = "sde", "uniform"  # one of SOLVERS per sweep
    # FID/KID features (docs/quality.md): set inception_weights (pytorch-fid's weights as an
    # npz) and reference (python -m analysis.reference_stats), or features = '' to skip.
    a.quality.features = "inception"
    a.quality.reference = "runs/celeba64/celeba64_train_inception.npz"  # make celeba-reference
    a.quality.kid_subsets = 100
    a.quality.bootstrap = 100
    # Distribution (docs/analysis.md): the oracle set, then every sampler users pick.
    a.distributional.enabled = True
    a.samplers.enabled = True
    a.samplers.grids = ("uniform", "quadratic", "logsnr", "karras")
    a.samplers.steps = (10, 20, 40, 80, 160)
    return config
