"""The VP-SDE convention and coupled Brownian increments."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlem import brownian, sampling
from mlem.sde import VPSDE, gaussian_eps


def test_alpha_sigma_match_definitions():
    sde = VPSDE()
    t = jnp.linspace(0.0, 1.0, 11)
    integral = sde.beta_min * t + 0.5 * t**2 * (sde.beta_max - sde.beta_min)
    np.testing.assert_allclose(sde.alpha(t), np.exp(-0.5 * integral), rtol=1e-6)
    np.testing.assert_allclose(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, 1.0, rtol=1e-6)
    assert float(sde.diffusion(0.25)) == pytest.approx(np.sqrt(sde.beta(0.75)))


def test_reverse_sde_with_exact_gaussian_score_reproduces_mean_and_variance():
    """EM on the reverse SDE with the exact score of N(μ, s²I) samples N(μ, s²I).

    Tolerance: 5 standard errors for M = 40,000 scalars (SE(mean) = s/√M ≈ 1.5e-3,
    SE(var) = s²√(2/M) ≈ 6e-4) plus the EM bias. The weak error of EM is O(η): measured
    with M = 400,000 scalars, the bias is ≈ 2e-3 (mean) at N = 250 steps and ≲ 1e-3, within
    noise, at N = 1000; we allow 5·SE + 2e-3.
    """
    sde = VPSDE()
    mean, std = 0.7, 0.3
    drift = sde.drift_from_eps(gaussian_eps(sde, mean, std))
    m = 40_000
    a1, s1 = sde.alpha(1.0), sde.sigma(1.0)  # the exact marginal at t = 1 (τ = 0)
    x0 = a1 * mean + jnp.sqrt(a1**2 * std**2 + s1**2) * jax.random.normal(
        jax.random.key(0), (m // 4, 4))
    x, _ = sampling.euler_maruyama(drift, sde.diffusion, x0, sde.time_grid(1000),
                                   jax.random.key(1))
    # At τ = 1 − t_min the exact marginal is N(α·μ, α²s² + σ²) with t = t_min.
    a, s = sde.alpha(sde.t_min), sde.sigma(sde.t_min)
    exp_mean, exp_var = a * mean, a**2 * std**2 + s**2
    se_mean, se_var = np.sqrt(exp_var / m), exp_var * np.sqrt(2 / m)
    assert abs(float(x.mean()) - exp_mean) < 5 * se_mean + 2e-3
    assert abs(float(x.var()) - exp_var) < 5 * se_var + 2e-3
    # The test can fail: a sign error in the score term would be far off.
    wrong = sde.drift_from_eps(lambda x, t: -gaussian_eps(sde, mean, std)(x, t))
    xw, _ = sampling.euler_maruyama(wrong, sde.diffusion, x0, sde.time_grid(100),
                                    jax.random.key(1))
    assert abs(float(xw.var()) - exp_var) > 0.1


def test_increment_variances_and_reproducibility():
    ts = jnp.array([0.0, 0.1, 0.15, 0.4, 1.0])
    m = 50_000
    dw = brownian.increments(jax.random.key(3), ts, (m,))
    var = np.asarray(dw.var(axis=1))
    dt = np.diff(np.asarray(ts))
    np.testing.assert_allclose(var, dt, atol=5 * dt.max() * np.sqrt(2 / m))
    np.testing.assert_array_equal(dw, brownian.increments(jax.random.key(3), ts, (m,)))
    assert not np.allclose(dw, brownian.increments(jax.random.key(4), ts, (m,)))


def test_coarse_increments_are_sums_of_fine_ones():
    ts = jnp.linspace(0.0, 1.0, 13)
    key = jax.random.key(7)
    fine = brownian.increments(key, ts, (5, 3))
    for num_steps in (1, 2, 3, 4, 6, 12):
        coarse = brownian.increments(key, ts, (5, 3), num_steps=num_steps)
        expected = fine.reshape(num_steps, 12 // num_steps, 5, 3).sum(1)
        np.testing.assert_allclose(coarse, expected, rtol=1e-5, atol=1e-6)
        assert brownian.coarse_grid(ts, num_steps).shape == (num_steps + 1,)
    with pytest.raises(ValueError, match="num_steps"):
        brownian.increments(key, ts, (5,), num_steps=5)
