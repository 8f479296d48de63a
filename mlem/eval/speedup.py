"""The statistics of a cost–error comparison of two samplers (docs/design.md §3).

Every headline number of the image sweeps (:mod:`analysis.comparison`), the learned-schedule
comparison (:mod:`analysis.learn_probs`) and the synthetic testbed comes out of
:func:`compare_at_targets`, whose rules are the only way this module produces a number:

1. **Targets are fixed before evaluation.** A target is an error (MSE) given by the caller:
   predeclared, or measured on the *selection* realisations (the operating MSE).
2. **Paths are chosen on the selection realisations.** A method's *path* is the list of its
   configurations on the lower envelope of the selection means, cheapest first
   (:func:`choose_path`). Nothing is chosen on the evaluation realisations.
3. **Cost to reach a target** on the evaluation realisations: walk the path cheapest first to
   the first configuration whose mean error is at most the target and interpolate ``log
   cost`` against ``log error`` with the configuration before it (:func:`cost_to_reach`).
   A path that never gets there costs ``+inf``: a **failure**, counted, never dropped.
4. **Speedup** = ``cost_base / cost_other``: ``0`` where only ``other`` fails, ``inf`` where
   only ``base`` does, undefined (NaN) where both do. No maximum over a curve judged on the
   same realisations is ever reported (the exploratory curves below are pictures).
5. **Intervals**: the *expanded percentile* bootstrap over evaluation realisations (a seed
   and batch with its own noise, path and draws), the path held fixed. Hesterberg (2015, *What
   teachers should know about the bootstrap*, §5) widens the percentile levels to
   ``Φ(±sqrt(n/(n−1)) t_{n−1, 1−α/2})``, which repairs the percentile interval's
   undercoverage at small ``n``; ``python -m benchmarks.coverage`` measures the coverage.
   Resamples that fail count at their value (0 or inf); an undefined one counts at the
   lower end as 0 and at the upper end as inf. The point value on all evaluation
   realisations is ``None`` ("not reached") when it is not finite and positive; its interval
   then reaches 0 or inf by itself.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from scipy import stats

__all__ = ["INTERVAL", "Envelope", "Sweep", "bootstrap", "choose_path", "common_range",
           "compare_at_targets", "compare_paths", "cost_exponent", "cost_to_reach",
           "error_at_cost", "estimate", "expanded_levels", "interval", "loglog_interp",
           "lower_envelope", "percentile_interval", "reached_by_all", "resample_weights",
           "score_at_target", "signed_estimate", "speedup_at", "speedup_curve"]

INTERVAL = "expanded percentile bootstrap over evaluation realisations (Hesterberg 2015)"

# --- envelopes and interpolation ----------------------------------------------------------


def lower_envelope(costs: Sequence[float], errors: Sequence[float]) -> np.ndarray:
    """Indices of the Pareto front: no other point is both cheaper-or-equal and more accurate.

    Returned in order of increasing cost; along them the error strictly decreases.
    """
    costs, errors = np.asarray(costs, np.float64), np.asarray(errors, np.float64)
    if costs.shape != errors.shape or costs.ndim != 1 or costs.size == 0:
        raise ValueError(f"costs, errors: need two 1-D arrays of equal non-zero length, got "
                         f"{costs.shape} and {errors.shape}")
    order = np.lexsort((errors, costs))
    keep, best = [], np.inf
    for i in order:
        if errors[i] < best:
            keep.append(i)
            best = errors[i]
    return np.array(keep, dtype=int)


@dataclasses.dataclass(frozen=True)
class Envelope:
    """A lower envelope: ``cost`` increasing, ``error`` strictly decreasing, ``index`` the
    positions of its vertices among the points it was taken from."""

    cost: np.ndarray
    error: np.ndarray
    index: np.ndarray

    @classmethod
    def of(cls, costs: Sequence[float], errors: Sequence[float]) -> Envelope:
        """The envelope of the points with positive, finite cost and error."""
        costs, errors = np.asarray(costs, np.float64), np.asarray(errors, np.float64)
        valid = np.flatnonzero((costs > 0) & (errors > 0) & np.isfinite(costs)
                               & np.isfinite(errors))
        if valid.size == 0:
            raise ValueError("costs, errors: no point with positive finite cost and error")
        front = valid[lower_envelope(costs[valid], errors[valid])]
        return cls(costs[front], errors[front], front)

    def cost_at(self, errors: Sequence[float] | float) -> np.ndarray:
        """The envelope's cost at ``errors`` (NaN outside its error range)."""
        return loglog_interp(errors, self.error, self.cost)

    def error_at(self, costs: Sequence[float] | float) -> np.ndarray:
        """The envelope's error at ``costs`` (NaN outside its cost range)."""
        return loglog_interp(costs, self.cost, self.error)


def loglog_interp(x: Sequence[float] | float, xp: Sequence[float],
                  fp: Sequence[float]) -> np.ndarray:
    """Piecewise-linear interpolation of ``log fp`` against ``log xp`` at ``x``; NaN outside.

    ``xp`` may be increasing or decreasing; values must be positive (``x`` may hold NaN,
    which gives NaN). Exact for power laws.
    """
    xp, fp = np.asarray(xp, np.float64), np.asarray(fp, np.float64)
    x = np.atleast_1d(np.asarray(x, np.float64))
    if np.any(xp <= 0) or np.any(fp <= 0) or np.any(x <= 0):
        raise ValueError("loglog_interp: every value must be positive")
    if xp.size > 1 and xp[0] > xp[-1]:
        xp, fp = xp[::-1], fp[::-1]
    if np.any(np.diff(xp) <= 0):
        raise ValueError("xp: must be strictly monotone")
    lx, lxp = np.log(x), np.log(xp)
    out = np.exp(np.interp(lx, lxp, np.log(fp)))
    inside = (lx >= lxp[0] - 1e-12) & (lx <= lxp[-1] + 1e-12)
    return np.where(inside, out, np.nan)


def common_range(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """The overlap ``[lo, hi]`` of the ranges of ``a`` and ``b``; ``None`` if they do not meet."""
    lo, hi = max(np.min(a), np.min(b)), min(np.max(a), np.max(b))
    return (float(lo), float(hi)) if lo <= hi else None


# --- exploratory curves (pictures, never headlines) -----------------------------------------


def speedup_at(base: Envelope, other: Envelope, errors: Sequence[float] | float) -> np.ndarray:
    """``cost_base(e) / cost_other(e)`` along two envelopes (NaN where either does not reach
    ``e``): the exploratory curve, whose maximum is never reported."""
    return base.cost_at(errors) / other.cost_at(errors)


def speedup_curve(base: Envelope, other: Envelope, num: int = 200
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(errors, speedup)`` on ``num`` log-spaced errors of the common range (figures)."""
    span = common_range(base.error, other.error)
    if span is None:
        return np.empty(0), np.empty(0)
    grid = np.geomspace(*span, num) if span[0] < span[1] else np.array([span[0]])
    return grid, speedup_at(base, other, grid)


# --- sweeps, paths and the cost to reach a target ---------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A coupled sweep measured on ``R`` realisations.

    Attributes:
      curve: ``(P,)`` the curve (method) of each configuration, e.g. ``"em"``.
      error: ``(P, R)`` error of configuration ``p`` on realisation ``r`` (MSE or RMSE²).
      costs: named ``(P,)`` or ``(P, R)`` costs: a ``(P,)`` cost is fixed (FLOPs of EM, the
        expected FLOPs of an ML-EM schedule, seconds timed as deployed), a ``(P, R)`` one is
        measured per realisation and averaged over the realisations of a resample like the
        error.
    """

    curve: np.ndarray
    error: np.ndarray
    costs: Mapping[str, np.ndarray]

    def __post_init__(self):
        num_points = self.error.shape[0]
        if self.error.ndim != 2 or self.curve.shape != (num_points,):
            raise ValueError(f"error: need (P, R) with one curve name per point; got error "
                             f"{self.error.shape}, curve {self.curve.shape}")
        for name, c in self.costs.items():
            if c.shape not in ((num_points,), self.error.shape):
                raise ValueError(f"costs[{name!r}]: need shape ({num_points},) or "
                                 f"{self.error.shape}, got {c.shape}")

    @property
    def num_realisations(self) -> int:
        return self.error.shape[1]

    def columns(self, idx: Sequence[int]) -> Sweep:
        """The same configurations on the realisations ``idx`` only."""
        idx = np.asarray(idx, int)
        return Sweep(self.curve, self.error[:, idx],
                     {k: v if v.ndim == 1 else v[:, idx] for k, v in self.costs.items()})

    def means(self, idx: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Error and costs averaged over the realisations ``idx`` (with repeats)."""
        avg = lambda a: a if a.ndim == 1 else a[:, idx].mean(1)
        return self.error[:, idx].mean(1), {k: avg(v) for k, v in self.costs.items()}

    def envelope(self, curve: str, error: np.ndarray, cost: np.ndarray) -> Envelope:
        """The envelope of ``curve``'s points; ``index`` refers to all ``P`` points."""
        members = np.flatnonzero(self.curve == curve)
        if members.size == 0:
            raise ValueError(f"curve {curve!r}: no such points in the sweep")
        env = Envelope.of(cost[members], error[members])
        return dataclasses.replace(env, index=members[env.index])


def choose_path(selection: Sweep, curve: str, cost: str) -> np.ndarray:
    """``(L,)`` configuration indices of ``curve``'s lower envelope on the realisation-averaged
    *selection* errors, cheapest first: the configurations a user would run (rule 2)."""
    error, costs = selection.means(np.arange(selection.num_realisations))
    return selection.envelope(curve, error, costs[cost]).index


def cost_to_reach(cost: np.ndarray, error: np.ndarray, target: float) -> np.ndarray:
    """``(B,)`` cost of reaching ``target`` along paths of ``(B, L)`` costs and mean errors.

    The first configuration (cheapest first) whose error is at most ``target`` gives it:
    ``log cost`` is interpolated in ``log error`` between it and the one before it; if the
    cheapest already reaches the target its own cost is used (the sweep goes no cheaper);
    ``+inf`` where no configuration reaches the target (rule 3).
    """
    cost, error = np.atleast_2d(cost).astype(np.float64), np.atleast_2d(error).astype(np.float64)
    reached = error <= target
    first = np.argmax(reached, axis=1)
    rows = np.arange(error.shape[0])
    prev = np.maximum(first - 1, 0)
    c0, c1 = np.log(cost[rows, prev]), np.log(cost[rows, first])
    e0, e1 = np.log(error[rows, prev]), np.log(error[rows, first])
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(first > 0, (np.log(target) - e0) / (e1 - e0), 1.0)
    out = np.exp(c0 + np.clip(frac, 0.0, 1.0) * (c1 - c0))
    return np.where(reached.any(axis=1), out, np.inf)


def error_at_cost(cost: np.ndarray, error: np.ndarray, budget: float) -> np.ndarray:
    """``(B,)`` error at ``budget`` along paths of ``(B, L)`` increasing costs and mean errors
    (``log error`` interpolated in ``log cost``); ``+inf`` where the budget lies outside the
    path's cost range (the method was not run at that cost: a failure)."""
    cost, error = np.atleast_2d(cost).astype(np.float64), np.atleast_2d(error).astype(np.float64)
    out = np.full(cost.shape[0], np.inf)
    for b in range(cost.shape[0]):  # B ≤ a few thousand, L ≤ a few dozen
        if cost[b, 0] * (1 - 1e-12) <= budget <= cost[b, -1] * (1 + 1e-12):
            out[b] = np.exp(np.interp(np.log(budget), np.log(cost[b]), np.log(error[b])))
    return out


# --- the bootstrap and its intervals -------------------------------------------------------------


def resample_weights(num_units: int, num_resamples: int, seed: int = 0) -> np.ndarray:
    """``(num_resamples, num_units)`` weights of resamples with replacement of the units
    (counts ÷ ``num_units``): ``weights @ values.T`` are resampled means."""
    if num_units < 2 or num_resamples < 1:
        raise ValueError(f"bootstrap: need >= 2 units and >= 1 resample, got {num_units}, "
                         f"{num_resamples}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, num_units, (num_resamples, num_units))
    counts = np.zeros((num_resamples, num_units))
    np.add.at(counts, (np.arange(num_resamples)[:, None], draws), 1.0)
    return counts / num_units


def expanded_levels(num_units: int, level: float = 0.95) -> tuple[float, float]:
    """The expanded percentile bootstrap's quantile levels for ``num_units`` units (rule 5)."""
    if num_units < 2:
        raise ValueError(f"need >= 2 units for an interval, got {num_units}")
    z = np.sqrt(num_units / (num_units - 1)) * stats.t.ppf(0.5 + level / 2, num_units - 1)
    tail = float(stats.norm.cdf(-z))
    return tail, 1.0 - tail


def interval(values: Sequence[float], num_units: int, level: float = 0.95
             ) -> tuple[float, float]:
    """The expanded percentile interval of bootstrap ``values`` (0 and inf allowed: failures);
    an undefined (NaN) value counts as 0 at the lower end and as inf at the upper end."""
    values = np.asarray(values, np.float64)
    lo_q, hi_q = expanded_levels(num_units, level)
    lo = np.quantile(np.where(np.isnan(values), 0.0, values), lo_q, method="lower")
    hi = np.quantile(np.where(np.isnan(values), np.inf, values), hi_q, method="higher")
    return float(lo), float(hi)


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Plain percentile interval of the finite ``values``, for estimates that cannot fail (the
    γ fits, whose failed resamples are counted separately); NaN, NaN if none is finite."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def bootstrap(statistic: Callable[[np.ndarray], Mapping[str, float]], num_units: int,
              num_resamples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``statistic(idx)`` on ``num_resamples`` resamples ``idx`` (with replacement) of
    ``range(num_units)``: for fits that are not vectorised (the γ fits, the synthetic
    exponents). A resample on which the statistic fails (``ValueError``, or ``RuntimeError``
    from a fit that does not converge) gives NaN for every name, so it is counted."""
    if num_units < 2 or num_resamples < 1:
        raise ValueError(f"bootstrap: need >= 2 units and >= 1 resample, got {num_units}, "
                         f"{num_resamples}")
    rng = np.random.default_rng(seed)
    results: list[Mapping[str, float]] = []
    for _ in range(num_resamples):
        try:
            results.append(statistic(rng.integers(0, num_units, num_units)))
        except (ValueError, RuntimeError):
            results.append({})
    names = dict.fromkeys(name for r in results for name in r)
    return {name: np.array([r.get(name, np.nan) for r in results], np.float64)
            for name in names}


def estimate(point: float, resampled: np.ndarray, num_units: int) -> dict:
    """A reported value: ``value`` (``None``, "not reached", unless the point is finite and
    positive), ``ci`` from the resamples with their failures (so an unreached point's interval
    reaches 0 or inf: nothing is invented), the resamples that are 0, inf or undefined, and
    the interval's method."""
    resampled = np.asarray(resampled, np.float64)
    ok = bool(np.isfinite(point) and point > 0)
    return {"value": float(point) if ok else None,
            "ci": list(interval(resampled, num_units)),
            "zero_fraction": float(np.mean(resampled == 0)),
            "inf_fraction": float(np.mean(np.isinf(resampled))),
            "undefined_fraction": float(np.mean(np.isnan(resampled))),
            "interval": INTERVAL}


def signed_estimate(point: float, resampled: np.ndarray, num_units: int) -> dict:
    """A reported value that may be negative (an exponent, a difference of exponents):
    ``value`` (``None`` unless finite) and the expanded percentile ``ci`` of the resamples, an
    undefined (NaN) resample counting as ``-inf`` at the lower end and ``+inf`` at the upper
    end (a failure widens the interval, never drops out)."""
    resampled = np.asarray(resampled, np.float64)
    lo_q, hi_q = expanded_levels(num_units)
    lo = np.quantile(np.where(np.isnan(resampled), -np.inf, resampled), lo_q, method="lower")
    hi = np.quantile(np.where(np.isnan(resampled), np.inf, resampled), hi_q, method="higher")
    return {"value": float(point) if np.isfinite(point) else None,
            "ci": [float(lo), float(hi)],
            "undefined_fraction": float(np.mean(np.isnan(resampled))), "interval": INTERVAL}


def cost_exponent(costs: np.ndarray, targets: Sequence[float]) -> np.ndarray:
    """``(B,)`` exponents ``a`` of ``cost ∝ target^-a``: minus the least-squares slope of
    ``log cost`` against ``log target`` over the targets, for ``(B, T)`` costs to reach each
    target; NaN where a target is not reached (a failure) or there are fewer than 2 targets."""
    costs = np.atleast_2d(np.asarray(costs, np.float64))
    x = np.log(np.asarray(targets, np.float64))
    if x.size < 2:
        return np.full(costs.shape[0], np.nan)
    x = x - x.mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.log(costs)
        slope = ((y - y.mean(1, keepdims=True)) @ x) / (x @ x)
    return np.where(np.isfinite(costs).all(1) & (costs > 0).all(1), -slope, np.nan)


# --- comparing two methods at targets ---------------------------------------------------------


def compare_at_targets(evaluation: Sweep, selection: Sweep, base: str, other: str, cost: str,
                       targets: Mapping[str, float], budget: float | None = None,
                       num_resamples: int = 2000, seed: int = 0) -> dict:
    """``other`` against ``base`` in the cost ``cost``, by rules 1–5 of this module.

    ``evaluation`` and ``selection`` hold the same configurations (rows) on disjoint
    realisations; ``targets`` maps names to target errors fixed before evaluation; ``budget``
    (optional) is a predeclared cost at which the error ratio ``err_base / err_other`` is
    read. Returns, per target: ``speedup`` (:func:`estimate`), ``cost_base`` and
    ``cost_other`` (:func:`estimate`, the cost to reach it), the fraction of resamples on
    which each method fails (``not_reached``); with ``budget``, ``error_ratio_at_budget``; and
    the two paths (configuration indices chosen on the selection realisations); with two
    targets or more, ``exponents``: each method's :func:`cost_exponent` over the targets and
    their difference ``base − other`` (:func:`signed_estimate`).
    """
    if selection.num_realisations < 1:
        raise ValueError("compare_at_targets: need selection realisations to choose paths on")
    paths = {name: choose_path(selection, curve, cost)
             for name, curve in (("base", base), ("other", other))}
    units = evaluation.num_realisations
    weights = np.vstack([np.full(units, 1.0 / units),
                         resample_weights(units, num_resamples, seed)])  # row 0: all

    def along(path):
        error = weights @ evaluation.error[path].T
        c = evaluation.costs[cost][path]
        return np.broadcast_to(c, error.shape) if c.ndim == 1 else weights @ c.T, error

    (cb, eb), (co, eo) = along(paths["base"]), along(paths["other"])
    out: dict = {"base": base, "other": other, "cost": cost,
                 "paths": {k: v.tolist() for k, v in paths.items()},
                 "num_realisations": units,
                 "num_selection_realisations": selection.num_realisations,
                 "num_resamples": num_resamples,
                 **compare_paths(cb, eb, co, eo, targets, units)}
    if budget is not None:
        err_b, err_o = error_at_cost(cb, eb, budget), error_at_cost(co, eo, budget)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = err_b / err_o
        out["error_ratio_at_budget"] = {"budget": float(budget),
                                        **estimate(ratio[0], ratio[1:], units)}
    return out


def reached_by_all(paths: Sequence[tuple[Sequence[float], Sequence[float]]],
                   targets: Mapping[str, float]) -> list[str]:
    """The names of the ``targets`` that every path, ``(costs, errors)`` cheapest first,
    reaches (:func:`cost_to_reach` finite): where exponents can be fitted."""
    return [name for name, t in targets.items()
            if all(np.isfinite(cost_to_reach(c, e, t)[0]) for c, e in paths)]


def compare_paths(cost_base: np.ndarray, error_base: np.ndarray, cost_other: np.ndarray,
                  error_other: np.ndarray, targets: Mapping[str, float], num_units: int,
                  exponent_targets: Sequence[str] | None = None) -> dict:
    """Two methods' chosen paths at the ``targets``: ``(1 + B, L)`` costs and errors along each
    path, row 0 on all evaluation units, rows ``1…B`` on resamples of them (an error need not
    be a mean over units: a distance between sample distributions is recomputed on each
    resample, :mod:`analysis.distributional`). Returns ``targets`` (per target: ``speedup``,
    ``cost_base``, ``cost_other``, ``not_reached``) and, with two targets or more,
    ``exponents`` (:func:`cost_exponent` of each method and their difference)."""
    out: dict = {"targets": {}}
    reach = {"base": [], "other": []}
    for name, target in targets.items():
        reach_b = cost_to_reach(cost_base, error_base, target)
        reach_o = cost_to_reach(cost_other, error_other, target)
        reach["base"].append(reach_b)
        reach["other"].append(reach_o)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = reach_b / reach_o
        out["targets"][name] = {
            "target_error": float(target),
            "speedup": estimate(ratio[0], ratio[1:], num_units),
            "cost_base": estimate(reach_b[0], reach_b[1:], num_units),
            "cost_other": estimate(reach_o[0], reach_o[1:], num_units),
            "not_reached": {"base": float(np.mean(np.isinf(reach_b[1:]))),
                            "other": float(np.mean(np.isinf(reach_o[1:])))}}
    fit = list(targets) if exponent_targets is None else list(exponent_targets)
    if len(fit) >= 2:
        pick = [list(targets).index(n) for n in fit]
        goals = [targets[n] for n in fit]
        a_b, a_o = (cost_exponent(np.stack(reach[k], 1)[:, pick], goals)
                    for k in ("base", "other"))
        out["exponent_targets"] = fit
        out["exponents"] = {"base": signed_estimate(a_b[0], a_b[1:], num_units),
                            "other": signed_estimate(a_o[0], a_o[1:], num_units),
                            "difference": signed_estimate(a_b[0] - a_o[0], a_b[1:] - a_o[1:],
                                                          num_units)}
    return out


def score_at_target(selection: Sweep, base: str, other: str, cost: str, target: float
                    ) -> float:
    """The speedup of ``other`` over ``base`` at ``target`` on the selection realisations
    alone (paths and means both): a score to choose a variant by, never reported as a result."""
    idx = np.arange(selection.num_realisations)
    error, costs = selection.means(idx)
    reach = []
    for curve in (base, other):
        path = choose_path(selection, curve, cost)
        reach.append(cost_to_reach(costs[cost][path], error[path], target)[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(reach[0] / reach[1])
