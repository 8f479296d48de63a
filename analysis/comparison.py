"""From the sweep's rows to its statistics: every ML-EM curve against EM at equal MSE, in
FLOPs and in seconds, with 95% bootstrap intervals over realisations (docs/design.md §3).

:func:`analyse` turns the rows of ``points.csv`` (one per configuration and realisation,
written by :mod:`analysis.cost_error`) into the headline numbers, the envelopes and the
curves for the figures; the mathematics (envelopes, interpolation, bootstrap) is in
:mod:`analysis.speedup`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from analysis import speedup
from mlem import generation

CONFIG_KEY = ("curve", "level", "top_evals", "switch_at", "steps")  # identifies a configuration
COSTS = {"flops": "expected_flops", "seconds": "seconds"}  # the two rulers and their columns


def curve_name(schedule: str, cost_model: str) -> str:
    """The name of an ML-EM curve: ``mlem-<schedule>-<cost model>``."""
    return f"mlem-{schedule}-{cost_model}"


def schedule_names(config: Any) -> tuple[str, ...]:
    names = tuple(config.analysis.get("schedules", ("variance",)))
    unknown = set(names) - {"variance", "constant", "dyadic", "learned"}
    if unknown or not names:
        raise ValueError(f"config.analysis.schedules: choose from variance, constant, dyadic, "
                         f"learned; got {names}")
    return names


def config_key(point: dict) -> tuple:
    return tuple(f"{float(point.get(k) or 0.0):.6g}" if k in ("top_evals", "switch_at")
                 else str(point[k]) for k in CONFIG_KEY)



def split_rows(rows: Sequence[dict], config: Any) -> tuple[list[dict], list[dict]]:
    """``(evaluation rows, selection rows)``: realisations ``0…R−1`` (``analysis.realisations``,
    every reported statistic) and ``R…R+S−1`` (``analysis.selection_realisations``, used only
    to choose: the best ML-EM variant, a search pattern)."""
    num = int(config.analysis.realisations)
    return ([r for r in rows if r["realisation"] < num],
            [r for r in rows if r["realisation"] >= num])


def table(rows: Sequence[dict]) -> tuple[list[dict], speedup.Sweep]:
    """Configurations (first row of each) and the :class:`~analysis.speedup.Sweep` of ``rows``:
    MSE and seconds ``(P, R)``, expected FLOPs ``(P,)``, realised FLOPs ``(P, R)``; columns are
    the realisations present, in increasing order."""
    configs: dict[tuple, dict] = {}
    for r in rows:
        configs.setdefault(config_key(r), r)
    index = {k: i for i, k in enumerate(configs)}
    column = {r: j for j, r in enumerate(sorted({r["realisation"] for r in rows}))}
    mse, seconds, realised = np.full((3, len(configs), len(column)), np.nan)
    expected = np.zeros(len(configs))
    for r in rows:
        i, j = index[config_key(r)], column[r["realisation"]]
        mse[i, j], seconds[i, j], realised[i, j] = r["mse"], r["seconds"], r["flops"]
        expected[i] = r["expected_flops"]
    if np.isnan(mse).any():
        raise ValueError("points.csv: some configuration lacks a realisation; rerun the sweep")
    curves = np.array([c["curve"] for c in configs.values()])
    return list(configs.values()), speedup.Sweep(
        curves, mse, {"flops": expected, "seconds": seconds, "realised_flops": realised})


def operating_point(config: Any, configs: Sequence[dict], sweep_: speedup.Sweep,
                    num_levels: int) -> tuple[int, str]:
    """Index of the configuration that defines the operating point: EM at the top level with
    ``config.sampling.steps`` steps (the nearest swept step count)."""
    if config.analysis.get("operating_point", "auto") != "auto":
        raise ValueError("config.analysis.operating_point: only 'auto' (EM at the top level with "
                         "sampling.steps steps) is supported; set --config.sampling.steps")
    top = [i for i, c in enumerate(configs) if c["method"] == "em" and c["level"] == num_levels
           and sweep_.error[i].mean() > 0]
    if not top:
        raise ValueError("config.analysis.em_steps: need a top-level EM point below ref_steps "
                         "to define the operating point")
    want = int(config.sampling.steps)
    best = min(top, key=lambda i: abs(np.log(configs[i]["steps"] / want)))
    return best, f"EM at the top level with {configs[best]['steps']} steps"


def headline_curves(curves: Sequence[str], config: Any) -> dict[str, str]:
    """The predeclared ML-EM curve of each ruler (used when there are no selection
    realisations): FLOPs → ``config.analysis.schedules[0]`` priced in FLOPs, seconds → the
    same schedule priced in time (each falls back to the other when only one was swept)."""
    schedule = schedule_names(config)[0]
    named = {m: curve_name(schedule, m) for m in generation.COST_MODELS}
    present = [c for c in (named["flops"], named["time"]) if c in curves]
    if not present:
        raise ValueError("the sweep has no ML-EM point of config.analysis.schedules[0]")
    pick = lambda m: named[m] if named[m] in curves else present[0]
    return {"flops": pick("flops"), "seconds": pick("time")}


def candidate_curves(curves: Sequence[str]) -> list[str]:
    """The ML-EM variants the best is chosen from: every ``mlem-*`` curve except pattern
    search, whose pattern was itself chosen on the selection realisations (its selection
    error is optimistic, so it would win the choice unfairly)."""
    return [c for c in curves if c.startswith("mlem-") and not c.startswith("mlem-pattern")]


def select_best(selection_rows: Sequence[dict], config: Any, num_levels: int) -> dict:
    """Per ruler, the ML-EM variant with the largest speedup over EM at the operating point on
    the *selection* realisations (the maximum speedup where no variant reaches the operating
    MSE), with every candidate's score: ``{ruler: {"curve", "scores"}}``."""
    configs, sweep_ = table(selection_rows)
    op, _ = operating_point(config, configs, sweep_, num_levels)
    idx = np.arange(sweep_.num_realisations)
    out = {}
    for ruler in COSTS:
        scores = {}
        for curve in candidate_curves(sorted(set(sweep_.curve))):
            stats = speedup.compare(sweep_, "em", curve, ruler, idx, op)
            scores[curve] = (stats["at_operating_point"], stats["max"])
        if not scores:
            raise ValueError("the sweep has no ML-EM curve to choose from")
        ranks = {c: tuple(v if np.isfinite(v) else -np.inf for v in s) for c, s in scores.items()}
        out[ruler] = {"curve": max(ranks, key=ranks.get),
                      "scores": {c: {"at_operating_point": a, "max": m}
                                 for c, (a, m) in scores.items()}}
    return out


def analyse(rows: Sequence[dict], config: Any, num_levels: int) -> dict:
    """Every comparison (each ML-EM curve against EM, in FLOPs and in seconds) with 95%
    bootstrap intervals over the evaluation realisations, the headline numbers of
    docs/design.md §3 for the best ML-EM variant (chosen on the selection realisations, or
    predeclared by ``config.analysis.schedules[0]`` when there are none), envelopes and
    curves for the figures."""
    evaluation, selection = split_rows(rows, config)
    configs, sweep_ = table(evaluation)
    op, op_text = operating_point(config, configs, sweep_, num_levels)
    resamples = int(config.analysis.get("speedup_bootstrap", 1000))
    curves = sorted(set(sweep_.curve) - {"em"})
    comparisons = {c: {ruler: speedup.bootstrap_compare(sweep_, "em", c, ruler, op, resamples)
                       for ruler in COSTS} for c in curves}
    if selection:
        chosen = select_best(selection, config, num_levels)
        heads = {ruler: chosen[ruler]["curve"] for ruler in COSTS}
        how = (f"chosen on {len({r['realisation'] for r in selection})} selection realisations "
               f"(largest speedup over EM at the operating point), evaluated on the others")
    else:
        chosen, heads = None, headline_curves(curves, config)
        how = "predeclared (config.analysis.schedules[0]); no selection realisations"
    flop_head = comparisons[heads["flops"]]["flops"]
    wall_head = comparisons[heads["seconds"]]["seconds"]
    top_flops = float(sweep_.costs["flops"][op] / configs[op]["steps"])  # one top-level call
    extra = {}
    if "switch" in curves:  # the baseline a user would pick instead: the best variant over it
        extra["speedup_over_switching_at_equal_mse"] = _headline(speedup.bootstrap_compare(
            sweep_, "switch", heads["flops"], "flops", op, resamples), heads["flops"])
        extra["wallclock_speedup_over_switching_at_equal_mse"] = _headline(
            speedup.bootstrap_compare(sweep_, "switch", heads["seconds"], "seconds", op,
                                      resamples), heads["seconds"])
    return {
        **extra,
        "best_method": heads["flops"],
        "best_method_seconds": heads["seconds"],
        "best_method_selection": {"how": how, "scores": chosen},
        "speedup_at_equal_mse": _headline(flop_head, heads["flops"]),
        "wallclock_speedup_at_equal_mse": _headline(wall_head, heads["seconds"]),
        "mse_ratio_at_equal_cost": {
            "value": flop_head["error_ratio_at_equal_cost"],
            "ci": flop_head["error_ratio_at_equal_cost_ci"],
            "at_cost_flops": flop_head["equal_cost"],
            "at_cost_flops_ci": flop_head["equal_cost_ci"],
            "max": flop_head["error_ratio_max"], "max_ci": flop_head["error_ratio_max_ci"],
            "max_at_cost_flops": flop_head["error_ratio_max_at_cost"],
            "curve": heads["flops"],
            "definition": "EM's MSE at the FLOPs ML-EM pays for the operating MSE, divided by "
                          "the operating MSE; max: the largest EM ÷ ML-EM MSE ratio at equal "
                          "FLOPs over the cost range both envelopes cover"},
        "top_level_evals_at_operating_point": {
            "value": flop_head["equal_cost"] / top_flops,
            "ci": [v / top_flops for v in flop_head["equal_cost_ci"]],
            "curve": heads["flops"],
            "definition": "FLOPs of the best variant's whole solve at the operating MSE, in "
                          "evaluations of the top level (EM there pays its step count)"},
        "operating_point": op_text, "num_realisations": sweep_.num_realisations,
        "num_selection_realisations": len({r["realisation"] for r in selection}),
        "comparisons": comparisons,
        "envelopes": envelopes(configs, sweep_),
        "curves": {c: {ruler: _curve_band(sweep_, c, ruler, resamples) for ruler in COSTS}
                   for c in curves},
    }


def _headline(stats: dict, curve: str) -> dict:
    return {"max": stats["max"], "max_ci": stats["max_ci"], "max_at_mse": stats["max_at_error"],
            "at_operating_point": stats["at_operating_point"],
            "at_operating_point_ci": stats["at_operating_point_ci"],
            "operating_point_mse": stats["operating_point_error"],
            "undefined_fraction_at_operating_point": stats["at_operating_point_undefined"],
            "curve": curve}


def envelopes(configs: Sequence[dict], sweep_: speedup.Sweep) -> dict:
    """Per curve and ruler: the envelope of the realisation-averaged points, with the MSE's
    standard error over realisations and the configurations on it."""
    mse, costs = sweep_.means(np.arange(sweep_.num_realisations))
    se = sweep_.error.std(1, ddof=1) / np.sqrt(sweep_.num_realisations)
    out: dict[str, dict] = {}
    for curve in sorted(set(sweep_.curve)):
        out[curve] = {}
        for ruler in COSTS:
            env = sweep_.envelope(curve, mse, costs[ruler])
            out[curve][ruler] = {
                "cost": env.cost.tolist(), "mse": env.error.tolist(),
                "mse_se": se[env.index].tolist(),
                "points": [{k: configs[i][k] for k in ("level", "top_evals", "c", "steps")}
                           for i in env.index]}
    return out


def _curve_band(sweep_: speedup.Sweep, curve: str, ruler: str, resamples: int,
                num: int = 60) -> dict:
    """The speedup curve on all realisations and its pointwise 95% bootstrap band."""
    mse, costs = sweep_.means(np.arange(sweep_.num_realisations))
    em, ml = (sweep_.envelope(c, mse, costs[ruler]) for c in ("em", curve))
    grid, values = speedup.speedup_curve(em, ml, num)
    if grid.size == 0:
        return {"mse": [], "speedup": [], "lo": [], "hi": []}

    def at_grid(idx):
        m, c = sweep_.means(idx)
        s = speedup.speedup_at(sweep_.envelope("em", m, c[ruler]),
                               sweep_.envelope(curve, m, c[ruler]), grid)
        return {str(i): v for i, v in enumerate(s)}

    boot = speedup.bootstrap(at_grid, sweep_.num_realisations, resamples, seed=1)
    bands = np.array([speedup.percentile_interval(boot[str(i)]) for i in range(grid.size)])
    return {"mse": grid.tolist(), "speedup": values.tolist(), "lo": bands[:, 0].tolist(),
            "hi": bands[:, 1].tolist()}
