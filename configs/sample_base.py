"""Defaults shared by every sample/analysis config; ``configs/<dataset>_sample.py`` overrides
the ladder, the grids and the sizes.

``levels`` are subdirectories of ``--workdir`` (cheapest first), each trained with the
matching entry of ``train_configs``. The Brownian path of a sample lives on a grid of
``sampling.path_steps`` steps, so every ``steps`` dividing it shares the same path
(docs/design.md §3).

The ML-EM sweep of ``analysis.cost_error`` is set by a dimensionless knob, ``top_evals``:
the expected number of evaluations of the top level in one solve (``Σ_n p_K(τ_n)``). It is
turned into the schedule constant ``c`` for each ladder, grid and cost model, so the same
values mean the same thing on MNIST and on CelebA.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.levels = ()  # level subdirectories of --workdir, cheapest first
    config.train_configs = ()  # one training config per level
    config.results_dir = ""  # analysis output (--out default)
    # Load each level's newest checkpoint or stop; True (--allow_older_checkpoints) falls back
    # to the newest readable step, which every output records.
    config.allow_older_checkpoints = False

    config.sampling = s = ml_collections.ConfigDict()
    s.method = "mlem"  # 'mlem' | 'em' | 'switch'
    # --method switch: level switch_level (1-based) on the steps before switch_at of the solver
    # time (high noise), the top level after (the deterministic baseline)
    s.switch_level = 1
    s.switch_at = 0.5
    # Update rule (docs/solvers.md): 'sde' (EM on the reverse SDE) | 'ode' (Euler on the
    # probability-flow ODE) | 'ddim' | 'ancestral' | 'dpmpp2m' | 'dpmpp2m-sde' | 'heun'; time
    # grid: 'uniform' | 'quadratic' | 'logsnr' | 'karras' (EDM's ρ = 7) | 'karras:ρ'.
    s.solver = "sde"
    s.grid = "uniform"
    s.steps = 32  # also the operating point of the sweep (EM at the top level, this many steps)
    s.path_steps = 256  # grid of the shared Brownian path; steps must divide it
    s.num_samples = 64
    s.batch_size = 64  # split over all local devices: a multiple of the device count
    s.seed = 0
    s.em_level = -1  # 1-based level for --method em; -1 = the top level K
    s.schedule = "constant"  # 'constant' | 'variance' | 'file'
    s.probs = ()  # constant schedule: p_k per level, p_1 = 1
    # Variance schedule p_k(τ) = min(1, c·sqrt(V_k(τ)/C_k)), V_k = E‖fᵏ − fᵏ⁻¹‖² per sample;
    # C_k priced in seconds per call measured now ('time', what a user pays) or in FLOPs.
    s.cost_model = "time"  # 'time' | 'flops'
    s.c = 30.0
    s.top_evals = 0.0  # > 0: choose c so that the top level runs this often per solve
    s.variance_file = ""  # '' = <results_dir>/variance/variances.json
    s.schedule_file = ""  # schedule 'file': JSON of mlem.schedules.save

    config.analysis = a = ml_collections.ConfigDict()
    a.ref_steps = 256  # N_ref: the reference grid, >= 4x the finest swept grid
    # Update rule and time grid of every solve of the sweep, the reference included
    # (docs/solvers.md): a solver of sampling.solver above; a grid of sampling.grid.
    a.solver = "sde"
    a.grid = "uniform"
    a.em_steps = (4, 8, 16, 32, 64)  # each divides ref_steps
    a.mlem_steps = (8, 16, 32, 64)
    a.schedules = ("variance",)  # ML-EM schedules of the sweep: variance|constant|dyadic|learned
    a.learned_schedule = ""  # schedule 'learned': a file of python -m analysis.learn_probs
    a.cost_models = ("flops", "time")  # what each schedule's increment costs C_k are priced in
    a.top_evals = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)  # expected top-level evaluations per solve
    a.top_prob_range = (0.0, 0.5)  # ... swept where top_evals / steps lies in this range
    # The baseline a user would pick instead: EM with level k (< K) before this fraction of
    # the solver time (high noise) and the top level after it, on the em_steps grids.
    a.switch_times = (0.25, 0.5, 0.75)
    # Pattern search (docs/patterns.md): per ML-EM point of schedules[0] (FLOP-priced) on the
    # pattern_steps grids, draw this many fixed patterns, keep the best on the selection
    # realisations, report it on the evaluation ones (curve 'mlem-pattern'); 0 = off.
    a.pattern_search = 0
    a.pattern_steps = ()
    a.realisations = 8  # independent batches (noise, paths, draws): the bootstrap's units
    # Further batches R…R+S−1 (>= 1) on which everything is chosen and never judged: the
    # operating MSE (the target), each method's configurations (its envelope), the headline's
    # ML-EM variant, searched patterns (docs/design.md §10).
    a.selection_realisations = 4
    a.batch_size = 16  # samples per realisation
    # The oracle framing (docs/design.md §3, the paper's experiment): ML-EM and switching also
    # run on the prefix ladders 1..k for each k here (2 <= k < K); with oracle_targets (MSEs
    # to the top level on the reference grid, predeclared) the methods that use only levels
    # below the top are compared at those targets (cost to reach ε, exponents).
    a.prefix_tops = ()
    a.oracle_targets = ()
    # ... or, without a pilot run, multiples of the selection realisations' MSE of EM with
    # level K-1 on the finest EM grid (the best the levels below the oracle do alone)
    a.oracle_target_ratios = ()
    # Headline targets, predeclared: multiples of the operating MSE (1.0 = the operating point).
    a.target_ratios = (4.0, 2.0, 1.0, 0.5)
    a.speedup_bootstrap = 2000  # resamples of the realisations for every speedup interval
    # Seconds as deployed: each configuration timed on a batch of this many samples with its
    # increments on its own grid, the median of timing_repeats (>= 3) calls after a warm-up.
    a.timing_batch_size = 64
    a.timing_repeats = 3
    a.num_time_bins = 16
    a.variance_samples = 256
    a.gamma_bootstrap = 1000
    a.operating_point = "auto"  # an MSE value, or 'auto' (EM, top level, sampling.steps steps)
    # Sample quality beside MSE (docs/quality.md): KID and FD of every solve of the sweep.
    a.quality = q = ml_collections.ConfigDict()
    q.features = ""  # '' (off) | 'classifier' (MNIST-5k) | 'inception' (FID Inception-v3)
    q.classifier_steps = 1500  # 'classifier': trained once, cached in <workdir>/classifier
    q.inception_weights = ""  # 'inception': pytorch-fid's weights as an npz (docs/quality.md)
    q.reference = ""  # 'inception': npz of python -m analysis.reference_stats (mu, sigma, features)
    q.kid_subsets = 50  # KID: the mean over this many subsets ...
    q.kid_subset_size = 1000  # ... of min(this, samples, data) rows of each set
    q.bootstrap = 200  # resamples of the realisations for every KID/FD interval
    # Distributional error at predeclared targets (analysis.distributional, docs/analysis.md):
    # independent sample sets of each method's candidate configurations and of the oracle,
    # judged in FD (the quality features) and pixel moments; targets = ratios × the floor
    # (oracle against an independent oracle set). Off by default: its oracle set costs
    # 2 × oracle_realisations × batch_size solves on the reference grid.
    a.distributional = d = ml_collections.ConfigDict()
    d.enabled = False
    d.realisations = 16  # evaluation batches per configuration (the bootstrap's units)
    d.selection_realisations = 4  # batches per configuration that choose each method's path
    d.batch_size = 64
    d.oracle_realisations = 16  # batches of the oracle set, and as many of the floor set
    # The oracle set's grid (0: ref_steps) and the finest candidate grid compared (0: every
    # grid of the sweep); the oracle's must be at least 4x finer than every compared grid.
    d.oracle_steps = 0
    d.max_steps = 0
    d.target_ratios = (32.0, 16.0, 8.0, 4.0, 2.0)  # × the floor, predeclared
    d.curves = ("em", "mlem-variance-flops", "switch")
    d.bootstrap = 1000
    d.kid_subsets = 10  # KID of every candidate (reported, never a target): subsets ...
    d.kid_subset_size = 500  # ... of this many rows ...
    d.kid_bootstrap = 30  # ... and resamples of its batches for the interval
    # The samplers users pick (analysis.samplers, docs/solvers.md): every solver × grid ×
    # steps, single-level (each level) and multilevel (each prefix ladder), the cheapest of
    # each kind against the oracle set of analysis.distributional and the held-out data.
    a.samplers = sp = ml_collections.ConfigDict()
    sp.enabled = False
    sp.solvers = ("sde", "ddim", "dpmpp2m", "dpmpp2m-sde", "heun")
    sp.grids = ("uniform", "logsnr", "karras")  # karras:ρ for another ρ than 7
    sp.steps = (8, 16, 32, 64)
    sp.top_fraction = 0.125  # multilevel: expected top-level calls = top_fraction × steps
    sp.selection_realisations = 4  # batches every configuration solves (they choose)
    sp.realisations = 16  # batches of the configurations on a chosen path (they judge)
    sp.batch_size = 64
    sp.oracle_ratios = (32.0, 16.0, 8.0, 4.0, 2.0)  # × the distributional floor
    sp.data_ratios = (4.0, 2.0, 1.5, 1.25)  # × the oracle set's FD to the held-out data
    sp.bootstrap = 1000
    return config
