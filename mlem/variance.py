"""Increment variances ``V_k(τ) = E‖fᵏ − fᵏ⁻¹‖²`` of a ladder per time bin (docs/design.md §1).

They are the input of the variance-optimal schedule ``p_k(τ) = min(1, c·sqrt(V_k(τ)/C_k))``
(:func:`mlem.schedules.variance_optimal`, :func:`mlem.schedules.build`). Any
:class:`~mlem.ladder.Ladder` will do, a trained one or one of plain functions
(:meth:`~mlem.ladder.Ladder.from_functions`)::

    result = variance.increment_variances(ladder, xs_fn, bins=8, num_samples=512)
    result.variances  # (bins, K); result.bin_edges (bins + 1,)

Forward-process samples: clean data ``x₀ = xs_fn(indices)`` for sample indices ``0…n−1``,
solver times ``τ`` stratified over the bins of ``[0, 1 − t_min]`` (sample ``i`` lies in bin
``i mod bins``, uniform inside it, from ``numpy.random.default_rng(seed)``),
``x_t = α x₀ + σ ε`` with ``t = 1 − τ`` and ``ε`` from ``fold_in(key(seed), i)``. Every
level's reverse drift is evaluated at ``(x_t, τ)``; per sample we keep ``‖fᵏ − fᵏ⁻¹‖²``
(``f⁰ = 0``), ``‖fᵏ‖²`` and ``‖fᵏ − fᴷ‖²`` summed over pixels (:func:`drift_statistics`),
then average them per bin (:func:`binned_variances`). ``python -m analysis.variance`` runs
this on a trained ladder's held-out images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mlem import ladder as ladders

__all__ = ["BinnedVariances", "bin_edges", "binned_variances", "drift_statistics",
           "increment_variances", "per_example_drifts", "stratified_taus"]

Array = jax.Array
XsFn = Callable[[np.ndarray], Array]  # sample indices (n,) → clean data x₀ (n, *image_shape)


class BinnedVariances(NamedTuple):
    """``bin_edges`` ``(bins + 1,)`` in solver time; ``variances`` ``(bins, K)``: the mean of
    ``‖fᵏ − fᵏ⁻¹‖²`` per bin; ``standard_errors`` ``(bins, K)``: over the bin's samples."""

    bin_edges: np.ndarray
    variances: np.ndarray
    standard_errors: np.ndarray


def increment_variances(ladder: ladders.Ladder, xs_fn: XsFn, bins: int | np.ndarray, *,
                        num_samples: int = 256, seed: int = 0, batch_size: int = 256,
                        progress: bool = False) -> BinnedVariances:
    """``V_k(τ)`` of ``ladder`` per time bin, from ``num_samples`` forward-process samples.

    Args:
      ladder: any ladder (its drifts get per-example times).
      xs_fn: clean data for the given sample indices, ``(n,)`` → ``(n, *image_shape)``.
      bins: a number of equal bins of ``[0, 1 − t_min]``, or their increasing edges.
      num_samples: at least one per bin; ``seed``: of the times and the noise;
      batch_size: samples per jitted call; progress: show a progress bar.
    """
    edges = _edges(bins, ladder.sde.t_min)
    stats = drift_statistics(ladder, xs_fn, edges, num_samples, seed=seed,
                             batch_size=batch_size, progress=progress)
    return BinnedVariances(edges, *binned_variances(stats["taus"], stats["increment_sq"], edges))


def bin_edges(t_min: float, num_bins: int) -> np.ndarray:
    """``num_bins + 1`` equal-width edges of solver time ``[0, 1 − t_min]``."""
    if num_bins < 1:
        raise ValueError(f"bins: need at least one time bin, got {num_bins}")
    return np.linspace(0.0, 1.0 - t_min, num_bins + 1)


def _edges(bins: int | np.ndarray, t_min: float) -> np.ndarray:
    if np.ndim(bins) == 0:
        return bin_edges(t_min, int(bins))
    edges = np.asarray(bins, np.float64)
    if (edges.ndim != 1 or len(edges) < 2 or not np.all(np.diff(edges) > 0) or edges[0] < 0
            or edges[-1] > 1.0 - t_min + 1e-9):
        raise ValueError(f"bins: edges must increase inside [0, 1 - t_min = {1.0 - t_min}], "
                         f"got {edges}")
    return edges


def stratified_taus(edges: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """``(n,)`` times: sample ``i`` uniform in bin ``i mod bins``."""
    num_bins = len(edges) - 1
    if num_samples < num_bins:
        raise ValueError(f"num_samples: need at least one sample per time bin ({num_bins}), "
                         f"got {num_samples}")
    index = np.arange(num_samples) % num_bins
    u = np.random.default_rng(seed).uniform(size=num_samples)
    return edges[index] + u * (edges[index + 1] - edges[index])


def per_example_drifts(ladder: ladders.Ladder, params) -> list:
    """Drifts ``fᵏ(x, τ)`` that accept a per-example ``τ`` of shape ``(B, 1, …, 1)``."""

    def eps(model, p):
        fn = ladders.eps_fn(model, p)
        return lambda x, t: fn(x, jnp.reshape(t, x.shape[:1]))

    return [ladder.sde.drift_from_eps(eps(m, p)) for m, p in zip(ladder.models, params)]


def _stats_fn(ladder: ladders.Ladder):
    @jax.jit
    def stats(params, x0, taus, noise):
        sde = ladder.sde
        x_t = sde.marginal(x0, sde.data_time(taus), noise)
        tau = taus.reshape(-1, *(1,) * (x0.ndim - 1))
        fs = [f(x_t, tau) for f in per_example_drifts(ladder, params)]
        sq = lambda d: jnp.sum(jnp.square(d), axis=tuple(range(1, d.ndim)))
        inc = [sq(f - g) for f, g in zip(fs, [jnp.zeros_like(x_t)] + fs[:-1])]
        err = [sq(f - fs[-1]) for f in fs]
        return jnp.stack(inc, 1), jnp.stack(err, 1), jnp.stack([sq(f) for f in fs], 1)

    return stats


def drift_statistics(ladder: ladders.Ladder, xs_fn: XsFn, edges: np.ndarray, num_samples: int,
                     *, seed: int = 0, batch_size: int = 256, progress: bool = False
                     ) -> dict[str, np.ndarray]:
    """Per-sample ``increment_sq``, ``error_sq`` and ``drift_sq`` ``(n, K)``: ``‖fᵏ − fᵏ⁻¹‖²``,
    ``‖fᵏ − fᴷ‖²`` and ``‖fᵏ‖²``; with ``taus`` ``(n,)`` and ``bin_edges`` (``edges``)."""
    taus = stratified_taus(edges, num_samples, seed)
    key = jax.random.key(seed)
    noise_fn = jax.jit(jax.vmap(
        lambda i: jax.random.normal(jax.random.fold_in(key, i), ladder.image_shape)))
    stats_fn, inc, err, drift = _stats_fn(ladder), [], [], []
    for start in tqdm(range(0, num_samples, batch_size), desc="forward drifts", unit="batch",
                      disable=not progress):
        idx = np.arange(start, min(start + batch_size, num_samples))
        i, e, d = stats_fn(ladder.params, jnp.asarray(xs_fn(idx)),
                           jnp.asarray(taus[idx], jnp.float32), noise_fn(jnp.asarray(idx)))
        inc.append(np.asarray(i, np.float64))
        err.append(np.asarray(e, np.float64))
        drift.append(np.asarray(d, np.float64))
    return {"taus": taus, "bin_edges": edges, "increment_sq": np.concatenate(inc),
            "error_sq": np.concatenate(err), "drift_sq": np.concatenate(drift)}


def binned_variances(taus: np.ndarray, increment_sq: np.ndarray, edges: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin mean ``(bins, K)`` of ``increment_sq`` and its standard error over samples."""
    index = np.clip(np.searchsorted(edges, taus, side="right") - 1, 0, len(edges) - 2)
    means, errors = [], []
    for b in range(len(edges) - 1):
        values = increment_sq[index == b]
        means.append(values.mean(0))
        errors.append(values.std(0, ddof=1) / np.sqrt(len(values)) if len(values) > 1
                      else np.full(values.shape[1], np.nan))
    return np.array(means), np.array(errors)
