"""Models trained on another schedule, mapped onto the VP-SDE (:mod:`mlem.time_maps`): on
Gaussian data the exact ε̂ of the other schedule, mapped, is the exact ε̂ of the VP-SDE."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem
from mlem import ladder as ladders
from mlem import time_maps
from mlem.sde import VPSDE, gaussian_eps

MEAN, STD, SHAPE = 0.3, 0.7, (5, 2, 2, 1)
T = jnp.linspace(0.001, 1.0, 5)  # one data time per sample, t_min to 1


def _x() -> jax.Array:
    return jax.random.normal(jax.random.key(0), SHAPE)


def _per_sample(v, x):
    return jnp.reshape(v, jnp.shape(v) + (1,) * (x.ndim - jnp.ndim(v)))


def cosine_gaussian_eps(x, t_model, scale=1.0, s=0.008):
    """The exact ε̂ of ``N(MEAN, STD²)`` data under the cosine schedule at its own time;
    ``σ'² = 1 − α'² = sin(θ − θ₀) sin(θ + θ₀)/cos²θ₀`` without cancellation near ``t = 0``."""
    theta = _per_sample(0.5 * jnp.pi * (t_model / scale + s) / (1 + s), x)
    theta0 = 0.5 * jnp.pi * s / (1 + s)
    a = jnp.cos(theta) / jnp.cos(theta0)
    s2 = jnp.sin(theta - theta0) * jnp.sin(theta + theta0) / jnp.cos(theta0) ** 2
    return jnp.sqrt(s2) * (x - a * MEAN) / (a**2 * STD**2 + s2)


def test_cosine_eps_mapped_is_the_exact_vp_eps():
    sde, x = VPSDE(), _x()
    exact = gaussian_eps(sde, MEAN, STD)(x, T)
    for scale in (1.0, 1000.0):  # a network fed t' or 1000 t'
        mapped = time_maps.eps_on_vpsde(lambda x, t, s=scale: cosine_gaussian_eps(x, t, s),
                                        time_maps.cosine(sde, scale=scale))
        np.testing.assert_allclose(mapped(x, T), exact, rtol=2e-5, atol=2e-6)
    t_cos = time_maps.cosine(sde)(T)
    assert np.all(np.diff(t_cos) > 0) and 0 < t_cos[0] < 0.01 and t_cos[-1] < 1.0
    np.testing.assert_allclose(time_maps.cosine_alpha(t_cos), sde.alpha(T), rtol=1e-5)
    # negative control: the unmapped network, called at the VP time, is wrong
    assert not np.allclose(cosine_gaussian_eps(x, T), exact, rtol=1e-2, atol=1e-2)


def test_a_discrete_schedule_maps_to_fractional_timesteps():
    """improved-diffusion's 1000-step cosine schedule (β clipped at 0.999): timestep ``i`` is
    cosine time ``(i + 1)/1000``, so the table map agrees with the closed form inside it."""
    sde, steps = VPSDE(), 1000
    abar = np.asarray(time_maps.cosine_alpha(jnp.arange(steps + 1) / steps), np.float64) ** 2
    betas = np.minimum(1.0 - abar[1:] / abar[:-1], 0.999)
    table = np.cumprod(1.0 - betas)
    index = time_maps.tabulated(sde, table)
    t = jnp.linspace(0.02, 0.98, 7)
    np.testing.assert_allclose(index(t), steps * time_maps.cosine(sde)(t) - 1, atol=0.05)
    assert float(index(jnp.float32(sde.t_min))) == pytest.approx(0.0, abs=1.5)
    x = _x()
    mapped = time_maps.eps_on_vpsde(
        lambda x, i: cosine_gaussian_eps(x, (i + 1) / steps), index)
    inside = slice(1, 4)  # t = 0.25, 0.5, 0.75: well inside the table
    np.testing.assert_allclose(mapped(x[inside], T[inside]),
                               gaussian_eps(sde, MEAN, STD)(x[inside], T[inside]),
                               rtol=1e-3, atol=1e-4)
    with pytest.raises(ValueError, match="alphas_cumprod: need a decreasing"):
        time_maps.tabulated(sde, table[::-1])


def test_variance_exploding_eps_mapped_is_the_exact_vp_eps():
    sde, x = VPSDE(), _x()
    ve = lambda x, s: _per_sample(s, x) * (x - MEAN) / (STD**2 + _per_sample(s, x) ** 2)
    np.testing.assert_allclose(time_maps.ve_eps_on_vpsde(ve, sde)(x, T),
                               gaussian_eps(sde, MEAN, STD)(x, T), rtol=2e-5, atol=2e-6)


def test_a_mapped_model_is_a_ladder_level_like_the_exact_one():
    sde, x0, ts = VPSDE(), _x(), np.linspace(0.0, 0.99, 9, dtype=np.float32)
    apply = time_maps.apply_on_vpsde(lambda p, x, t: cosine_gaussian_eps(x, t) * p["gain"],
                                     time_maps.cosine(sde))
    mapped = mlem.Ladder.from_functions(apply_fns=[apply], params=[{"gain": jnp.float32(1)}],
                                        image_shape=SHAPE[1:], sde=sde, costs=[1.0])
    exact = mlem.Ladder.from_functions([gaussian_eps(sde, MEAN, STD)], image_shape=SHAPE[1:],
                                       sde=sde, costs=[1.0])
    key = jax.random.key(1)
    np.testing.assert_allclose(ladders.em(mapped, -1, x0, ts, key)[0],
                               ladders.em(exact, -1, x0, ts, key)[0], rtol=1e-4, atol=1e-5)
