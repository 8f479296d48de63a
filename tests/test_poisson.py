"""The Poisson limit of ML-EM: unbiased on one interval, event counts Poisson, and a cost of
the corrections bounded by the rates whatever the step count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlem import sampling


def _ladder():
    """Three drift levels with distinct, state-dependent increments."""
    f1 = lambda x, t: -x
    f2 = lambda x, t: -x + 0.5 * jnp.sin(3.0 * x) * (1.0 + t)
    f3 = lambda x, t: -x + 0.5 * jnp.sin(3.0 * x) * (1.0 + t) + 0.2 * jnp.cos(x)
    return [f1, f2, f3]


def _zero(t):
    return jnp.zeros(())


def test_one_interval_is_unbiased_for_the_top_level():
    """z-test over many keys at a step where two events are likely (λη = 1.5 and 0.4); the
    estimator that counts an event once (Bernoulli-like) must fail the same test."""
    drifts, rates = _ladder(), jnp.array([1.0, 3.0, 0.8])
    x0, ts = jnp.array([[0.3, -1.2, 2.0]]), jnp.array([0.2, 0.7])
    incs = jnp.zeros((1, *x0.shape))
    keys = jax.random.split(jax.random.key(0), 20_000)
    xs, stats = jax.vmap(lambda k: sampling.poisson_multilevel_euler_maruyama(
        drifts, rates, _zero, x0, ts, k, increments=incs))(keys)
    target, _ = sampling.euler_maruyama(drifts[-1], _zero, x0, ts, None, increments=incs)
    z = (xs.mean(0) - target) / (xs.std(0) / np.sqrt(len(keys)))
    assert np.all(np.abs(z) < 4.5), z
    eta = ts[1] - ts[0]
    diffs = jnp.stack([drifts[k](x0, ts[0]) - drifts[k - 1](x0, ts[0]) for k in (1, 2)])
    once = jnp.minimum(stats["draws"][:, 0, 1:], 1) / (rates[1:] * eta)  # (keys, 2)
    capped = x0 + eta * (drifts[0](x0, ts[0]) + jnp.einsum("mk,k...->m...", once, diffs))
    z_wrong = (capped.mean(0) - target) / (capped.std(0) / np.sqrt(len(keys)))
    assert np.any(np.abs(z_wrong) > 10)


def test_event_counts_are_poisson():
    rates, n = jnp.array([1.0, 400.0, 100.0]), 20_000
    ts = jnp.linspace(0.0, 1.0, n + 1)
    x0 = jnp.zeros((1, 1))
    _, stats = sampling.poisson_multilevel_euler_maruyama(
        [lambda x, t: -x] * 3, rates, _zero, x0, ts, jax.random.key(1))
    counts = np.asarray(stats["draws"])
    assert np.all(counts[:, 0] == 1)
    # 100 bins of 200 steps (0.01 of solver time): counts ~ Poisson(0.01 λ), mean = variance
    binned = counts[:, 1:].reshape(100, 200, 2).sum(1)
    for k, rate in enumerate((400.0, 100.0)):
        assert binned[:, k].mean() == pytest.approx(0.01 * rate, rel=0.25)
        assert binned[:, k].var(ddof=1) == pytest.approx(0.01 * rate, rel=0.5)
    # a level runs on the steps where it or the level above has an event
    evals = np.asarray(stats["evals"])
    assert evals[2] == np.sum(counts[:, 2] > 0)
    assert evals[1] == np.sum((counts[:, 1] > 0) | (counts[:, 2] > 0))


@pytest.mark.parametrize("num_steps", [16, 1024])
def test_correction_cost_is_bounded_by_the_rates_whatever_the_step_count(num_steps):
    """Level ``k ≥ 2`` runs on the steps with an event of level ``k`` or ``k + 1``:
    ``E[evals_k] = N (1 − exp(−(λ_k + λ_{k+1})/N))`` on ``[0, 1]``, which never exceeds
    ``λ_k + λ_{k+1}`` and tends to it as ``N`` grows: the cost of the corrections does not grow
    with the step count. (The base level runs on every step.)"""
    rates, seeds = np.array([1.0, 6.0, 1.5]), 2000
    ts = jnp.linspace(0.0, 1.0, num_steps + 1)
    x0 = jnp.zeros((1, 3))
    _, stats = jax.vmap(lambda k: sampling.poisson_multilevel_euler_maruyama(
        _ladder(), rates, _zero, x0, ts, k))(jax.random.split(jax.random.key(2), seeds))
    evals = np.asarray(stats["evals"], np.float64)
    assert np.all(evals[:, 0] == num_steps)
    total = np.array([rates[1] + rates[2], rates[2]])
    expected = num_steps * (1 - np.exp(-total / num_steps))
    se = evals[:, 1:].std(0) / np.sqrt(seeds)
    assert np.all(np.abs(evals[:, 1:].mean(0) - expected) < 4.5 * se), (evals.mean(0), expected)
    assert np.all(expected <= total) and np.all(expected >= 0.5 * total)


def test_invalid_rates_name_the_argument():
    x0, ts = jnp.zeros((1, 2)), jnp.linspace(0.0, 1.0, 5)
    with pytest.raises(ValueError, match="rates: every rate"):
        sampling.poisson_multilevel_euler_maruyama(_ladder(), [1.0, 0.0, 1.0], _zero, x0, ts,
                                                   jax.random.key(0))
    with pytest.raises(ValueError, match="rates: expected shape"):
        sampling.poisson_multilevel_euler_maruyama(_ladder(), [1.0, 1.0], _zero, x0, ts,
                                                   jax.random.key(0))


def test_poisson_limit_script_writes_summary_and_figure(tmp_path):
    from analysis import poisson_limit

    cfg = poisson_limit.PoissonConfig(num_levels=3, steps=(8, 32), ref_steps=128, seeds=3,
                                      batch_size=8)
    summary = poisson_limit.run(cfg, tmp_path)
    assert summary["steps"] == [8, 32] and len(summary["rmse"]) == 2
    assert all(np.isfinite(summary["rmse"])) and all(np.isfinite(summary["rmse_se"]))
    rates = np.asarray(summary["rates"])
    assert rates[-1] == pytest.approx(cfg.top_rate) and np.all(rates > 0)
    # corrections never exceed their limit in expectation; with 3 seeds allow the noise
    assert max(summary["correction_evals"]) < 3 * summary["correction_evals_limit"]
    assert (tmp_path / "poisson_limit.png").stat().st_size > 0
    with pytest.raises(ValueError, match="ref_steps"):
        poisson_limit.PoissonConfig(steps=(8, 64), ref_steps=128)
