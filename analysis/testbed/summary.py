"""From the sweep's rows to ``summary.json``: envelopes, exponents, speedups and intervals.

Each method's lower envelope of seed-averaged points (:mod:`mlem.eval.speedup`) is fitted as
``cost ∝ error^{-s}`` (:func:`mlem.eval.fits.fit_exponent`) on a common RMSE range from
``floor_factor`` × the larger envelope floor, spanning ``fit_decades``; resampling seeds and
rerunning averages, envelopes and fits gives 95% intervals for the exponents. The speedups
follow the rules of :mod:`mlem.eval.speedup` (:func:`speedups_at_targets`): targets and
configurations chosen on half of the seeds, judged on the other half. Theory (γ > 2):
``s = γ + 1`` for EM and ``s = γ`` for ML-EM, approached from above
by ML-EM as the error shrinks (:mod:`analysis.testbed.theory`).

The fit stays ``floor_factor = 8 = 2^3`` above the floor, i.e. three levels up (``δ_k`` halves
per level). Near the floor a *finite* ladder bends ML-EM's envelope upwards: with no level
``K + 1`` to move to, the only way to lower the error is to run the top level more often,
which costs far more than the theorem's unbounded ladder would. ``summary.json`` lists the
exponents for floor factors 2 to 16 (``exponents_by_floor_factor``), and ``--levels`` deepens
the ladder so that a fixed error range moves away from the floor.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from analysis.testbed.sweep import SweepConfig
from analysis.testbed.theory import ideal_mlem_exponent
from mlem.eval import fits, speedup

METHODS = ("em", "mlem")


def _config_key(row: dict) -> tuple:
    return (row["method"], row["level"], row["steps"], row["top_evals"] or 0.0)


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """Average cost and MSE over seeds for each configuration; RMSE = sqrt(mean MSE);
    ``mse_se`` is the standard error over seeds (realisations)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_config_key(r), []).append(r)
    points = []
    for group in groups.values():
        mse = np.array([r["mse"] for r in group])
        se = mse.std(ddof=1) / np.sqrt(len(mse)) if len(mse) > 1 else np.nan
        keys = ("method", "level", "steps", "top_evals", "c")
        points.append({**{k: group[0][k] for k in keys}, "seeds": len(group),
                       "cost": float(np.mean([r["cost"] for r in group])),
                       "realised_cost": float(np.mean([r["realised_cost"] for r in group])),
                       "mse": float(mse.mean()), "mse_se": float(se),
                       "rmse": float(np.sqrt(mse.mean()))})
    return points


def front_points(points: Sequence[dict], method: str) -> list[dict]:
    """The points on ``method``'s lower envelope, ordered by increasing cost."""
    pts = [p for p in points if p["method"] == method]
    env = speedup.Envelope.of([p["cost"] for p in pts], [p["rmse"] for p in pts])
    return [pts[i] for i in env.index]


def envelopes(points: Sequence[dict]) -> dict[str, speedup.Envelope]:
    """Each method's lower envelope in (cost, RMSE), ordered by increasing cost."""
    return {m: speedup.Envelope.of([p["cost"] for p in points if p["method"] == m],
                                   [p["rmse"] for p in points if p["method"] == m])
            for m in METHODS}


def comparisons(fronts: dict[str, speedup.Envelope], num: int = 20) -> dict:
    """Exploratory curves along the two envelopes of all seeds (pictures; no maximum or
    other place chosen on them is reported): the speedup at equal RMSE and the MSE ratio at
    equal cost over the common ranges."""
    em, ml = fronts["em"], fronts["mlem"]
    errors, curve = speedup.speedup_curve(em, ml, num)
    span = speedup.common_range(em.cost, ml.cost)
    costs = np.geomspace(*span, num) if span and span[0] < span[1] else np.empty(0)
    rmse_ratio = em.error_at(costs) / ml.error_at(costs) if costs.size else np.empty(0)
    return {"speedup_curve": np.column_stack([errors, curve]).tolist(),
            "mse_ratio_curve": np.column_stack([costs, rmse_ratio**2]).tolist()}


def sweep_table(rows: Sequence[dict], error: str = "mse") -> speedup.Sweep:
    """The per-seed rows as a :class:`mlem.eval.speedup.Sweep`: the error column ``error``
    (``mse`` pathwise, ``dist`` distributional) ``(P, seeds)``, cost ``(P,)``."""
    configs = sorted({_config_key(r) for r in rows}, key=str)
    seeds = sorted({r["seed"] for r in rows})
    index, column = {c: i for i, c in enumerate(configs)}, {s: j for j, s in enumerate(seeds)}
    mse = np.full((len(configs), len(seeds)), np.nan)
    cost_of = np.zeros(len(configs))
    for r in rows:
        i = index[_config_key(r)]
        mse[i, column[r["seed"]]], cost_of[i] = r[error], r["cost"]
    return speedup.Sweep(np.array([c[0] for c in configs]), mse, {"cost": cost_of})


def bootstrap_statistics(rows: Sequence[dict], fit_range: Sequence[float], num: int = 200,
                         seed: int = 0) -> dict[str, list[float]]:
    """95% intervals of both exponents, resampling seeds (paths and Bernoulli draws) with
    replacement and rerunning seed averages, envelopes and fits on each resample."""
    lo, hi = fit_range
    table = sweep_table(rows)

    def statistic(idx: np.ndarray) -> dict[str, float]:
        mse, costs = table.means(idx)
        em, ml = (table.envelope(m, np.sqrt(mse), costs["cost"]) for m in METHODS)
        return {"exponent_em": fits.fit_exponent(em, lo, hi),
                "exponent_mlem": fits.fit_exponent(ml, lo, hi)}

    boot = speedup.bootstrap(statistic, table.num_realisations, num, seed)
    return {f"{name}_ci95": list(speedup.percentile_interval(values))
            for name, values in boot.items()}


def speedups_at_targets(rows: Sequence[dict], cfg: SweepConfig, num: int = 2000) -> dict:
    """The speedup of ML-EM over EM at the ends of the fit range, by the rules of
    :mod:`mlem.eval.speedup`: the first half of the seeds evaluates, the second half selects
    (the fit range, i.e. the targets, and each method's configurations); 95% expanded
    percentile intervals over the evaluation seeds, failures counted."""
    table = sweep_table(rows)
    half = table.num_realisations // 2
    if half < 2:  # an interval needs >= 2 evaluation seeds: report nothing rather than guess
        rule = (f"not measured: needs >= 4 seeds (half evaluate, half select), got "
                f"{table.num_realisations}")
        return {"speedup_targets_rule": rule,
                **{f"speedup_at_fit_range_{end}{suffix}": None for end in ("low", "high")
                   for suffix in ("", "_ci95", "_rmse", "_not_reached")}}
    evaluation, selection = table.columns(range(half)), table.columns(
        range(half, table.num_realisations))
    mse, costs = selection.means(np.arange(selection.num_realisations))
    fronts = {m: selection.envelope(m, np.sqrt(mse), costs["cost"]) for m in METHODS}
    lo, hi = fit_range(fronts, dataclasses.replace(cfg, min_fit_decades=0.0))
    result = speedup.compare_at_targets(evaluation, selection, "em", "mlem", "cost",
                                        {"low": lo**2, "high": hi**2}, num_resamples=num)
    out = {"speedup_targets_rule": f"the fit range's ends (RMSE) on the {half} selection "
                                   f"seeds; evaluated on the other {half}"}
    for end, t in result["targets"].items():
        name = f"speedup_at_fit_range_{end}"
        out.update({name: t["speedup"]["value"], f"{name}_ci95": t["speedup"]["ci"],
                    f"{name}_rmse": float(np.sqrt(t["target_error"])),
                    f"{name}_not_reached": t["not_reached"]})
    return out


def distributional_at_targets(rows: Sequence[dict], cfg: SweepConfig, floor: np.ndarray,
                              num: int = 2000) -> dict:
    """EM against ML-EM in distributional error (:func:`analysis.testbed.sweep.moment_error`
    against independent exact solves) at predeclared targets ``dist_target_ratios`` × the
    oracle's finite-sample floor (the mean of ``floor``, measured on exact batches that share
    nothing with the sweep), by the rules of :mod:`mlem.eval.speedup`: configurations chosen on
    the second half of the seeds, costs, speedups and exponents measured on the first half
    with intervals that count failures."""
    table = sweep_table(rows, "dist")
    half = table.num_realisations // 2
    floor_mean = float(np.mean(floor))
    record = {"error": "‖mean − μ*‖²/d + ‖cov − Σ*‖_F²/d² of a seed's batch against "
                       f"{cfg.oracle_seeds} independent exact batches",
              "floor": floor_mean, "floor_se": float(np.std(floor, ddof=1) /
                                                     np.sqrt(len(floor)))}
    if half < 2:
        return {**record, "targets": None,
                "rule": f"not measured: needs >= 4 seeds, got {table.num_realisations}"}
    goals = {f"{r:g}x floor": r * floor_mean for r in cfg.dist_target_ratios}
    result = speedup.compare_at_targets(table.columns(range(half)),
                                        table.columns(range(half, table.num_realisations)),
                                        "em", "mlem", "cost", goals, num_resamples=num)
    return {**record, "rule": f"targets: predeclared multiples of the floor; configurations "
                              f"chosen on {table.num_realisations - half} selection seeds, "
                              f"judged on {half}",
            "targets": {n: {"target": t["target_error"], "speedup": t["speedup"],
                            "cost_em": t["cost_base"], "cost_mlem": t["cost_other"],
                            "not_reached": t["not_reached"]}
                        for n, t in result["targets"].items()},
            "exponents": result.get("exponents")}


def fit_range(fronts: dict[str, speedup.Envelope], cfg: SweepConfig) -> tuple[float, float]:
    """The common RMSE range of the fits: from ``floor_factor`` × the larger envelope floor,
    spanning up to ``fit_decades``; raises if it spans under ``min_fit_decades``."""
    lo = cfg.floor_factor * max(fronts[m].error.min() for m in fronts)
    hi = min(min(fronts[m].error.max() for m in fronts), lo * 10**cfg.fit_decades)
    if not np.log10(hi / lo) >= cfg.min_fit_decades - 1e-9:
        raise RuntimeError(f"common error range [{lo:.3g}, {hi:.3g}] spans under "
                           f"{cfg.min_fit_decades:g} decade(s); sweep more levels or steps")
    return lo, hi


def exponents_by_floor_factor(fronts: dict[str, speedup.Envelope], cfg: SweepConfig,
                              lo: float) -> dict[str, dict]:
    """Fit range and exponents for floor factors 2, 4, 8 and 16 (``lo`` is the one of
    ``cfg.floor_factor``): how the exponents depend on the distance from the floor."""
    by_factor = {}
    for factor in (2, 4, 8, 16):
        f_lo = factor * lo / cfg.floor_factor
        f_hi = min(min(fronts[m].error.max() for m in fronts), f_lo * 10**cfg.fit_decades)
        if f_hi > f_lo:
            by_factor[str(factor)] = {"fit_range": [f_lo, f_hi], **{
                f"exponent_{m}": fits.fit_exponent(fronts[m], f_lo, f_hi) for m in fronts}}
    return by_factor


def ideal_exponent(gamma: float, tops: Sequence[int]) -> float | None:
    """:func:`~analysis.testbed.theory.ideal_mlem_exponent` averaged over the ML-EM top
    levels ``tops`` (sorted) on the envelope in the fit range; None without a top >= 2."""
    if not tops or tops[0] < 2:
        return None
    return float(np.mean([ideal_mlem_exponent(gamma, k)
                          for k in range(tops[0], max(tops[-1], tops[0] + 1))]))


def _ladder_fields(ladder: dict) -> dict:
    return {"level_errors": ladder["level_errors"].tolist(),
            "level_variances": ladder["level_variances"].tolist(),
            "level_costs": np.asarray(ladder["level_costs"]).tolist()}


def summarise(points: Sequence[dict], cfg: SweepConfig, ladder: dict) -> dict:
    """Envelopes, fit range, exponents and speedups of the sweep (see module docstring)."""
    fronts = envelopes(points)
    lo, hi = fit_range(fronts, cfg)
    s_em, s_ml = (fits.fit_exponent(fronts[m], lo, hi) for m in METHODS)
    tops = sorted({p["level"] for p in front_points(points, "mlem") if lo <= p["rmse"] <= hi})
    return {
        "gamma_target": cfg.gamma,
        "gamma_fitted": fits.fit_gamma(ladder["level_costs"], ladder["level_errors"]),
        "exponent_em": s_em, "exponent_mlem": s_ml,
        "exponent_em_target": cfg.gamma + 1, "exponent_mlem_target": cfg.gamma,
        "within_0.3": bool(abs(s_em - cfg.gamma - 1) <= 0.3 and abs(s_ml - cfg.gamma) <= 0.3),
        "fit_range": [lo, hi], "fit_range_decades": float(np.log10(hi / lo)),
        "fit_range_rule": f"RMSE from {cfg.floor_factor:g}x the larger envelope floor, "
                          f"spanning up to {cfg.fit_decades:g} decades",
        "exponents_by_floor_factor": exponents_by_floor_factor(fronts, cfg, lo),
        "mlem_tops_in_fit_range": tops,
        "exponent_mlem_ideal_ladder": ideal_exponent(cfg.gamma, tops),
        **comparisons(fronts),
        "envelopes": {m: np.column_stack([fronts[m].cost, fronts[m].error]).tolist()
                      for m in fronts},
        **_ladder_fields(ladder),
        "config": dataclasses.asdict(cfg),
        "error": "RMSE over samples and dimensions vs EM with the exact drift on ref_steps steps",
        "cost": "expected evaluations under the schedule x declared per-level cost 2^(gamma k) "
                "(EM: exact); realised_cost in points.csv",
    }
