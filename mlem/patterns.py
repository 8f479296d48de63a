"""Fixed evaluation patterns for ML-EM: draw, price, select, report (docs/patterns.md).

A *pattern* is one ``(N, K)`` boolean matrix of Bernoulli outcomes ``B_{n,k}`` drawn once
from a schedule ``p`` and then held fixed: every solve with it
(``sampling.multilevel_euler_maruyama(..., draws=pattern)``) uses the weights ``B/p`` with
these ``B``, so it evaluates the same levels at the same steps and costs the same. The paper
picks the best of a few random patterns; here that choice is made on *selection*
realisations and judged on separate *evaluation* realisations (:func:`select`,
:func:`selection_report`). A fixed pattern is deterministic, so the unbiasedness of ML-EM,
which is an average over patterns, does not hold for it: its samples are biased for the top
level (:func:`bias`).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mlem import sampling

__all__ = ["bias", "cost", "draw", "evals", "evaluated", "select", "selection_report"]

Array = jax.Array


def draw(probs: Array, num_patterns: int, key: Array) -> np.ndarray:
    """``(M, N, K)`` boolean patterns ``B ~ Bernoulli(probs)``, independent, column 0 true.

    Args:
      probs: ``(N, K)`` probabilities in (0, 1] (column 0 forced to 1).
      num_patterns: ``M >= 1``.
      key: ``jax.random.key``.
    """
    probs = jnp.asarray(probs)
    if probs.ndim != 2:
        raise ValueError(f"probs: expected an (N, K) schedule on the solver grid, got shape "
                         f"{probs.shape}")
    if num_patterns < 1:
        raise ValueError(f"num_patterns: need >= 1, got {num_patterns}")
    probs = sampling.check_probs(probs, probs.shape[1], probs.shape[0])
    uniform = jax.random.uniform(key, (num_patterns, *probs.shape))
    return np.asarray((uniform < probs).at[..., 0].set(True))


def evaluated(pattern: Array, probs: Array) -> np.ndarray:
    """``(..., N, K)`` boolean: level ``j`` is evaluated at step ``n`` under ``pattern``.

    Exactly the sampler's rule, ``a_j = B_j/p_j − B_{j+1}/p_{j+1} ≠ 0``
    (:func:`mlem.sampling.level_coefficients`), with the weights in float32 as the sampler
    forms them on float32 states.

    Args:
      pattern: ``(N, K)`` or ``(M, N, K)`` boolean draws (column 0 taken as true).
      probs: ``(K,)`` or ``(N, K)`` probabilities the pattern was drawn from.
    """
    pattern = np.asarray(pattern)
    if pattern.ndim not in (2, 3) or pattern.dtype != np.bool_:
        raise ValueError(f"pattern: expected boolean (N, K) or (M, N, K) draws, got "
                         f"{pattern.dtype} of shape {pattern.shape}")
    num_steps, num_levels = pattern.shape[-2:]
    probs = sampling.check_probs(probs, num_levels, num_steps).astype(jnp.float32)
    pattern = jnp.asarray(pattern).at[..., 0].set(True)
    weights = jnp.where(pattern, 1.0 / probs, 0.0)
    return np.asarray(sampling.level_coefficients(weights) != 0)


def evals(pattern: Array, probs: Array) -> np.ndarray:
    """``(..., K)`` evaluations per level of a solve with ``pattern`` (what ``stats["evals"]``
    reports for it, on every realisation)."""
    return evaluated(pattern, probs).sum(-2)


def cost(pattern: Array, probs: Array, costs: Sequence[float]) -> np.ndarray:
    """Exact cost per sample of a solve with ``pattern`` (``(M,)`` for ``M`` patterns, a
    0-d array for one): ``Σ_j evals_j c_j``. A fixed pattern has no expected cost apart
    from its realised one."""
    counts = evals(pattern, probs).astype(np.float64)
    costs = np.asarray(costs, np.float64)
    if costs.shape != counts.shape[-1:]:
        raise ValueError(f"costs: expected {counts.shape[-1]} per-level costs, got shape "
                         f"{costs.shape}")
    return counts @ costs


def select(errors: Array) -> tuple[int, np.ndarray]:
    """The pattern with the lowest mean error over the selection realisations.

    Args:
      errors: ``(M, S)`` error (e.g. MSE) of pattern ``m`` on selection realisation ``s``.

    Returns:
      ``(index, means)``: the 0-based index of the chosen pattern and the ``(M,)`` means
      (a pattern whose mean is not finite, e.g. a diverged solve, is never chosen).
    """
    errors = np.asarray(errors, np.float64)
    if errors.ndim != 2 or errors.shape[0] < 1 or errors.shape[1] < 1:
        raise ValueError(f"errors: expected (M patterns, S selection realisations), got "
                         f"shape {errors.shape}")
    means = errors.mean(1)
    if not np.any(np.isfinite(means)):
        raise ValueError("errors: no pattern has a finite mean error")
    return int(np.argmin(np.where(np.isfinite(means), means, np.inf))), means


def selection_report(selection_errors: Array, evaluation_errors: Array,
                     all_evaluation_errors: Array | None = None) -> dict:
    """What the selection of a pattern achieved, honestly: only ``evaluation_mse`` is ever
    compared with EM (docs/patterns.md).

    Args:
      selection_errors: ``(M, S)`` errors of every pattern on the selection realisations.
      evaluation_errors: ``(R,)`` errors of the selected pattern on the evaluation
        realisations (disjoint from the selection ones).
      all_evaluation_errors: optional ``(M, R)`` errors of every pattern on the evaluation
        realisations: what an unselected (random) pattern achieves there.

    Returns:
      a JSON-ready dict: ``index`` (chosen, 0-based), ``num_patterns``, ``selection_mse``
      (its mean selection error: optimistic, it won on these realisations),
      ``evaluation_mse`` and ``evaluation_mse_se`` (over the ``R`` evaluation realisations),
      ``optimism`` = ``evaluation_mse − selection_mse``; with ``all_evaluation_errors`` also
      ``random_pattern_mse`` (the mean over patterns, i.e. the expected evaluation error of a
      pattern drawn at random), its standard error over realisations, ``selection_gain`` =
      ``random_pattern_mse / evaluation_mse`` and ``evaluation_rank`` (1 = the chosen pattern
      is also the best on the evaluation realisations).
    """
    index, means = select(selection_errors)
    evaluation = np.asarray(evaluation_errors, np.float64)
    if evaluation.ndim != 1 or evaluation.size < 2:
        raise ValueError(f"evaluation_errors: expected (R,) with R >= 2 evaluation "
                         f"realisations, got shape {evaluation.shape}")
    report = {"index": index, "num_patterns": int(means.size),
              "selection_mse": float(means[index]),
              "evaluation_mse": float(evaluation.mean()),
              "evaluation_mse_se": _se(evaluation),
              "optimism": float(evaluation.mean() - means[index])}
    if all_evaluation_errors is not None:
        every = np.asarray(all_evaluation_errors, np.float64)
        if every.shape != (means.size, evaluation.size):
            raise ValueError(f"all_evaluation_errors: expected shape "
                             f"({means.size}, {evaluation.size}), got {every.shape}")
        random = every.mean(0)  # per realisation: the average over patterns
        report.update(
            random_pattern_mse=float(random.mean()), random_pattern_mse_se=_se(random),
            selection_gain=float(random.mean() / evaluation.mean()),
            evaluation_rank=int(1 + np.sum(every.mean(1) < every[index].mean())))
    return report


def bias(differences: Array) -> dict:
    """How biased a fixed pattern's samples are, from ``d = x_pattern − x_top``.

    ``d`` holds, per sample, the pattern's solve minus EM at the top level on the same grid,
    noise and Brownian path. With the pattern fixed, samples are independent, so the mean
    of ``d`` over samples estimates the pattern's bias ``b = E[X_pattern] − E[X_top]`` per
    pixel, and ``mean(d)² − var(d)/S`` is an unbiased estimate of ``b²``.

    Args:
      differences: ``(S, ...)`` per-sample differences (samples of every evaluation
        realisation stacked on axis 0), ``S >= 2``.

    Returns:
      ``bias_sq``: per-pixel mean of the unbiased ``b²`` estimate (may be slightly negative
      when there is no bias); ``bias_sq_noise``: the per-pixel mean ``var(d)/S`` subtracted
      (its own scale: a bias below it is not resolved); ``difference_sq``: per-pixel mean
      ``d²``, the squared distance to the top level, of which ``bias_sq`` is the part that
      averaging more samples does not remove; ``bias_share`` = ``bias_sq / difference_sq``.
    """
    d = np.asarray(differences, np.float64)
    if d.ndim < 1 or d.shape[0] < 2:
        raise ValueError(f"differences: expected (S, ...) with S >= 2 samples, got shape "
                         f"{d.shape}")
    d = d.reshape(d.shape[0], -1)
    noise = d.var(0, ddof=1) / d.shape[0]
    bias_sq = float(np.mean(d.mean(0) ** 2 - noise))
    difference_sq = float(np.mean(d**2))
    return {"bias_sq": bias_sq, "bias_sq_noise": float(np.mean(noise)),
            "difference_sq": difference_sq,
            "bias_share": bias_sq / difference_sq if difference_sq > 0 else 0.0}


def _se(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(values.size))
