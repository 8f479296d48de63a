"""The mathematics of the cost–error comparison of two samplers (docs/design.md §3).

Everything that turns swept points into a headline number lives here, for the image sweeps
(:mod:`analysis.cost_error`) and the synthetic testbed (:mod:`analysis.synthetic`) alike:

* **Envelopes.** The lower envelope (Pareto front) of a method's ``(cost, error)`` points.
* **Interpolation** of ``log cost`` against ``log error`` along an envelope, piecewise
  linear (exact for power laws), never extrapolated (NaN outside the envelope's range).
* **Speedup at equal error** ``cost_base(e) / cost_other(e)`` and **error ratio at equal
  cost** ``err_base(c) / err_other(c)``. Along two envelopes ``log speedup`` is piecewise
  linear in ``log e`` with kinks only at the envelopes' vertices, so its maximum over the
  common error range is attained at a vertex (or at an end of the range) and is found
  exactly by :func:`max_speedup`.
* **Realisations and the bootstrap.** A sweep is measured on ``R`` realisations (a seed and
  batch with its own noise, Brownian path and Bernoulli draws). :func:`compare` runs the whole
  pipeline — mean over realisations, envelopes, interpolation, maximum — on one set of
  realisation indices; :func:`bootstrap_compare` reruns it on resampled indices (the same
  resample for every configuration: runs of one realisation are coupled), so the selection
  bias of an envelope taken over noisy points sits inside the interval.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

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


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (NaN with fewer than two points)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or np.ptp(np.log(x)) == 0:
        return float("nan")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


# --- comparing two envelopes ----------------------------------------------------------------


def speedup_at(base: Envelope, other: Envelope, errors: Sequence[float] | float) -> np.ndarray:
    """``cost_base(e) / cost_other(e)`` (NaN where either envelope does not reach ``e``)."""
    return base.cost_at(errors) / other.cost_at(errors)


def error_ratio_at(base: Envelope, other: Envelope, costs: Sequence[float] | float
                   ) -> np.ndarray:
    """``err_base(c) / err_other(c)`` (NaN where either envelope does not reach ``c``)."""
    return base.error_at(costs) / other.error_at(costs)


def max_speedup(base: Envelope, other: Envelope) -> tuple[float, float]:
    """``(max speedup, error where it occurs)`` over the common error range, exactly.

    The candidates are every vertex of either envelope inside the common range and the
    range's ends; ``(NaN, NaN)`` if the envelopes share no error range.
    """
    return _max_at_vertices(base.error, other.error, lambda e: speedup_at(base, other, e))


def max_error_ratio(base: Envelope, other: Envelope) -> tuple[float, float]:
    """``(max error ratio at equal cost, cost where it occurs)`` over the common cost range,
    exactly, like :func:`max_speedup`; ``(NaN, NaN)`` if the envelopes share no cost range."""
    return _max_at_vertices(base.cost, other.cost, lambda c: error_ratio_at(base, other, c))


def _max_at_vertices(a: np.ndarray, b: np.ndarray, values: Callable[[np.ndarray], np.ndarray]
                     ) -> tuple[float, float]:
    """The maximum of ``values`` over the overlap of the ranges of ``a`` and ``b``, among their
    points and the overlap's ends (exact for a function piecewise linear in log–log with kinks
    at those points), and where it is attained."""
    span = common_range(a, b)
    if span is None:
        return float("nan"), float("nan")
    lo, hi = span
    candidates = np.concatenate([a, b, [lo, hi]])
    candidates = candidates[(candidates >= lo) & (candidates <= hi)]
    at = values(candidates)
    if not np.isfinite(at).any():
        return float("nan"), float("nan")
    best = int(np.nanargmax(at))
    return float(at[best]), float(candidates[best])


def speedup_curve(base: Envelope, other: Envelope, num: int = 200
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(errors, speedup)`` on ``num`` log-spaced errors of the common range (for figures)."""
    grid = _common_grid(base.error, other.error, num)
    return grid, speedup_at(base, other, grid)


def error_ratio_curve(base: Envelope, other: Envelope, num: int = 200
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(costs, error ratio)`` on ``num`` log-spaced costs of the common cost range."""
    grid = _common_grid(base.cost, other.cost, num)
    return grid, error_ratio_at(base, other, grid)


def _common_grid(a: np.ndarray, b: np.ndarray, num: int) -> np.ndarray:
    """``num`` log-spaced points of the overlap of two ranges (empty if they do not meet)."""
    span = common_range(a, b)
    if span is None:
        return np.empty(0)
    return np.geomspace(*span, num) if span[0] < span[1] else np.array([span[0]])


# --- realisations and the bootstrap -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sweep:
    """A coupled sweep measured on ``R`` realisations.

    Attributes:
      curve: ``(P,)`` the curve (method) of each configuration, e.g. ``"em"``.
      error: ``(P, R)`` error of configuration ``p`` on realisation ``r`` (MSE or RMSE²).
      costs: named ``(P,)`` or ``(P, R)`` costs: a ``(P,)`` cost is fixed (FLOPs of EM, the
        expected FLOPs of an ML-EM schedule), a ``(P, R)`` one is measured per realisation
        (seconds) and averaged over the realisations of a resample like the error.
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


def compare(sweep: Sweep, base: str, other: str, cost: str, idx: np.ndarray,
            operating_point: int) -> dict[str, float]:
    """The headline statistics of ``other`` against ``base`` in cost ``cost`` on ``idx``.

    ``operating_point`` is the index of a ``base`` configuration; its mean error is the
    operating error. Returns ``max`` and ``max_at_error`` (exact), ``at_operating_point``,
    ``operating_point_error``, ``equal_cost`` (what ``other`` pays for the operating error)
    and ``error_ratio_at_equal_cost`` (``base``'s error at that cost ÷ the operating error),
    ``error_ratio_max`` and ``error_ratio_max_at_cost`` (:func:`max_error_ratio`); NaN where
    an envelope does not reach.
    """
    error, costs = sweep.means(idx)
    env_base = sweep.envelope(base, error, costs[cost])
    env_other = sweep.envelope(other, error, costs[cost])
    best, best_at = max_speedup(env_base, env_other)
    op_error = error[operating_point]
    equal_cost = float(env_other.cost_at(op_error)[0])
    ratio = (float(error_ratio_at(env_base, env_other, equal_cost)[0]) if np.isfinite(equal_cost)
             else float("nan"))
    ratio_max, ratio_max_at = max_error_ratio(env_base, env_other)
    return {"max": best, "max_at_error": best_at,
            "at_operating_point": float(speedup_at(env_base, env_other, op_error)[0]),
            "operating_point_error": float(op_error), "equal_cost": equal_cost,
            "error_ratio_at_equal_cost": ratio, "error_ratio_max": ratio_max,
            "error_ratio_max_at_cost": ratio_max_at}


def bootstrap(statistic: Callable[[np.ndarray], Mapping[str, float]], num_units: int,
              num_resamples: int, seed: int = 0) -> dict[str, np.ndarray]:
    """``statistic(idx)`` on ``num_resamples`` resamples ``idx`` (with replacement) of
    ``range(num_units)``: the independent units, realisations for a sweep.

    Returns ``{name: (num_resamples,) values}``; a resample on which the statistic fails
    (``ValueError``, or ``RuntimeError`` from a fit that does not converge) gives NaN for
    every name, so failures are counted, not hidden.
    """
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


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite ``values`` (NaN, NaN if none)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)


def bootstrap_compare(sweep: Sweep, base: str, other: str, cost: str, operating_point: int,
                      num_resamples: int = 1000, seed: int = 0) -> dict[str, object]:
    """:func:`compare` on all realisations, with a 95% percentile interval for each value
    from ``num_resamples`` resamples of the realisations (``<name>_ci``), and the fraction of
    resamples on which each value was undefined (``<name>_undefined``: an envelope did not
    reach the error or cost in question)."""
    run = lambda idx: compare(sweep, base, other, cost, idx, operating_point)
    point = run(np.arange(sweep.num_realisations))
    boot = bootstrap(run, sweep.num_realisations, num_resamples, seed)
    out: dict[str, object] = dict(point)
    for name, values in boot.items():
        out[f"{name}_ci"] = list(percentile_interval(values))
        out[f"{name}_undefined"] = float(np.mean(~np.isfinite(values)))
    out["num_realisations"], out["num_resamples"] = sweep.num_realisations, num_resamples
    return out
