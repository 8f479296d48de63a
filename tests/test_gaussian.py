"""The analytic bottom level: exact for Gaussian data, fitted in one pass, trained, loaded
and priced like any level (issue: a free Gaussian level)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from analysis import common, variance
from configs import tiny, tiny_sample
from mlem import ladder as ladders
from mlem import sampling
from mlem.models import gaussian, registry
from mlem.sde import VPSDE
from mlem.train import loop

SHAPE = (2, 2, 1)  # D = 4


def _gaussian(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(4, 4))
    return rng.normal(scale=0.5, size=4), 0.3 * a @ a.T / 4 + 0.05 * np.eye(4)


def _params(mean: np.ndarray, cov: np.ndarray, rank: int) -> dict:
    values, vectors = np.linalg.eigh(cov)
    rest = values[: 4 - rank]
    return {"mean": jnp.asarray(mean.reshape(SHAPE), jnp.float32),
            "components": jnp.asarray(vectors[:, 4 - rank:], jnp.float32),
            "variances": jnp.asarray(values[4 - rank:], jnp.float32),
            "remainder": jnp.float32(rest.mean() if rest.size else 0.0)}


def _apply(params: dict, x, t):
    rank = params["variances"].shape[0]
    return gaussian.GaussianEps(rank=rank).apply({"params": params}, x, t)


def test_eps_is_the_exact_denoiser_of_the_gaussian():
    mean, cov = _gaussian()
    sde = VPSDE()
    x = jax.random.normal(jax.random.key(1), (5, *SHAPE))
    t = jnp.linspace(0.01, 0.99, 5)
    a, s = np.asarray(sde.alpha(t)), np.asarray(sde.sigma(t))
    flat = np.asarray(x).reshape(5, 4)
    exact = np.stack([s[i] * np.linalg.solve(a[i]**2 * cov + s[i]**2 * np.eye(4),
                                             flat[i] - a[i] * mean) for i in range(5)])
    np.testing.assert_allclose(np.asarray(_apply(_params(mean, cov, 4), x, t)).reshape(5, 4),
                               exact, rtol=1e-4, atol=1e-5)
    # rank 2 is exact when the covariance has that form (equal trailing eigenvalues) ...
    values, vectors = np.linalg.eigh(cov)
    low = vectors @ np.diag([0.1, 0.1, values[2], values[3]]) @ vectors.T
    exact_low = np.stack([s[i] * np.linalg.solve(a[i]**2 * low + s[i]**2 * np.eye(4),
                                                 flat[i] - a[i] * mean) for i in range(5)])
    got = _apply(_params(mean, low, 2), x, t)
    np.testing.assert_allclose(np.asarray(got).reshape(5, 4), exact_low, rtol=1e-4, atol=1e-5)
    # ... and not for the full covariance (negative control)
    assert not np.allclose(np.asarray(_apply(_params(mean, cov, 2), x, t)).reshape(5, 4),
                           exact, rtol=1e-3, atol=1e-3)


def test_sampler_with_the_gaussian_level_reproduces_mean_and_covariance():
    """EM on the reverse SDE with this level as the drift samples N(α μ, α² Σ + σ² I) at t_min."""
    mean, cov = _gaussian(2)
    sde, params, n = VPSDE(), _params(*_gaussian(2), 4), 8000
    drift = sde.drift_from_eps(lambda x, t: _apply(params, x, jnp.full(x.shape[:1], t)))
    ts = sde.time_grid(400)
    x0 = jax.random.normal(jax.random.key(3), (n, *SHAPE))
    x, _ = jax.jit(lambda x0: sampling.euler_maruyama(drift, sde.diffusion, x0, ts,
                                                      jax.random.key(4)))(x0)
    flat = np.asarray(x, np.float64).reshape(n, 4)
    a, s = float(sde.alpha(sde.t_min)), float(sde.sigma(sde.t_min))
    np.testing.assert_allclose(flat.mean(0), a * mean, atol=0.03)
    np.testing.assert_allclose(np.cov(flat.T), a**2 * cov + s**2 * np.eye(4), atol=0.04)


def test_fit_recovers_mean_and_covariance_in_batches():
    mean, cov = _gaussian(5)
    x = np.random.default_rng(6).multivariate_normal(mean, cov, size=40_000)
    batches = (x[i:i + 1000].reshape(-1, *SHAPE) for i in range(0, len(x), 1000))
    full = gaussian.fit(batches, rank=10)  # clipped to D = 4
    u, lam = full["components"], full["variances"]
    assert u.shape == (4, 4) and full["remainder"] == 0.0
    np.testing.assert_allclose(full["mean"].reshape(4), mean, atol=0.02)
    np.testing.assert_allclose(u @ np.diag(lam) @ u.T, cov, atol=0.02)
    low = gaussian.fit([x.reshape(-1, *SHAPE)], rank=2)
    values = np.linalg.eigvalsh(cov)
    np.testing.assert_allclose(low["variances"], values[2:], rtol=0.05)
    assert low["remainder"] == pytest.approx(values[:2].mean(), rel=0.05)


def test_level_names():
    assert registry.gaussian_rank("gaussian") == 0
    assert registry.gaussian_rank("gaussian_rank32") == 32
    assert registry.gaussian_rank("gaussian_rank0") is None
    assert registry.gaussian_rank("mnist_level1") is None


@pytest.mark.xdist_group("tiny_ladder")
def test_gaussian_level_trains_loads_and_is_priced_like_any_level(tiny_ladder, tmp_path):
    root = tmp_path / "ladder"
    shutil.copytree(tiny_ladder / "level1", root / "level1")
    config = tiny.get_config()
    config.model.level, config.training.num_steps = "gaussian_rank8", 1
    result = loop.train_and_evaluate(config, root / "gaussian")
    assert result["step"] == 1 and 0 < result["heldout_loss"] < 1.0
    record = json.loads((root / "gaussian" / "config.json").read_text())
    assert record["model"]["level"] == "gaussian_rank8"
    assert loop.train_and_evaluate(config, root / "gaussian") == result  # reused

    sample_config = tiny_sample.get_config()
    sample_config.levels = ("gaussian", "level1")
    ladder = ladders.load_ladder(sample_config, root)
    assert ladder.steps == (1, 4)
    flops = ladders.measure_flops(ladder, batch_size=4)  # strictly increasing, from XLA
    size = int(np.prod(ladder.image_shape))
    assert 2 * size * 8 < flops[0] < 8 * size * 8 < flops[1]  # about 4·D·r
    x0 = jnp.zeros((2, *ladder.image_shape))
    x, stats = ladders.mlem(ladder, np.array([1.0, 0.5]), x0, np.linspace(0, 0.99, 5),
                            jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(x))) and stats["evals"].shape == (2,)
    assert Path(root / "gaussian" / "metrics.jsonl").read_text().count("heldout_loss") == 1

    # analysis.variance reports V_k(τ) with and without it; "without" is what the same
    # forward samples give for the ladder that lacks the Gaussian
    sample_config.analysis.variance_samples, sample_config.analysis.num_time_bins = 32, 4
    record = variance.write_variances(common.prepare(sample_config, root, tmp_path / "a", False))
    with_g, without = np.asarray(record["variances"]), record["without_gaussian"]
    assert without["levels"] == ["level1"] and with_g.shape == (4, 2)
    assert not np.allclose(with_g[:, 1], np.asarray(without["variances"])[:, 0])
    sample_config.levels = ("level1",)
    alone = variance.write_variances(common.prepare(sample_config, root, tmp_path / "b", False))
    assert "without_gaussian" not in alone
    np.testing.assert_allclose(without["variances"], alone["variances"], rtol=1e-6)
