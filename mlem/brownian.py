"""Brownian increments that are coupled across nested time grids (DESIGN.md §3).

The path is defined on a fine grid ``ts`` by one key: fine step ``n`` draws
``sqrt(ts[n+1] − ts[n]) · N(0, I)`` from ``fold_in(key, n)``. A coarse grid with
``num_steps`` steps (dividing the fine count) takes every ``r``-th fine time and its
increments are sums of ``r`` consecutive fine increments, so every grid sees the same path.
Only the coarse increments are materialised: ``(num_steps, *shape)`` floats.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def coarse_grid(ts: Array, num_steps: int) -> Array:
    """The ``num_steps + 1`` times of ``ts`` (``N_fine + 1`` times) on the nested coarse grid."""
    ratio = _ratio(ts.shape[0] - 1, num_steps)
    return ts[::ratio]


def increments(
    key: Array, ts: Array, shape: tuple[int, ...], *, num_steps: int | None = None,
    dtype=jnp.float32,
) -> Array:
    """Increments of the Brownian path of ``key`` on the grid ``coarse_grid(ts, num_steps)``.

    Args:
      key: a ``jax.random.key``; it alone defines the path on the fine grid ``ts``.
      ts: ``(N_fine + 1,)`` increasing times.
      shape: shape of one increment, e.g. ``x0.shape``.
      num_steps: steps of the coarse grid; must divide ``N_fine``. Default ``N_fine``.

    Returns:
      ``(num_steps, *shape)`` increments; with ``num_steps = N_fine`` the fine ones.
    """
    n_fine = ts.shape[0] - 1
    num_steps = n_fine if num_steps is None else num_steps
    return _increments(key, jnp.asarray(ts, dtype), tuple(shape), _ratio(n_fine, num_steps))


@functools.partial(jax.jit, static_argnames=("shape", "ratio"))
def _increments(key: Array, ts: Array, shape: tuple[int, ...], ratio: int) -> Array:
    sqrt_dt = jnp.sqrt(jnp.diff(ts))

    def fine(n):
        return sqrt_dt[n] * jax.random.normal(jax.random.fold_in(key, n), shape, ts.dtype)

    def coarse(m):
        first = m * ratio
        return jax.lax.fori_loop(1, ratio, lambda i, acc: acc + fine(first + i), fine(first))

    return jax.lax.map(coarse, jnp.arange((ts.shape[0] - 1) // ratio))


def _ratio(n_fine: int, num_steps: int) -> int:
    if num_steps < 1 or n_fine % num_steps:
        raise ValueError(f"num_steps: must divide the fine grid's {n_fine} steps, got {num_steps}")
    return n_fine // num_steps
