"""The cost exponent that ML-EM should show on a finite dyadic ladder (docs/design.md §1).

Theory (γ > 2): ``cost ∝ error^{-s}`` with ``s = γ + 1`` for EM and ``s = γ`` for ML-EM,
approached from above by ML-EM as the error shrinks: on a finite ladder fewer levels are
randomised at larger errors. :func:`ideal_mlem_exponent` is that pre-asymptotic exponent, the
one a finite sweep (:mod:`analysis.testbed.summary`) should be compared with.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize


def _ideal_cost(gamma: float, top: int) -> float:
    """Expected cost of ML-EM on levels ``1..top`` of the idealised ladder at ``ε = 2^{-top}``
    (see :func:`ideal_mlem_exponent`)."""
    k = np.arange(1, top + 1)
    v, c = 4.0**-k, 2.0 ** (gamma * k)

    def probs(log_lam):
        p = np.minimum(1.0, np.exp(log_lam) * np.sqrt(v / c))
        return np.concatenate([[1.0], p[1:]])

    budget = 2.0**top * 4.0**-top  # N ε²
    log_lam = optimize.brentq(lambda u: np.sum(v * (1 / probs(u) - 1)) - budget, -300, 300)
    return 2.0**top * float(np.sum(probs(log_lam) * c))


def ideal_mlem_exponent(gamma: float, top: int) -> float:
    """ML-EM's local cost exponent on the idealised dyadic ladder, from top level K to K + 1.

    Ladder ``V_k = 4^{-k}``, ``c_k = 2^{γk}``; error ``ε = 2^{-K}`` on ``N = 2^K`` steps; the
    variance-optimal ``p_k = min(1, λ sqrt(V_k / c_k))``, ``p_1 = 1``, with ``λ`` such that the
    randomisation variance ``Σ_k V_k (1/p_k − 1) / N`` is ``ε²``. Returns
    ``log2(cost_{K+1} / cost_K)``. For ``γ > 2`` it tends to ``γ`` as ``K → ∞``, slowly near 2:
    the levels below about ``2K / (2 + γ)`` saturate (``p = 1``) and ``Σ_k 2^{k(γ/2 − 1)}`` over
    the others grows slowly. This is the exponent a finite sweep should be compared with.
    """
    if top < 2:
        raise ValueError(f"top: need K >= 2 (one level is plain EM), got {top}")
    return float(np.log2(_ideal_cost(gamma, top + 1) / _ideal_cost(gamma, top)))
