"""Generate samples from a trained ladder with EM, ML-EM or deterministic switching.

    python -m sample --method mlem|em|switch --config configs/mnist_sample.py \\
        --workdir runs/mnist [--switch_level 1] [--switch_at 0.5] \\
        [--solver sde|ode|ddim|ancestral|dpmpp2m|dpmpp2m-sde|heun] \\
        [--grid uniform|quadratic|logsnr|karras[:ρ]] \\
        [--out DIR] [--num_samples N] [--steps N] [--seed S] [--batch_size B] \\
        [--em_level K] [--schedule constant|variance|file] [--config.sampling.c=30 ...]

``--solver`` picks the update rule fed by the (multilevel) level output (docs/solvers.md):
EM on the reverse SDE (default), Euler on the probability-flow ODE, DDIM, DDPM ancestral,
DPM-Solver++(2M) (or its SDE variant) or EDM's Heun;
``--grid`` the time grid. Both are recorded in ``sample_stats.json``. ``--method switch`` runs
level ``--switch_level`` before ``--switch_at`` of the solver time and the top level after.

Flags override ``config.sampling``; then :func:`mlem.generation.run` writes
``samples.png``, ``samples.npz`` and ``sample_stats.json`` to ``--out`` (default
``<workdir>/samples/<method>_<steps>steps_seed<seed>``). Bad input (a level whose newest
checkpoint is missing or unreadable, levels not ordered by FLOPs, schedule of the wrong level
count, unknown method, solver or grid, batch not divisible by the devices) prints one
``error: ...`` line and exits with status 1; ``--verbosity=1`` also logs the traceback.
"""

from __future__ import annotations

import json

from absl import app, flags, logging
from ml_collections import config_flags

from mlem import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Sample config (configs/*_sample.py); override with --config.a.b=value.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Root holding one subdirectory per level.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default under <workdir>/samples).")
_METHOD = flags.DEFINE_string("method", None, "'mlem', 'em' or 'switch' "
                              "(config.sampling.method).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Samples to generate.")
_STEPS = flags.DEFINE_integer("steps", None, "Solver steps (divides sampling.path_steps).")
_SEED = flags.DEFINE_integer("seed", None, "Seed of the noise, Brownian path and draws.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Samples per batch (all devices).")
_EM_LEVEL = flags.DEFINE_integer("em_level", None, "Level of --method em (1-based; -1 = top).")
_SCHEDULE = flags.DEFINE_string("schedule", None, "'constant', 'variance' or 'file'.")
_SWITCH_LEVEL = flags.DEFINE_integer("switch_level", None, "Level of --method switch before "
                                     "--switch_at (1-based).")
_SWITCH_AT = flags.DEFINE_float("switch_at", None, "Fraction of the solver time at which "
                                "--method switch moves to the top level.")
_SOLVER = flags.DEFINE_string("solver", None, "'sde', 'ode', 'ddim', 'ancestral', 'dpmpp2m', "
                              "'dpmpp2m-sde' or 'heun' (config.sampling.solver).")
_GRID = flags.DEFINE_string("grid", None, "'uniform', 'quadratic', 'logsnr', 'karras' "
                            "(ρ = 7) or 'karras:ρ' (config.sampling.grid).")
_ALLOW_OLDER = flags.DEFINE_bool(
    "allow_older_checkpoints", False, "Use the newest readable checkpoint of a level whose "
    "newest one is unreadable (recorded in sample_stats.json); default: stop.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}; config overrides look like --config.a.b=value")
    cli.quiet_background_errors(verbose=flags.FLAGS["verbosity"].present)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
    from mlem import parallel  # after flag parsing: a bad flag fails fast

    parallel.maybe_initialize_distributed()
    from mlem import generation

    try:
        config = generation.with_overrides(
            _CONFIG.value, method=_METHOD.value, num_samples=_NUM_SAMPLES.value,
            steps=_STEPS.value, seed=_SEED.value, batch_size=_BATCH_SIZE.value,
            em_level=_EM_LEVEL.value, schedule=_SCHEDULE.value, solver=_SOLVER.value,
            grid=_GRID.value, switch_level=_SWITCH_LEVEL.value, switch_at=_SWITCH_AT.value)
        if _ALLOW_OLDER.value:
            config.allow_older_checkpoints = True
        stats = generation.run(config, _WORKDIR.value, _OUT.value)
    except (ValueError, OSError) as err:
        cli.fail(err)
    keys = ("method", "solver", "grid", "steps", "realised_flops_per_sample", "evals_per_level",
            "wall_seconds_excluding_compile", "wall_seconds_including_compile", "out")
    print(json.dumps({k: stats[k] for k in keys}))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
