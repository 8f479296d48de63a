"""Cost–error sweep of EM and ML-EM on the synthetic testbed with exact drift.

    python -m analysis.testbed --gamma 3 --out results/synthetic_gamma3 \\
        [--quick] [--seeds 32] [--levels 13] [--schedule variance|dyadic] [--ode]
        [--solver euler|heun]

Flags → :func:`analysis.testbed.pipeline.run`, which writes ``summary.json``,
``points.csv``, ``runs.csv`` and ``cost_vs_error.png`` into ``--out``; the headline numbers
are printed as JSON. ``--ode`` sets the noise to zero: Euler and multilevel Euler on the ODE
``dX = f*(X) dτ`` against its exact-drift solution (docs/solvers.md). ``--solver heun``
solves with Heun's method (:class:`mlem.solvers.DriftHeun`), single-level and multilevel;
``python -m analysis.testbed.solvers`` compares the best of two such runs.

Bad input (``--levels`` under 2, ``--seeds`` under 1, ``--gamma`` not
positive, a sweep whose envelopes share too short an error range) prints one ``error: ...``
line and exits with status 1.
"""

from __future__ import annotations

import json

from absl import app, flags

from mlem import cli

_GAMMA = flags.DEFINE_float("gamma", 3.0, "target exponent γ of the ladder (cost ∝ δ^-γ)")
_OUT = flags.DEFINE_string("out", None, "output directory, e.g. results/synthetic_gamma3")
_QUICK = flags.DEFINE_bool("quick", False, "the fast sweep behind make demo-synthetic")
_SEEDS = flags.DEFINE_integer("seeds", None, "number of seeds (paths); default 32",
                              lower_bound=1)
_LEVELS = flags.DEFINE_integer("levels", None, "ladder depth K (default 13); step counts "
                               "scale with it", lower_bound=2)
_SCHEDULE = flags.DEFINE_enum("schedule", "variance", ["variance", "dyadic"],
                              "ML-EM probabilities: variance-optimal from measured V_k, or "
                              "dyadic p_k ∝ 2^{-(1+γ/2)k}")
_ODE = flags.DEFINE_bool("ode", False, "zero diffusion: Euler and ML-Euler on the ODE "
                         "dX = f*(X) dτ (docs/solvers.md)")
_SOLVER = flags.DEFINE_enum("solver", "euler", ["euler", "heun"],
                            "euler: EM (Euler on the ODE); heun: Heun's method, stochastic "
                            "Heun on the SDE (two calls a step), single-level and multilevel")
flags.mark_flag_as_required("out")

PRINTED_KEYS = (
    "gamma_target", "gamma_fitted", "exponent_em", "exponent_em_ci95", "exponent_mlem",
    "exponent_mlem_ci95", "fit_range",
    "speedup_at_fit_range_low", "speedup_at_fit_range_low_ci95",
    "speedup_at_fit_range_high", "speedup_at_fit_range_high_ci95",
    "speedup_targets_rule", "exponent_mlem_ideal_ladder",
    "mlem_tops_in_fit_range", "exponents_by_floor_factor", "wall_time_s")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    from analysis.testbed import pipeline  # after flag parsing: a bad flag fails fast
    from analysis.testbed.sweep import SweepConfig

    overrides = {"schedule": _SCHEDULE.value, "noise": 0.0 if _ODE.value else 1.0,
                 "solver": _SOLVER.value}
    if _SEEDS.value is not None:
        overrides["seeds"] = _SEEDS.value
    make = SweepConfig.quick if _QUICK.value else SweepConfig.with_levels
    try:
        cfg = make(num_levels=_LEVELS.value or 13, gamma=_GAMMA.value, **overrides)
        summary = pipeline.run(cfg, _OUT.value)
    except (ValueError, RuntimeError, OSError) as err:
        cli.fail(err)
    print(json.dumps({k: summary[k] for k in PRINTED_KEYS}, indent=1))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
