"""``make reproduce-mnist``: the powered MNIST-5k study on the demo's ladder (hours on 2 CPU
cores; every stage resumes where it stopped).

    python -m experiments.mnist_cpu --config configs/mnist_reproduce.py \\
        --workdir runs/mnist --out results/mnist_reproduce

Both framings of docs/design.md §3 on one coupled sweep: the *own-ladder* one (EM at every
level, ML-EM and switching on levels 1–4, judged against level 4 on the 512-step grid) at
the demo's targets, and the *oracle* one (level 4 on the 512-step grid is the oracle; EM at
levels 1–3, ML-EM and switching on the prefix ladders 1–2 and 1–3) at ``oracle_targets``.
Twice the demo's realisations, both ML-EM pricings and the paper's pattern search; then,
in both framings, the distributional error against independent oracle samples
(``analysis.distributional``: FD in the classifier's features and pixel moments, 1,024
samples a configuration) at multiples of the oracle's finite-sample floor.
"""

import ml_collections

from configs import mnist_sample


def get_config() -> ml_collections.ConfigDict:
    config = mnist_sample.get_config()
    config.results_dir = "results/mnist_reproduce"
    a = config.analysis
    a.em_steps = (8, 16, 32, 64)
    a.mlem_steps = (8, 16, 32, 64, 128)
    a.realisations = 16
    a.selection_realisations = 8
    a.cost_models = ("flops", "time")
    a.timing_batch_size = 64
    a.pattern_search = 15
    a.pattern_steps = (32,)
    # The oracle framing's targets: the demo's (configs/mnist_sample.py), predeclared before
    # this sweep from the demo's pilot run; both prefix ladders.
    a.prefix_tops = (2, 3)
    # Distributional error (analysis.distributional): 1,024 samples a configuration, against
    # 1,024 oracle samples (level 4, 512 steps), floor from 1,024 more.
    d = a.distributional
    d.batch_size, d.realisations, d.selection_realisations, d.oracle_realisations = 64, 16, 4, 16
    d.oracle_steps, d.max_steps, d.bootstrap = 0, 0, 1000
    # The samplers users pick (analysis.samplers): 420 configurations on 256 samples each,
    # those on a chosen path on 1,024 more.
    sp = a.samplers
    sp.solvers = ("sde", "ddim", "dpmpp2m", "dpmpp2m-sde", "heun")
    sp.grids, sp.steps = ("uniform", "logsnr", "karras"), (8, 16, 32, 64)
    sp.batch_size, sp.selection_realisations, sp.realisations, sp.bootstrap = 64, 4, 16, 1000
    return config
