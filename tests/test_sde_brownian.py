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


def test_sample_paths_sum_fine_increments_and_do_not_depend_on_the_batch():
    ts = jnp.linspace(0.0, 1.0, 13)
    key = jax.random.key(8)
    paths = brownian.SamplePaths(brownian.sample_keys(key, 0, 16), ts)
    fine = paths.increments((3, 2))
    assert fine.shape == (12, 16, 3, 2)
    for num_steps in (1, 3, 4, 12):
        expected = fine.reshape(num_steps, 12 // num_steps, 16, 3, 2).sum(1)
        np.testing.assert_allclose(paths.increments((3, 2), num_steps), expected,
                                   rtol=1e-5, atol=1e-6)
    # Samples 8..15 drawn as a batch of their own see the same path: the same random bits,
    # turned into normals by kernels XLA vectorises per batch shape (so equal to 1 ulp).
    second = brownian.SamplePaths(brownian.sample_keys(key, 8, 8), ts)
    np.testing.assert_allclose(second.increments((3, 2), 4), paths.increments((3, 2), 4)[:, 8:],
                               rtol=1e-6, atol=1e-7)
    assert not np.allclose(second.increments((3, 2), 4), paths.increments((3, 2), 4)[:, :8])
    # What the solver reads step by step inside its scan is what is materialised.
    like = jnp.zeros((16, 3, 2))
    np.testing.assert_allclose(paths.step(jnp.asarray(2), 4, like),
                               paths.increments((3, 2), 4)[2], rtol=1e-6, atol=1e-7)
    var = np.asarray(brownian.SamplePaths(brownian.sample_keys(key, 0, 20_000), ts)
                     .increments((), 3)).var(1)
    np.testing.assert_allclose(var, 1 / 3, rtol=0.05)


def test_default_batch_path_is_the_materialised_one():
    """With neither increments nor path, the solver draws the batch path of split(key)[0] on
    ts inside its scan: the same numbers as brownian.increments."""
    ts = jnp.linspace(0.0, 1.0, 9)
    x0 = jnp.ones((4, 3))
    key = jax.random.key(5)
    drift, g = (lambda x, t: -x), (lambda t: 0.7)
    x, _ = sampling.euler_maruyama(drift, g, x0, ts, key)
    incs = brownian.increments(jax.random.split(key)[0], ts, x0.shape)
    x_given, _ = sampling.euler_maruyama(drift, g, x0, ts, None, increments=incs)
    np.testing.assert_array_equal(x, x_given)
    with pytest.raises(ValueError, match="increments, path"):
        sampling.euler_maruyama(drift, g, x0, ts, key, increments=incs,
                                path=brownian.BatchPath(key, ts))
    with pytest.raises(ValueError, match="path: SamplePaths needs one key per sample"):
        sampling.euler_maruyama(drift, g, x0, ts, key,
                                path=brownian.SamplePaths(brownian.sample_keys(key, 0, 3), ts))
    with pytest.raises(ValueError, match="path: its fine grid has 8 steps"):
        sampling.euler_maruyama(drift, g, x0, jnp.linspace(0.0, 1.0, 4), key,
                                path=brownian.BatchPath(key, ts))
    with pytest.raises(ValueError, match="nested grid"):
        sampling.euler_maruyama(drift, g, x0, ts[::2] * 0.5, key,
                                path=brownian.BatchPath(key, ts))


def test_solve_memory_does_not_grow_with_the_step_count():
    """XLA's compiled memory of an EM solve with the celeba64_level1 UNet at 64×64×3, batch
    8, per-sample paths: 64 and 1,024 steps within 5% (materialised increments would add
    (N, 8, 64, 64, 3) floats: 25 MB at 64 steps, 400 MB at 1,024)."""
    from mlem.models import registry

    model = registry.get_model("celeba64_level1")
    x0 = jnp.zeros((8, 64, 64, 3))
    params = jax.eval_shape(model.init, jax.random.key(0), x0, jnp.zeros((8,)))["params"]
    sde = VPSDE()
    path_ts = sde.time_grid(1024)
    keys = brownian.sample_keys(jax.random.key(1), 0, 8)

    def solve(params, x0, keys, num_steps):
        eps = lambda x, t: model.apply({"params": params}, x, jnp.broadcast_to(t, (8,)),
                                       train=False)
        return sampling.euler_maruyama(
            sde.drift_from_eps(eps), sde.diffusion, x0, brownian.coarse_grid(path_ts, num_steps),
            None, path=brownian.SamplePaths(keys, path_ts))[0]

    def total_bytes(num_steps):
        m = jax.jit(solve, static_argnums=3).lower(params, x0, keys, num_steps).compile()
        m = m.memory_analysis()
        return m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes

    small, large = total_bytes(64), total_bytes(1024)
    assert abs(large - small) < 0.05 * small, (small, large)
