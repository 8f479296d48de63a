"""Small builders shared by several test files (not fixtures: plain functions)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def counted(calls: np.ndarray, level: int, f):
    """``f`` that adds one to ``calls[level]`` each time it is *executed* (a host callback, so
    a level skipped inside ``lax.cond`` is not counted)."""
    def drift(x, t):
        jax.debug.callback(lambda: calls.__setitem__(level, calls[level] + 1))
        return f(x, t)
    return drift


def gaussian_ladder(sde):
    """Two analytic Gaussian levels (different means) as a 4×4×1 ladder, and an ``x0``
    ``(2, 4, 4, 1)``: a real :class:`mlem.ladder.Ladder` with no training."""
    from mlem import ladder as ladders
    from mlem.models import gaussian

    x0 = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
    models, params = [], []
    for k in range(2):
        model = gaussian.GaussianEps(rank=2)
        p = model.init(jax.random.key(1), x0, jnp.full((2,), 0.5))["params"]
        models.append(model)
        params.append({**p, "mean": jax.random.normal(jax.random.key(2 + k), (4, 4, 1))})
    return ladders.Ladder(("a", "b"), tuple(models), tuple(params), (4, 4, 1), sde), x0
