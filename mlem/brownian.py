"""Brownian paths coupled across nested time grids (docs/design.md §3, §5).

A path is defined on a fine grid ``ts`` by keys: fine step ``i`` is
``sqrt(ts[i+1] − ts[i]) · N(0, I)`` drawn from ``fold_in(key, i)``. A coarse grid of
``num_steps`` steps (dividing the fine count ``N_fine``) takes every ``r``-th fine time and
its step ``n`` sums the ``r`` fine increments ``n r … n r + r − 1``, so every grid sees the
same path. Two forms of a path share this rule:

* :class:`BatchPath` — one key for the whole batch (fine step ``i`` draws an array of the
  batch's shape). The default of the solvers and of :func:`increments`.
* :class:`SamplePaths` — one key per sample (fine step ``i`` of sample ``b`` draws
  ``normal(fold_in(keys[b], i), sample_shape)``), so a sample's path does not depend on the
  batch it is generated in, the batch size or the device count.

Both are pytrees that the solvers query step by step inside their scan (``path.step``), so a
solve never materialises its increments: its memory does not grow with the step count.
:func:`increments` and ``SamplePaths.increments`` materialise ``(num_steps, *shape)`` arrays
with exactly the same values, for the ``increments=`` form of the solvers and for tests.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BatchPath", "Path", "SamplePaths", "check_path", "coarse_grid", "increments",
           "sample_keys"]

Array = jax.Array


@runtime_checkable
class Path(Protocol):
    """What the solvers need of a Brownian path: its fine grid ``ts`` ``(N_fine + 1,)`` and
    ``step(n, num_steps, like)``, the increment of step ``n`` of the nested grid of
    ``num_steps`` steps, shaped and typed like ``like`` (the batch). :class:`BatchPath` and
    :class:`SamplePaths` are the two built in; another must also be a pytree (it is an
    argument of the jitted scans)."""

    ts: Array

    def step(self, n: Array, num_steps: int, like: Array) -> Array: ...


class _Nested:
    """What both path forms share: step ``n`` of a nested grid sums the fine increments
    ``fine(i, like)`` that a subclass draws on its grid ``ts``."""

    def step(self, n: Array, num_steps: int, like: Array) -> Array:
        """Increment of step ``n`` of the nested grid with ``num_steps`` steps, like ``like``."""
        return _coarse(self, n, _ratio(self.ts.shape[0] - 1, num_steps), like)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class BatchPath(_Nested):
    """The path of one key for a whole batch, on the fine grid ``ts`` ``(N_fine + 1,)``."""

    key: Array
    ts: Array

    def fine(self, i: Array, like: Array) -> Array:
        """Fine increment ``i``, shaped and typed like ``like`` (the whole batch)."""
        noise = jax.random.normal(jax.random.fold_in(self.key, i), like.shape, like.dtype)
        return _sqrt_dt(self.ts, i, like.dtype) * noise


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplePaths(_Nested):
    """One path per sample: ``keys`` ``(B,)`` typed keys, fine grid ``ts`` ``(N_fine + 1,)``."""

    keys: Array
    ts: Array

    def fine(self, i: Array, like: Array) -> Array:
        """Fine increment ``i`` of every sample, ``(B, ...)`` like ``like``."""
        draw = lambda k: jax.random.normal(jax.random.fold_in(k, i), like.shape[1:], like.dtype)
        return _sqrt_dt(self.ts, i, like.dtype) * jax.vmap(draw)(self.keys)

    def increments(self, sample_shape: tuple[int, ...], num_steps: int | None = None,
                   dtype=jnp.float32) -> Array:
        """``(num_steps, B, *sample_shape)``: the increments :meth:`step` gives, materialised."""
        return _materialise(self, (self.keys.shape[0], *sample_shape), dtype, num_steps)


def sample_keys(key: Array, first: int | Array, count: int) -> Array:
    """``(count,)`` keys ``fold_in(key, first + j)``, one per sample ``first + j``."""
    return jax.vmap(jax.random.fold_in, (None, 0))(key, first + jnp.arange(count))


def coarse_grid(ts: Array, num_steps: int) -> Array:
    """The ``num_steps + 1`` times of ``ts`` (``N_fine + 1`` times) on the nested coarse grid."""
    ratio = _ratio(ts.shape[0] - 1, num_steps)
    return ts[::ratio]


def increments(
    key: Array, ts: Array, shape: tuple[int, ...], *, num_steps: int | None = None,
    dtype=jnp.float32,
) -> Array:
    """Increments of the :class:`BatchPath` of ``key`` on the grid ``coarse_grid(ts, num_steps)``.

    Args:
      key: a ``jax.random.key``; it alone defines the path on the fine grid ``ts``.
      ts: ``(N_fine + 1,)`` increasing times.
      shape: shape of one increment, e.g. ``x0.shape``.
      num_steps: steps of the coarse grid; must divide ``N_fine``. Default ``N_fine``.

    Returns:
      ``(num_steps, *shape)`` increments; with ``num_steps = N_fine`` the fine ones.
    """
    return _materialise(BatchPath(key, jnp.asarray(ts, dtype)), tuple(shape), dtype, num_steps)


def check_path(path: Path, ts: Array, x0: Array) -> None:
    """Validate a path for a solve on ``ts`` from ``x0``; errors name the argument ``path``."""
    if not isinstance(path, Path):
        raise ValueError(f"path: expected brownian.BatchPath, brownian.SamplePaths or another "
                         f"brownian.Path (ts and step(n, num_steps, like)), got "
                         f"{type(path).__name__}")
    num_steps, n_fine = ts.shape[0] - 1, path.ts.shape[0] - 1
    if path.ts.ndim != 1 or n_fine % num_steps:
        raise ValueError(f"path: its fine grid has {n_fine} steps, which the solver's "
                         f"{num_steps} steps must divide")
    if isinstance(path, SamplePaths) and path.keys.shape != x0.shape[:1]:
        raise ValueError(f"path: SamplePaths needs one key per sample, shape {x0.shape[:1]}, "
                         f"got {path.keys.shape}")
    concrete = not any(isinstance(a, jax.core.Tracer) for a in (ts, path.ts))
    if concrete and not np.allclose(coarse_grid(np.asarray(path.ts), num_steps), np.asarray(ts),
                                    rtol=0, atol=1e-6):
        raise ValueError("path: the solver's ts must be the nested grid "
                         "brownian.coarse_grid(path.ts, N) of the path's fine grid")


def _sqrt_dt(ts: Array, i: Array, dtype) -> Array:
    return jnp.sqrt(ts[i + 1] - ts[i]).astype(dtype)


def _coarse(path: BatchPath | SamplePaths, n: Array, ratio: int, like: Array) -> Array:
    """Sum of the ``ratio`` fine increments of coarse step ``n`` (in order, no array of them)."""
    first = n * ratio
    if ratio == 1:
        return path.fine(first, like)
    return jax.lax.fori_loop(1, ratio, lambda i, acc: acc + path.fine(first + i, like),
                             path.fine(first, like))


def _materialise(path: BatchPath | SamplePaths, shape: tuple[int, ...], dtype,
                 num_steps: int | None) -> Array:
    num_steps = path.ts.shape[0] - 1 if num_steps is None else num_steps
    ratio = _ratio(path.ts.shape[0] - 1, num_steps)
    return _materialise_jit(path, tuple(shape), jnp.dtype(dtype), num_steps, ratio)


@functools.partial(jax.jit, static_argnames=("shape", "dtype", "num_steps", "ratio"))
def _materialise_jit(path, shape, dtype, num_steps, ratio):
    like = jnp.zeros(shape, dtype)  # only its shape and dtype are used
    return jax.lax.map(lambda n: _coarse(path, n, ratio, like), jnp.arange(num_steps))


def _ratio(n_fine: int, num_steps: int) -> int:
    if num_steps < 1 or n_fine % num_steps:
        raise ValueError(f"num_steps: must divide the fine grid's {n_fine} steps, got {num_steps}")
    return n_fine // num_steps
