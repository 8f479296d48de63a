"""Probability schedules ``p_k(τ)`` for ML-EM (docs/design.md §1).

Every schedule returns probabilities in (0, 1] with level 1 at 1: shape ``(K,)`` for a
constant schedule or ``(N, K)`` on a grid of ``N`` steps. :func:`build` is the one factory
of named schedules (:data:`SCHEDULES`) on a grid, each a family in the knob ``c``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy import optimize

from mlem import sampling
from mlem.files import read_json

__all__ = ["SCHEDULES", "build", "constant", "dyadic", "increment_costs", "knob_for_top_evals",
           "load", "on_grid", "save", "scaled", "top_evals", "variance_optimal"]

SCHEDULES = ("constant", "variance", "dyadic", "file")


def build(name: str, ts: Sequence[float], costs: Sequence[float], *, c: float | None = None,
          top_evals: float | None = None, probs: Sequence[float] | None = None,
          variances: np.ndarray | None = None, bin_edges: Sequence[float] | None = None,
          gamma: float | None = None, file: str | Path | None = None
          ) -> tuple[float, np.ndarray]:
    """``(c, probs (N, K))``: the schedule ``name`` on the grid ``ts`` at the knob ``c``.

    Every schedule is a family in ``c`` (non-decreasing, level 1 at 1), for a ladder whose
    ``K`` levels cost ``costs`` per call (FLOPs or seconds):

    * ``constant``: ``min(1, c·probs_k)``, ``probs`` ``(K,)`` given (``c = 1``: ``probs``);
    * ``variance``: ``min(1, c·sqrt(V_k/C_k))`` (:func:`variance_optimal`) with increment
      costs ``C_k = c_k + c_{k−1}``; ``variances`` ``(K,)`` is constant in time (e.g. the
      time average of a binned ``V``), ``(bins, K)`` holds ``V_k(τ)`` per bin of
      ``bin_edges`` (:func:`mlem.variance.increment_variances`);
    * ``dyadic``: ``min(1, c·2^{−(1+γ/2)(k−1)})`` with ``gamma`` (:func:`dyadic`);
    * ``file``: ``min(1, c·p)`` with ``p`` the schedule file ``file`` (:func:`save`) on
      ``ts`` (``c = 1``: the file as written).

    Inputs a schedule does not use are ignored. The knob: ``c`` (default 1), or
    ``top_evals`` (``0 < top_evals <= N``), which chooses the ``c`` that evaluates the top
    level that many times per solve in expectation (:func:`knob_for_top_evals`).
    """
    make = _family(name, np.asarray(ts, np.float64), np.asarray(costs, np.float64), probs,
                   variances, bin_edges, gamma, file)
    if c is not None and top_evals is not None:
        raise ValueError("c, top_evals: give at most one knob")
    if top_evals is not None:
        c = knob_for_top_evals(make, top_evals)
    c = 1.0 if c is None else float(c)
    return c, make(c)


def _family(name, ts, costs, probs, variances, bin_edges, gamma, file
            ) -> Callable[[float], np.ndarray]:
    """``c ↦ (N, K)`` probabilities of the schedule ``name`` (see :func:`build`)."""
    num_levels, num_steps = len(costs), len(ts) - 1
    needs = lambda arg, value: value if value is not None else _missing(name, arg)
    if name == "constant":
        probs = needs("probs", probs)
        if len(probs) != num_levels:
            raise ValueError(f"probs: has {len(probs)} entries but the ladder has "
                             f"{num_levels} levels; give one probability per level")
        base = constant(probs, num_steps)
        return lambda c: scaled(base, c)
    if name == "variance":
        v, inc = np.asarray(needs("variances", variances)), increment_costs(costs)
        if v.ndim == 1:
            return lambda c: constant(variance_optimal(v, inc, c), num_steps)
        edges = needs("bin_edges", bin_edges)
        return lambda c: on_grid(variance_optimal(v, inc, c), edges, ts)
    if name == "dyadic":
        gamma = needs("gamma", gamma)
        return lambda c: constant(dyadic(num_levels, gamma, c), num_steps)
    if name == "file":
        base = load(needs("file", file), num_levels, ts)
        return lambda c: scaled(base, c)
    raise ValueError(f"schedule: must be one of {', '.join(SCHEDULES)}, got {name!r}")


def _missing(name: str, arg: str):
    raise ValueError(f"{arg}: the schedule {name!r} needs it")


def constant(probs: Sequence[float], num_steps: int) -> np.ndarray:
    """``(N, K)`` copies of ``probs`` (validated; level 1 forced to 1)."""
    probs = np.asarray(probs, np.float64)
    return np.asarray(sampling.check_probs(probs, probs.shape[-1], num_steps))


def increment_costs(costs: Sequence[float]) -> np.ndarray:
    """Cost of one increment ``fᵏ − fᵏ⁻¹`` evaluated alone: ``C_k = c_k + c_{k−1}``, ``c_0 = 0``."""
    costs = np.asarray(costs, np.float64)
    if costs.ndim != 1 or not np.all(costs > 0):
        raise ValueError(f"costs: need a 1-D array of positive per-level costs, got {costs}")
    return costs + np.concatenate([[0.0], costs[:-1]])


def variance_optimal(
    variances: np.ndarray, increment_cost: Sequence[float], c: float, *, min_prob: float = 1e-6,
) -> np.ndarray:
    """``p_k = min(1, c · sqrt(V_k / C_k))``, level 1 at 1.

    Args:
      variances: ``(K,)`` or ``(bins, K)`` measured ``V_k = E‖fᵏ − fᵏ⁻¹‖²`` (per time bin).
      increment_cost: ``(K,)`` increment costs ``C_k`` (see :func:`increment_costs`).
      c: the knob trading cost against randomisation variance; larger means more evaluations.
      min_prob: floor for levels with ``V_k = 0`` (they never need evaluating).
    """
    variances = np.asarray(variances, np.float64)
    increment_cost = np.asarray(increment_cost, np.float64)
    if variances.shape[-1] != increment_cost.shape[-1] or increment_cost.ndim != 1:
        raise ValueError(f"variances: last axis must have one entry per level "
                         f"({increment_cost.shape}), got shape {variances.shape}")
    if not np.all(variances >= 0) or not np.all(increment_cost > 0) or not c > 0:
        raise ValueError("variances, increment_cost, c: need V_k >= 0, C_k > 0 and c > 0")
    probs = np.clip(c * np.sqrt(variances / increment_cost), min_prob, 1.0)
    probs[..., 0] = 1.0
    return probs


def dyadic(num_levels: int, gamma: float, c: float) -> np.ndarray:
    """``p_k = min(1, c · 2^{−(1 + γ/2)(k − 1)})``.

    Variance-optimal for a dyadic ladder: ``δ_k ∝ 2^{−k}`` and ``c_k ∝ 2^{γk}``.
    """
    if num_levels < 1 or not gamma > 0 or not c > 0:
        raise ValueError(f"num_levels, gamma, c: need K >= 1, gamma > 0, c > 0; got "
                         f"{num_levels}, {gamma}, {c}")
    k = np.arange(num_levels)
    probs = np.minimum(1.0, c * 2.0 ** (-(1.0 + gamma / 2.0) * k))
    probs[0] = 1.0
    return probs


def scaled(probs: np.ndarray, c: float) -> np.ndarray:
    """``p_k = min(1, c · probs_k)`` with level 1 at 1: a schedule's time-dependent shape
    (a learned one, say) moved along its cost–error curve by the knob ``c``."""
    out = np.minimum(1.0, c * np.asarray(probs, np.float64))
    out[..., 0] = 1.0
    return out


def top_evals(probs: np.ndarray) -> float:
    """Expected evaluations of the top level in a solve with ``(N, K)`` ``probs``: ``Σ_n p_{n,K}``
    (the top level runs iff it is drawn)."""
    return float(np.sum(np.asarray(probs)[:, -1]))


def knob_for_top_evals(schedule: Callable[[float], np.ndarray], target: float) -> float:
    """The knob ``c`` at which ``schedule(c)`` (``(N, K)``, non-decreasing in ``c``) evaluates the
    top level ``target`` times per solve in expectation.

    A dimensionless sweep coordinate: ``target`` means the same on every ladder and grid,
    whatever the scale of its variances and costs. Needs ``0 < target <= N``.
    """
    num_steps = np.asarray(schedule(1.0)).shape[0]
    if not 0 < target <= num_steps:
        raise ValueError(f"top_evals: must lie in (0, N] for a solve of N = {num_steps} steps, "
                         f"got {target}")
    gap = lambda log_c: top_evals(schedule(float(np.exp(log_c)))) - target
    lo = hi = 0.0
    for _ in range(200):  # bracket the root in log c
        if gap(lo) > 0:
            lo -= 2.0
        elif gap(hi) < 0:
            hi += 2.0
        else:
            break
    else:
        raise ValueError(f"top_evals: the schedule never reaches {target} top-level evaluations")
    if gap(hi) == 0:
        return float(np.exp(hi))
    return float(np.exp(optimize.brentq(gap, lo, hi, xtol=1e-10, rtol=1e-12)))


def on_grid(bin_probs: np.ndarray, bin_edges: Sequence[float], ts: Sequence[float]) -> np.ndarray:
    """Map per-time-bin probabilities ``(bins, K)`` to the ``(N, K)`` steps of grid ``ts``.

    Step ``n`` takes the bin that contains its left time ``ts[n]``.
    """
    bin_probs = np.asarray(bin_probs)
    edges = np.asarray(bin_edges, np.float64)
    if edges.shape != (bin_probs.shape[0] + 1,) or not np.all(np.diff(edges) > 0):
        raise ValueError(f"bin_edges: need {bin_probs.shape[0] + 1} increasing edges, got "
                         f"shape {edges.shape}")
    index = np.clip(np.searchsorted(edges, np.asarray(ts)[:-1], side="right") - 1,
                    0, bin_probs.shape[0] - 1)
    return bin_probs[index]


def save(path: str | Path, probs: np.ndarray, bin_edges: Sequence[float] | None = None,
         **meta) -> None:
    """Write a schedule as JSON: ``probs`` ``(K,)`` or ``(bins, K)``, optional ``bin_edges``."""
    record = {"probs": np.asarray(probs).tolist(), "meta": meta}
    if bin_edges is not None:
        record["bin_edges"] = np.asarray(bin_edges).tolist()
    Path(path).write_text(json.dumps(record, indent=1))


def load(path: str | Path, num_levels: int, ts: Sequence[float]) -> np.ndarray:
    """Read a schedule file written by :func:`save` and put it on the grid ``ts`` as ``(N, K)``."""
    record = read_json(path, "schedule file")
    if not isinstance(record, dict) or "probs" not in record:
        raise ValueError(f"schedule file {path}: no 'probs' entry; write it with "
                         f"mlem.schedules.save")
    probs = np.asarray(record["probs"], np.float64)
    if probs.shape[-1] != num_levels:
        raise ValueError(f"schedule file {path}: has {probs.shape[-1]} levels but the ladder has "
                         f"{num_levels}; regenerate it for this ladder")
    num_steps = len(ts) - 1
    if probs.ndim == 2 and "bin_edges" in record:
        probs = on_grid(probs, record["bin_edges"], ts)
    return np.asarray(sampling.check_probs(probs, num_levels, num_steps))
