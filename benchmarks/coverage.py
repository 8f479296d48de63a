"""Coverage of the headline intervals, by simulation through the functions that produce them.

    python -m benchmarks.coverage [--repetitions 1000] [--resamples 2000] [--realisations 8]
        [--selection_realisations 8] [--out results/coverage/coverage.json]

Each repetition simulates a coupled sweep with a known truth and runs it through
:func:`mlem.eval.speedup.compare_at_targets`, exactly as :mod:`analysis.comparison` does for a
real sweep: paths chosen on selection realisations, the operating target = the selection mean
of EM's operating configuration, predeclared targets as multiples of it, and an error ratio
at EM's operating cost. A method's true mean error is a power law of its cost, ``e = A ·
c^{−1/s}``, at some configurations and above it at dominated ones; a realisation multiplies
every mean by coupled log-normal noise (a common factor per realisation and a factor per
configuration, mean one). Scenarios:

* ``null``: two methods with the same curve (EM: 16 configurations, noise 0.1; the other: 12,
  noise 0.2): true speedup 1 everywhere;
* ``speedup2``: the other method costs half as much at every error: true speedup 2;
* ``failure``: the other method's most accurate configuration is only 10% below the
  operating MSE and noisy (0.3), so it fails to reach the target on some realisations.

The truth of a repetition is the same statistic computed from the true means along the paths
that repetition chose (the quantity the interval is for). Printed per scenario and statistic:
the empirical coverage of the 95% interval, the mean relative bias of the point value, how
often the point was "not reached" (its interval, with the failing resamples, then reaches 0
or inf), and, for reference, the mean of the maximum of the exploratory curve (the
old headline, chosen on the realisations it is judged on). Targets: coverage ≥ 0.92 for every
statistic, |bias| ≤ 3% in ``null``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import app, flags

from mlem import cli
from mlem.eval import speedup

RATIOS = {"4x operating MSE": 4.0, "2x operating MSE": 2.0, "operating point": 1.0,
          "0.5x operating MSE": 0.5}  # as configs/sample_base.py's target_ratios
COVERAGE_TARGET, BIAS_TARGET = 0.92, 0.03


@dataclasses.dataclass(frozen=True)
class Scenario:
    """Two methods' true (cost, mean error) configurations and their noise."""

    name: str
    em_cost: np.ndarray
    em_error: np.ndarray
    other_cost: np.ndarray
    other_error: np.ndarray
    em_noise: float = 0.1
    other_noise: float = 0.2
    correlation: float = 0.5
    operating: int = 4  # EM's operating configuration (index into em_*)


def _curve(cost, slope=1.6, scale=1.0, factor=1.0):
    """``e = (factor · cost / scale)^{−1/slope}``: a power law of cost."""
    return (factor * np.asarray(cost) / scale) ** (-1.0 / slope)


def scenarios() -> dict[str, Scenario]:
    """The three scenarios of the module docstring."""
    em_on = np.geomspace(1.0, 64.0, 7)  # EM's top level on 1…64 × a unit grid
    em_off = np.geomspace(0.3, 40.0, 9)  # cheaper levels: dominated, 1.3–3× the curve
    em_cost = np.concatenate([em_on, em_off])
    em_error = np.concatenate([_curve(em_on), _curve(em_off) * np.linspace(1.3, 3.0, 9)])
    ml_on = np.geomspace(0.7, 90.0, 8)
    ml_off = np.geomspace(1.5, 50.0, 4)
    ml_cost = np.concatenate([ml_on, ml_off])
    null_error = np.concatenate([_curve(ml_on), _curve(ml_off) * 1.5])
    fast_error = np.concatenate([_curve(ml_on, factor=2.0), _curve(ml_off, factor=2.0) * 1.5])
    op = _curve(em_on[4])
    fail_on = np.geomspace(0.7, 8.0, 6)  # ends at 0.9 × the operating MSE
    fail_error = _curve(fail_on, scale=fail_on[-1]) * 0.9 * op
    return {
        "null": Scenario("null", em_cost, em_error, ml_cost, null_error),
        "speedup2": Scenario("speedup2", em_cost, em_error, ml_cost, fast_error),
        "failure": Scenario("failure", em_cost, em_error, fail_on, fail_error, other_noise=0.3),
    }


def simulate(s: Scenario, realisations: int, rng: np.random.Generator) -> speedup.Sweep:
    """A coupled sweep of ``s`` on ``realisations`` realisations."""
    def noisy(mean, sigma, common):
        own = rng.standard_normal((mean.size, realisations))
        z = np.sqrt(s.correlation) * common + np.sqrt(1 - s.correlation) * own
        return mean[:, None] * np.exp(sigma * z - sigma**2 / 2)

    common = rng.standard_normal(realisations)
    error = np.vstack([noisy(s.em_error, s.em_noise, common),
                       noisy(s.other_error, s.other_noise, common)])
    curve = np.array(["em"] * s.em_cost.size + ["other"] * s.other_cost.size)
    return speedup.Sweep(curve, error, {"flops": np.concatenate([s.em_cost, s.other_cost])})


def truths(s: Scenario, result: dict) -> dict[str, float]:
    """The statistics of ``result`` computed from the true means along its chosen paths."""
    mean = np.concatenate([s.em_error, s.other_error])
    cost = np.concatenate([s.em_cost, s.other_cost])
    base, other = (np.array(result["paths"][k]) for k in ("base", "other"))
    out = {}
    for name, t in result["targets"].items():
        reach = [speedup.cost_to_reach(cost[p], mean[p], t["target_error"])[0]
                 for p in (base, other)]
        with np.errstate(divide="ignore", invalid="ignore"):
            out[f"speedup at {name}"] = reach[0] / reach[1]
        out[f"cost to reach {name}"] = reach[1]
    budget = result["error_ratio_at_budget"]["budget"]
    errs = [speedup.error_at_cost(cost[p], mean[p], budget)[0] for p in (base, other)]
    with np.errstate(divide="ignore", invalid="ignore"):
        out["error ratio at EM's operating cost"] = errs[0] / errs[1]
    return out


def estimates(result: dict) -> dict[str, dict]:
    out = {}
    for name, t in result["targets"].items():
        out[f"speedup at {name}"] = t["speedup"]
        out[f"cost to reach {name}"] = t["cost_other"]
    out["error ratio at EM's operating cost"] = result["error_ratio_at_budget"]
    return out


def one_sweep(s: Scenario, realisations: int, selection: int, resamples: int,
              rng: np.random.Generator, seed: int) -> tuple[dict, dict, float]:
    """``(estimates, truths, exploratory maximum)`` of one simulated sweep."""
    sweep = simulate(s, realisations + selection, rng)
    evaluation = sweep.columns(range(realisations))
    chosen = sweep.columns(range(realisations, realisations + selection))
    op_index = s.operating  # the operating configuration: EM, first block of rows
    operating = float(chosen.error[op_index].mean())
    targets = {name: ratio * operating for name, ratio in RATIOS.items()}
    result = speedup.compare_at_targets(evaluation, chosen, "em", "other", "flops", targets,
                                        budget=float(s.em_cost[op_index]),
                                        num_resamples=resamples, seed=seed)
    mse, costs = evaluation.means(np.arange(realisations))
    envs = [evaluation.envelope(c, mse, costs["flops"]) for c in ("em", "other")]
    _, curve = speedup.speedup_curve(*envs, num=400)
    return estimates(result), truths(s, result), float(np.nanmax(curve, initial=np.nan))


def covered(est: dict, truth: float) -> bool:
    """Whether the interval holds the truth (0 or inf where the truth is not reached)."""
    lo, hi = est["ci"]
    return bool(lo <= truth <= hi)


def study(s: Scenario, repetitions: int, realisations: int, selection: int,
          resamples: int, seed: int = 0) -> dict:
    """Coverage, bias and "not reached" rate of every statistic over ``repetitions`` sweeps."""
    rng = np.random.default_rng(seed)
    hits: dict[str, list[bool]] = {}
    rel: dict[str, list[float]] = {}
    missing: dict[str, list[bool]] = {}
    maxima = []
    for rep in range(repetitions):
        est, truth, maximum = one_sweep(s, realisations, selection, resamples, rng, rep)
        maxima.append(maximum)
        for name, e in est.items():
            hits.setdefault(name, []).append(covered(e, truth[name]))
            missing.setdefault(name, []).append(e["value"] is None)
            if e["value"] is not None and np.isfinite(truth[name]) and truth[name] > 0:
                rel.setdefault(name, []).append(e["value"] / truth[name] - 1.0)
    return {"scenario": s.name, "repetitions": repetitions, "realisations": realisations,
            "selection_realisations": selection, "resamples": resamples,
            "exploratory_maximum_mean": float(np.nanmean(maxima)),
            "statistics": {name: {"coverage": float(np.mean(hits[name])),
                                  "mean_relative_bias": float(np.mean(rel[name]))
                                  if rel.get(name) else None,
                                  "not_reached_fraction": float(np.mean(missing[name]))}
                           for name in hits}}


def meets_targets(record: dict) -> bool:
    """Coverage ≥ 0.92 everywhere; |bias| ≤ 3% in the null scenario."""
    ok = True
    for r in record["scenarios"]:
        for s in r["statistics"].values():
            ok &= s["coverage"] >= COVERAGE_TARGET
            if r["scenario"] == "null" and s["mean_relative_bias"] is not None:
                ok &= abs(s["mean_relative_bias"]) <= BIAS_TARGET
    return bool(ok)


def run(repetitions: int = 1000, resamples: int = 2000, realisations: int = 8,
        selection: int = 8) -> dict:
    results = [study(s, repetitions, realisations, selection, resamples, seed=i)
               for i, s in enumerate(scenarios().values())]
    record = {"interval": speedup.INTERVAL, "scenarios": results}
    record["meets_targets"] = meets_targets(record)
    return record


def table(record: dict) -> str:
    lines = [f"interval: {record['interval']}", "",
             "| scenario | statistic | coverage of the 95% interval | mean bias of the point | "
             "not reached |", "|---|---|---:|---:|---:|"]
    for r in record["scenarios"]:
        for name, s in r["statistics"].items():
            bias = "n/a" if s["mean_relative_bias"] is None else f"{s['mean_relative_bias']:+.1%}"
            lines.append(f"| {r['scenario']} | {name} | {s['coverage']:.3f} | {bias} | "
                         f"{s['not_reached_fraction']:.2f} |")
    lines.append("")
    for r in record["scenarios"]:
        lines.append(f"{r['scenario']}: {r['repetitions']} sweeps of {r['realisations']} "
                     f"evaluation + {r['selection_realisations']} selection realisations, "
                     f"{r['resamples']} resamples; the exploratory curve's maximum (the old "
                     f"headline) averages {r['exploratory_maximum_mean']:.3f}")
    lines.append(f"meets the targets (coverage >= {COVERAGE_TARGET}, null bias within "
                 f"±{BIAS_TARGET:.0%}): {record['meets_targets']}")
    return "\n".join(lines)


def _define_flags() -> None:
    """The command's flags (defined only when run as a command, so that importing the module
    beside other commands' flags never clashes)."""
    flags.DEFINE_integer("repetitions", 1000, "Simulated sweeps per scenario.")
    flags.DEFINE_integer("resamples", 2000, "Bootstrap resamples per sweep.")
    flags.DEFINE_integer("realisations", 8, "Evaluation realisations per sweep.")
    flags.DEFINE_integer("selection_realisations", 8, "Selection realisations per sweep.")
    flags.DEFINE_string("out", "results/coverage/coverage.json", "Where the JSON record goes.")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    f = flags.FLAGS
    record = run(f.repetitions, f.resamples, f.realisations, f.selection_realisations)
    print(table(record))
    out = Path(f.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    _define_flags()
    app.run(main, flags_parser=cli.parse_flags)
