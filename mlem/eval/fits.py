"""Power laws fitted by least squares in log–log, shared by the analyses (docs/design.md §3).

* :func:`fit_gamma` — γ of a ladder from its accuracies and costs (``δ_k ∝ c_k^{-1/γ}``):
  used on the synthetic testbed's exact ``δ_k`` and on a trained ladder's drift errors
  (:mod:`analysis.fit_gamma`).
* :func:`fit_exponent` — ``s`` in ``cost ∝ error^{-s}`` of a method's lower envelope
  (:class:`mlem.eval.speedup.Envelope`): the cost exponents of EM and ML-EM.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mlem.eval import speedup

__all__ = ["fit_exponent", "fit_gamma"]


def fit_gamma(costs: Sequence[float], errors: Sequence[float]) -> float:
    """γ from a least-squares line ``log δ_k = const − (1/γ) log c_k``."""
    costs, errors = np.asarray(costs, np.float64), np.asarray(errors, np.float64)
    if costs.shape != errors.shape or costs.size < 2 or np.any(costs <= 0) or np.any(errors <= 0):
        raise ValueError("costs, errors: need >= 2 positive values of equal length")
    slope = np.polyfit(np.log(costs), np.log(errors), 1)[0]
    if not slope < 0:
        raise ValueError(f"errors: do not decrease with cost (log-log slope {slope:.3g})")
    return float(-1.0 / slope)


def fit_exponent(env: speedup.Envelope, lo: float, hi: float, num: int = 25) -> float:
    """``s`` in ``cost ∝ error^{-s}``: least squares on the envelope sampled log-uniformly
    over ``[lo, hi]``; NaN if the envelope does not span that range."""
    errors = np.geomspace(lo, hi, num)
    costs = env.cost_at(errors)
    if not np.all(np.isfinite(costs)):
        return float("nan")
    return float(-np.polyfit(np.log(errors), np.log(costs), 1)[0])
