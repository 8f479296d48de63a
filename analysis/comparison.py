"""From the sweep's rows to its statistics: every ML-EM curve against EM at equal MSE, in
FLOPs and in seconds, with 95% intervals over realisations (docs/design.md §3).

:func:`analyse` turns the rows of ``points.csv`` (one per configuration and realisation,
written by :mod:`analysis.cost_error`) into the headline numbers, the envelopes and the
exploratory curves for the figures. The rules (targets and paths from the selection
realisations, failures counted, expanded percentile intervals) are those of
:mod:`mlem.eval.speedup`, the only place a number is produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from mlem.eval import speedup

CONFIG_KEY = ("curve", "level", "top", "top_evals", "switch_at", "steps")  # one configuration
COSTS = {"flops": "expected_flops", "seconds": "seconds"}  # the two rulers and their columns


def curve_name(schedule: str, cost_model: str) -> str:
    """The name of an ML-EM curve: ``mlem-<schedule>-<cost model>``."""
    return f"mlem-{schedule}-{cost_model}"


def schedule_names(config: Any) -> tuple[str, ...]:
    names = tuple(config.analysis.schedules)
    unknown = set(names) - {"variance", "constant", "dyadic", "learned"}
    if unknown or not names:
        raise ValueError(f"config.analysis.schedules: choose from variance, constant, dyadic, "
                         f"learned; got {names}")
    return names


def config_key(point: dict) -> tuple:
    return tuple(f"{float(point.get(k) or 0.0):.6g}" if k in ("top_evals", "switch_at")
                 else str(point[k]) for k in CONFIG_KEY)



def own_ladder_rows(rows: Sequence[dict], num_levels: int) -> list[dict]:
    """The *own-ladder* framing ("how cheaply can I sample my best model?"): EM at every
    level, ML-EM and switching on the whole ladder, all judged against the top level on the
    reference grid."""
    return [r for r in rows if r["method"] == "em" or r["top"] == num_levels]


def oracle_rows(rows: Sequence[dict], num_levels: int) -> list[dict]:
    """The *oracle* framing (the paper's): every configuration that uses only levels below
    the top (EM at levels ``1…K−1``, ML-EM and switching on the prefix ladders), judged
    against the top level on the reference grid, which is more accurate than all of them."""
    return [r for r in rows if r["top"] < num_levels]


def oracle_enabled(config: Any) -> bool:
    """Whether the oracle framing is analysed: targets given as MSEs or as ratios."""
    a = config.analysis
    return bool(a.oracle_targets or a.oracle_target_ratios)


def oracle_targets(config: Any, selection_rows: Sequence[dict] = (), num_levels: int = 0
                   ) -> dict[str, float]:
    """The oracle framing's targets, coarsest first, named ``MSE <value>``: the MSEs
    ``config.analysis.oracle_targets`` predeclared in the config, or, for a ladder without a
    pilot run, ``oracle_target_ratios`` × the *selection* realisations' mean MSE of EM with
    level ``K−1`` (the best level below the oracle) on the finest EM grid (rule 1 of
    :mod:`mlem.eval.speedup`: chosen on the selection realisations). Empty when off."""
    a = config.analysis
    goals = [float(t) for t in a.oracle_targets]
    ratios = [float(r) for r in a.oracle_target_ratios]
    if goals and ratios:
        raise ValueError("config.analysis.oracle_targets and oracle_target_ratios: set one")
    if ratios:
        finest = max(int(n) for n in a.em_steps)
        base = [r["mse"] for r in selection_rows if r["method"] == "em"
                and r["level"] == num_levels - 1 and r["steps"] == finest]
        if not base:
            raise ValueError(f"config.analysis.oracle_target_ratios: need EM at level "
                             f"{num_levels - 1} with {finest} steps on selection realisations")
        goals = [r * float(np.mean(base)) for r in ratios]
    goals = sorted(goals, reverse=True)
    if any(t <= 0 for t in goals) or len(set(goals)) != len(goals):
        raise ValueError(f"config.analysis.oracle_targets: distinct positive MSEs, got {goals}")
    return {f"MSE {t:.4g}": t for t in goals}


def split_rows(rows: Sequence[dict], config: Any) -> tuple[list[dict], list[dict]]:
    """``(evaluation rows, selection rows)``: realisations ``0…R−1`` (``analysis.realisations``,
    every reported statistic) and ``R…R+S−1`` (``analysis.selection_realisations``, used only
    to choose: the best ML-EM variant, a search pattern)."""
    num = int(config.analysis.realisations)
    return ([r for r in rows if r["realisation"] < num],
            [r for r in rows if r["realisation"] >= num])


def table(rows: Sequence[dict]) -> tuple[list[dict], speedup.Sweep]:
    """Configurations (first row of each) and the :class:`~mlem.eval.speedup.Sweep` of ``rows``:
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
    if config.analysis.operating_point != "auto":
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


def targets(config: Any, operating_mse: float) -> dict[str, float]:
    """The predeclared targets: ``config.analysis.target_ratios`` × the operating MSE (which
    is measured on the selection realisations), named ``operating point`` (ratio 1) and
    ``<r>x operating MSE``."""
    ratios = tuple(float(r) for r in config.analysis.target_ratios)
    if not ratios or min(ratios) <= 0 or 1.0 not in ratios:
        raise ValueError(f"config.analysis.target_ratios: positive multiples of the operating "
                         f"MSE that include 1.0, got {ratios}")
    return {("operating point" if r == 1.0 else f"{r:g}x operating MSE"): r * operating_mse
            for r in ratios}


def candidate_curves(curves: Sequence[str]) -> list[str]:
    """The ML-EM variants the best is chosen from: every ``mlem-*`` curve except pattern
    search, whose pattern was itself chosen on the selection realisations (its selection
    error is optimistic, so it would win the choice unfairly)."""
    return [c for c in curves if c.startswith("mlem-") and not c.startswith("mlem-pattern")]


def select_best(selection: speedup.Sweep, operating_mse: float) -> dict:
    """Per ruler, the ML-EM variant with the largest speedup over EM at the operating MSE on
    the *selection* realisations (paths and means both), with every candidate's score:
    ``{ruler: {"curve", "scores"}}``. An unreached target scores 0."""
    out = {}
    for ruler in COSTS:
        scores = {c: speedup.score_at_target(selection, "em", c, ruler, operating_mse)
                  for c in candidate_curves(sorted(set(selection.curve)))}
        if not scores:
            raise ValueError("the sweep has no ML-EM curve to choose from")
        rank = {c: v if np.isfinite(v) else (np.inf if v > 0 else -1.0)
                for c, v in scores.items()}
        out[ruler] = {"curve": max(rank, key=rank.get), "scores": scores}
    return out


def analyse(rows: Sequence[dict], config: Any, num_levels: int) -> dict:
    """Every ML-EM curve (and switching) against EM in FLOPs and in seconds by the rules of
    :mod:`mlem.eval.speedup`: targets and paths from the selection realisations, costs and
    intervals from the evaluation realisations; the headline numbers of docs/design.md §3 for
    the best ML-EM variant (chosen on the selection realisations); envelopes and the
    exploratory curves for the figures."""
    num = int(config.analysis.realisations)
    configs, sweep_ = table(rows)  # columns: realisations 0…R−1, then the selection ones
    if sweep_.num_realisations <= num:
        raise ValueError("config.analysis.selection_realisations: must be >= 1 (targets and "
                         "each method's configurations are chosen on them)")
    evaluation = sweep_.columns(range(num))
    selection = sweep_.columns(range(num, sweep_.num_realisations))
    op, op_text = operating_point(config, configs, evaluation, num_levels)
    op_mse = float(selection.error[op].mean())
    goals = targets(config, op_mse)
    mean_costs = evaluation.means(np.arange(evaluation.num_realisations))[1]
    budget = {ruler: float(mean_costs[ruler][op]) for ruler in COSTS}
    resamples = int(config.analysis.speedup_bootstrap)
    curves = sorted(set(evaluation.curve) - {"em"})
    run = lambda base, other, ruler: speedup.compare_at_targets(
        evaluation, selection, base, other, ruler, goals, budget[ruler], resamples)
    comparisons = {c: {ruler: run("em", c, ruler) for ruler in COSTS} for c in curves}
    best = select_best(selection, op_mse)
    heads = {ruler: best[ruler]["curve"] for ruler in COSTS}
    num_sel = selection.num_realisations
    how = (f"chosen on {num_sel} selection realisations (largest speedup over EM at the "
           f"operating MSE), evaluated on the {evaluation.num_realisations} others")
    flop_head = comparisons[heads["flops"]]["flops"]
    top_flops = float(budget["flops"] / configs[op]["steps"])  # one top-level call
    extra = {}
    if "switch" in curves:  # the baseline a user would pick instead: the best variant over it
        for ruler, key in (("flops", "speedup_over_switching_at_equal_mse"),
                           ("seconds", "wallclock_speedup_over_switching_at_equal_mse")):
            extra[key] = _headline(run("switch", heads[ruler], ruler), how)
    cost_op = flop_head["targets"]["operating point"]["cost_other"]
    ratio = flop_head["error_ratio_at_budget"]
    return {
        **extra,
        "best_method": heads["flops"],
        "best_method_seconds": heads["seconds"],
        "best_method_selection": {"how": how, "scores": best},
        "speedup_at_equal_mse": _headline(flop_head, how),
        "wallclock_speedup_at_equal_mse": _headline(comparisons[heads["seconds"]]["seconds"],
                                                    how),
        "mse_ratio_at_equal_cost": {
            "value": ratio["value"], "ci": ratio["ci"], "at_cost_flops": budget["flops"],
            "zero_fraction": ratio["zero_fraction"], "interval": ratio["interval"],
            "curve": heads["flops"],
            "definition": "EM's MSE at the operating point's FLOPs (its operating "
                          "configuration) ÷ the best variant's MSE at the same FLOPs, "
                          "interpolated along its path chosen on the selection realisations"},
        "top_level_evals_at_operating_point": {
            "value": None if cost_op["value"] is None else cost_op["value"] / top_flops,
            "ci": [v / top_flops for v in cost_op["ci"]],
            "not_reached_fraction": cost_op["inf_fraction"], "interval": cost_op["interval"],
            "curve": heads["flops"],
            "definition": "FLOPs of the best variant's whole solve at the operating MSE, in "
                          "evaluations of the top level (EM there pays its step count)"},
        "operating_point": op_text, "operating_point_mse": op_mse,
        "targets": goals,
        "num_realisations": evaluation.num_realisations,
        "num_selection_realisations": num_sel,
        "comparisons": comparisons,
        "envelopes": envelopes(configs, evaluation),
        "curves": {c: {ruler: _curve_band(evaluation, c, ruler, min(resamples, 1000))
                       for ruler in COSTS} for c in curves},
    }


def analyse_oracle(rows: Sequence[dict], config: Any, num_levels: int) -> dict | None:
    """The oracle framing (:func:`oracle_rows`) at the predeclared ``oracle_targets``: for
    every ML-EM curve and switching against EM, and every ML-EM curve against switching, in
    FLOPs and in seconds, the cost of each method to reach each target, the speedups, and
    the exponents of cost against the target with their difference (docs/design.md §3).
    Each method's path (its level or prefix ladder, steps, budget) is chosen on the
    selection realisations. ``None`` when no oracle target is declared."""
    if not oracle_enabled(config):
        return None
    goals = oracle_targets(config, split_rows(rows, config)[1], num_levels)
    sub = oracle_rows(rows, num_levels)
    if not sub or not {r["curve"] for r in sub} - {"em"}:
        raise ValueError("config.analysis.prefix_tops: the oracle framing needs ML-EM or "
                         "switching on a prefix ladder below the top level (e.g. prefix_tops "
                         f"= ({num_levels - 1},))")
    num = int(config.analysis.realisations)
    _, sweep_ = table(sub)
    evaluation = sweep_.columns(range(num))
    selection = sweep_.columns(range(num, sweep_.num_realisations))
    resamples = int(config.analysis.speedup_bootstrap)
    run = lambda base, other, ruler: speedup.compare_at_targets(
        evaluation, selection, base, other, ruler, goals, None, resamples)
    curves = sorted(set(evaluation.curve) - {"em"})
    comparisons = {f"{c} vs em": {ruler: run("em", c, ruler) for ruler in COSTS}
                   for c in curves}
    if "switch" in curves:
        comparisons.update({f"{c} vs switch": {ruler: run("switch", c, ruler) for ruler in COSTS}
                            for c in curves if c != "switch"})
    return {"framing": f"oracle: methods use levels 1..{num_levels - 1} (EM one level, ML-EM "
                       f"and switching a prefix ladder), judged against level {num_levels} on "
                       f"the reference grid",
            "levels": list(range(1, num_levels)), "targets": goals,
            "num_realisations": evaluation.num_realisations,
            "num_selection_realisations": selection.num_realisations,
            "comparisons": comparisons}


def _headline(stats: dict, how: str) -> dict:
    """A comparison's headline fields: the value at the operating point with its interval,
    the fractions of resamples where either method fails, every predeclared target, and how
    the compared configurations were chosen."""
    at = stats["targets"]["operating point"]
    return {"at_operating_point": at["speedup"]["value"],
            "at_operating_point_ci": at["speedup"]["ci"],
            "operating_point_mse": at["target_error"],
            "not_reached_fraction": at["not_reached"],
            "undefined_fraction": at["speedup"]["undefined_fraction"],
            "interval": at["speedup"]["interval"],
            "targets": {name: {"target_mse": t["target_error"], "value": t["speedup"]["value"],
                               "ci": t["speedup"]["ci"], "not_reached": t["not_reached"]}
                        for name, t in stats["targets"].items()},
            "curve": stats["other"], "against": stats["base"], "chosen_on": how}


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
    """Exploratory: the speedup curve along the evaluation envelopes and its pointwise 95%
    percentile band (a picture; its maximum is never reported)."""
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
