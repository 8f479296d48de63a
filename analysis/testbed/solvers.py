"""The best single-level solver against the best multilevel one on the synthetic testbed.

    python -m analysis.testbed --ode --gamma 3 --out results/synthetic_ode_gamma3
    python -m analysis.testbed --ode --gamma 3 --solver heun --out results/synthetic_ode_heun_gamma3
    python -m analysis.testbed.solvers results/synthetic_ode_gamma3 \\
        results/synthetic_ode_heun_gamma3 --out results/synthetic_ode_solvers_gamma3

The runs are sweeps of the same ladder and seeds (``summary.json``'s config equal but for
``solver``), so seed ``s`` has the same initial state, Brownian path and exact reference in
each. Their rows are pooled into two curves: **single-level** (every solver, level and step
count) and **multilevel** (every solver, top level, step count and budget), and compared
by the rules of :mod:`mlem.eval.speedup` (the first half of the seeds evaluates, the second
half chooses each curve's path; failures counted):

* **pathwise** (MSE to the exact-drift solve of the same seed): at four RMSE targets spread
  geometrically over the common range of the two curves' envelopes on the *selection* seeds
  (from ``floor_factor`` × the larger floor, :func:`analysis.testbed.summary.fit_range`);
* **distributional** (a seed batch's moment error against independent exact solves): at the
  predeclared ``dist_target_ratios`` × the oracle's finite-sample floor.

Writes ``OUT/summary.json`` (``solver_comparison``: per error, targets, the speedup of
multilevel over single-level with intervals, each curve's path on the selection seeds with
the solver of each configuration); ``python -m analysis.report OUT`` prints the table.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app, flags

from analysis.testbed import summary as summaries
from analysis.testbed.sweep import SweepConfig
from mlem import cli
from mlem.eval import speedup

CURVES = {"em": "single", "mlem": "multilevel"}
NUM_TARGETS = 4


def load(run: str | Path) -> tuple[list[dict], dict]:
    """``(rows, summary)`` of a synthetic results directory (``runs.csv``, ``summary.json``)."""
    run = Path(run)
    for name in ("runs.csv", "summary.json"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run / name}: run python -m analysis.testbed --out {run}"
                                    f" first")
    summary = json.loads((run / "summary.json").read_text())
    solver = summary["config"].get("solver", "euler")
    with open(run / "runs.csv", newline="") as f:
        rows = [{"solver": solver, "method": r["method"], "level": int(r["level"]),
                 "steps": int(r["steps"]), "seed": int(r["seed"]),
                 "top_evals": float(r["top_evals"]) if r["top_evals"] else 0.0,
                 "cost": float(r["cost"]), "mse": float(r["mse"]), "dist": float(r["dist"])}
                for r in csv.DictReader(f)]
    return rows, summary


def check_same_sweep(summaries_: Sequence[dict]) -> SweepConfig:
    """The runs' common config; a ``ValueError`` when they differ in anything but ``solver``
    or repeat a solver."""
    configs = [{k: v for k, v in s["config"].items() if k != "solver"} for s in summaries_]
    solvers = [s["config"].get("solver", "euler") for s in summaries_]
    if any(c != configs[0] for c in configs[1:]):
        diff = sorted(k for c in configs[1:] for k in c if c[k] != configs[0].get(k))
        raise ValueError(f"runs: the sweeps differ in {', '.join(diff)}; compare runs of the "
                         f"same ladder and seeds (only --solver may differ)")
    if len(set(solvers)) != len(solvers) or len(solvers) < 2:
        raise ValueError(f"runs: need two or more runs with different solvers, got {solvers}")
    return SweepConfig(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in configs[0].items()})


def table(rows: Sequence[dict], error: str) -> tuple[speedup.Sweep, list[tuple]]:
    """The pooled rows as a :class:`mlem.eval.speedup.Sweep` with curves ``single`` and
    ``multilevel`` (``(P, seeds)`` errors ``error``), and each configuration's key."""
    key = lambda r: (r["solver"], r["method"], r["level"], r["steps"], r["top_evals"])
    configs = sorted({key(r) for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    index, column = {c: i for i, c in enumerate(configs)}, {s: j for j, s in enumerate(seeds)}
    err, cost = np.full((len(configs), len(seeds)), np.nan), np.zeros(len(configs))
    for r in rows:
        err[index[key(r)], column[r["seed"]]], cost[index[key(r)]] = r[error], r["cost"]
    if np.isnan(err).any():
        raise ValueError("runs: some configuration lacks a seed; rerun the sweeps in full")
    return speedup.Sweep(np.array([CURVES[c[1]] for c in configs]), err, {"cost": cost}), configs


def compare(rows: Sequence[dict], cfg: SweepConfig, floor: np.ndarray, num: int = 2000) -> dict:
    """Multilevel against single-level, pathwise and in distribution (module docstring)."""
    out = {}
    for error in ("mse", "dist"):
        sweep, configs = table(rows, error)
        half = sweep.num_realisations // 2
        if half < 2:
            raise ValueError(f"seeds: need >= 4 (half evaluate, half select), got "
                             f"{sweep.num_realisations}")
        evaluation = sweep.columns(range(half))
        selection = sweep.columns(range(half, sweep.num_realisations))
        if error == "mse":
            mse, costs = selection.means(np.arange(selection.num_realisations))
            fronts = {c: selection.envelope(c, np.sqrt(mse), costs["cost"])
                      for c in CURVES.values()}
            lo, hi = summaries.fit_range(fronts, dataclasses.replace(cfg, min_fit_decades=0.0))
            goals = {f"RMSE {r:.3g}": r**2 for r in np.geomspace(hi, lo, NUM_TARGETS)}
            rule = (f"{NUM_TARGETS} RMSE targets spread over the common range of both curves' "
                    f"envelopes on the {sweep.num_realisations - half} selection seeds")
        else:
            goals = {f"{r:g}x floor": r * float(np.mean(floor)) for r in cfg.dist_target_ratios}
            rule = "predeclared multiples of the oracle's finite-sample floor"
        result = speedup.compare_at_targets(evaluation, selection, "single", "multilevel",
                                            "cost", goals, num_resamples=num)
        describe = lambda i, configs=configs, sweep=sweep: dict(
            zip(("solver", "method", "level", "steps", "top_evals"), configs[i]),
            cost=float(sweep.costs["cost"][i]))
        out[error] = {"rule": rule, "evaluation_seeds": half,
                      "selection_seeds": sweep.num_realisations - half,
                      "targets": {n: {"target": t["target_error"], "speedup": t["speedup"],
                                      "cost_single": t["cost_base"],
                                      "cost_multilevel": t["cost_other"],
                                      "not_reached": t["not_reached"]}
                                  for n, t in result["targets"].items()},
                      "exponents": result.get("exponents"),
                      "paths": {CURVES[m]: [describe(i) for i in result["paths"][k]]
                                for k, m in (("base", "em"), ("other", "mlem"))}}
    return out


def run(runs: Sequence[str | Path], out: str | Path) -> dict:
    """Load, check, compare; write ``OUT/summary.json``; return the comparison. The
    distributional floor is the first run's (every run's exact solves are the same)."""
    loaded = [load(r) for r in runs]
    cfg = check_same_sweep([s for _, s in loaded])
    rows = [r for rs, _ in loaded for r in rs]
    result = {"runs": [str(r) for r in runs],
              "solvers": [s["config"].get("solver", "euler") for _, s in loaded],
              "gamma": cfg.gamma, "noise": cfg.noise,
              **compare(rows, cfg, np.asarray(loaded[0][1]["distributional"]["floor"]))}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps({"solver_comparison": result}, indent=1) + "\n")
    return result


def main(argv: list[str]) -> None:
    if len(argv) < 3:
        cli.fail("give two or more synthetic results directories (one per --solver) and --out")
    if not flags.FLAGS.out:
        cli.fail("--out: the output directory is required")
    try:
        result = run(argv[1:], flags.FLAGS.out)
    except (ValueError, OSError) as err:
        cli.fail(err)
    print(json.dumps({e: {n: t["speedup"] for n, t in result[e]["targets"].items()}
                      for e in ("mse", "dist")}, indent=1))


if __name__ == "__main__":
    flags.DEFINE_string("out", None, "output directory (summary.json)")  # here: importing
    app.run(main, flags_parser=cli.parse_flags)  # the module defines no flag
