"""Numerics of the EM, ML-EM and Poisson-limit solvers (docs/design.md §1, §5)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlem import brownian, cost, sampling
from tests import helpers


def _ladder():
    """Three drift levels with distinct, state-dependent increments."""
    f1 = lambda x, t: -x
    f2 = lambda x, t: -x + 0.5 * jnp.sin(3.0 * x) * (1.0 + t)
    f3 = lambda x, t: -x + 0.5 * jnp.sin(3.0 * x) * (1.0 + t) + 0.2 * jnp.cos(x)
    return [f1, f2, f3]


def _zero(t):
    return jnp.zeros(())


def test_one_step_is_unbiased_for_the_top_level():
    """z-test over many Bernoulli keys; the unweighted estimator must fail the same test."""
    drifts, probs = _ladder(), jnp.array([1.0, 0.3, 0.1])
    x0 = jnp.array([[0.3, -1.2, 2.0]])
    ts = jnp.array([0.2, 0.7])
    incs = jnp.zeros((1, *x0.shape))
    keys = jax.random.split(jax.random.key(0), 20_000)
    run = jax.vmap(lambda k: sampling.multilevel_euler_maruyama(
        drifts, probs, _zero, x0, ts, k, increments=incs))
    xs, stats = run(keys)
    target, _ = sampling.euler_maruyama(drifts[-1], _zero, x0, ts, keys[0], increments=incs)
    z = (xs.mean(0) - target) / (xs.std(0) / np.sqrt(len(keys)))
    assert np.all(np.abs(z) < 4.5), z
    # Negative control: dropping the 1/p reweighting is detected.
    eta = ts[1] - ts[0]
    diffs = jnp.stack([drifts[0](x0, ts[0])] + [
        drifts[k](x0, ts[0]) - drifts[k - 1](x0, ts[0]) for k in (1, 2)])
    draws = stats["draws"][:, 0, :].astype(jnp.float32)  # (keys, K)
    unweighted = x0 + eta * jnp.einsum("mk,k...->m...", draws, diffs)
    z_wrong = (unweighted.mean(0) - target) / (unweighted.std(0) / np.sqrt(len(keys)))
    assert np.any(np.abs(z_wrong) > 10)


def test_all_probabilities_one_is_exactly_em_with_the_top_level():
    """Weights 1 − 1 = 0 below the top: only the top level is evaluated, and the samples are
    those of EM at the top level, bit for bit."""
    drifts = [*_ladder(), lambda x, t: _ladder()[-1](x, t) - 0.1 * x**3]
    x0 = jax.random.normal(jax.random.key(1), (8, 4))
    ts = jnp.linspace(0.0, 1.0, 21)
    incs = brownian.increments(jax.random.key(2), ts, x0.shape)
    g = lambda t: 0.5 + t
    x_ml, stats = sampling.multilevel_euler_maruyama(
        drifts, jnp.ones(4), g, x0, ts, jax.random.key(3), increments=incs)
    x_em, _ = sampling.euler_maruyama(drifts[-1], g, x0, ts, jax.random.key(4), increments=incs)
    np.testing.assert_array_equal(x_ml, x_em)
    np.testing.assert_array_equal(stats["evals"], [0, 0, 0, 20])
    assert cost.expected_cost(jnp.ones(4), [1.0, 2.0, 4.0, 8.0], 20) == pytest.approx(20 * 8.0)


def test_zero_weight_levels_are_not_evaluated():
    """probs (1, 1, 0.2): a_1 = 1 − 1 = 0 always; a_2 = 1 − B_3/0.2 ≠ 0 always; a_3 = B_3/0.2."""
    n = 2000
    ts = jnp.linspace(0.0, 1.0, n + 1)
    probs = jnp.array([1.0, 1.0, 0.2])
    _, stats = sampling.multilevel_euler_maruyama(_ladder(), probs, _zero, jnp.ones((2, 2)), ts,
                                                  jax.random.key(11))
    evals = np.asarray(stats["evals"])
    assert evals[0] == 0 and evals[1] == n
    assert abs(evals[2] - 0.2 * n) < 5 * np.sqrt(0.2 * 0.8 * n), evals
    np.testing.assert_array_equal(evals[2], np.asarray(stats["draws"])[:, 2].sum())
    np.testing.assert_allclose(cost.expected_evals(probs, n), [0.0, n, 0.2 * n], rtol=1e-6)
    # Equal probabilities below 1 cancel only when both are drawn: p = (1, 0.5, 0.5).
    q = np.asarray(cost.evaluation_probs(jnp.array([1.0, 0.5, 0.5]), 1))[0]
    np.testing.assert_allclose(q, [1.0 - 0.0, 1 - 0.25 - 0.25, 0.5])


@pytest.mark.parametrize("time_varying", [False, True])
def test_evaluation_counts_match_expectation(time_varying):
    drifts, n = _ladder(), 4000
    ts = jnp.linspace(0.0, 1.0, n + 1)
    probs = jnp.array([1.0, 0.4, 0.05])
    if time_varying:
        probs = jnp.stack([jnp.ones(n), jnp.linspace(0.1, 0.9, n), jnp.full(n, 0.02)], 1)
    x0 = jnp.zeros((2, 2))
    _, stats = sampling.multilevel_euler_maruyama(
        drifts, probs, _zero, x0, ts, jax.random.key(5), costs=[1.0, 2.0, 4.0])
    q = cost.evaluation_probs(probs, n)  # (N, K) chance that each level runs
    expected, sd = q.sum(0), jnp.sqrt((q * (1 - q)).sum(0))
    assert np.all(np.abs(stats["evals"] - expected) <= 5 * sd + 1e-9), (stats["evals"], expected)
    assert float(stats["cost_flops"]) == pytest.approx(
        cost.realised_cost(stats, [1.0, 2.0, 4.0]))
    assert cost.expected_cost(probs, [1.0, 2.0, 4.0], n) == pytest.approx(
        float(expected @ jnp.array([1.0, 2.0, 4.0])), rel=1e-5)


def test_level_with_tiny_probability_is_not_computed():
    """Count real calls of each level with a host callback that only runs if executed."""
    calls = np.zeros(3, int)

    drifts = [helpers.counted(calls, k, f) for k, f in enumerate(_ladder())]
    ts = jnp.linspace(0.0, 1.0, 51)
    _, stats = sampling.multilevel_euler_maruyama(
        drifts, jnp.array([1.0, 0.5, 1e-9]), _zero, jnp.ones((3, 2)), ts, jax.random.key(6))
    jax.effects_barrier()
    assert calls[0] == 50 and 0 < calls[1] < 50 and calls[2] == 0, calls
    np.testing.assert_array_equal(stats["evals"], calls)
    # A zero-weight level (p_1 = p_2 = 1) is not computed either.
    calls[:] = 0
    _, stats = sampling.multilevel_euler_maruyama(
        drifts, jnp.array([1.0, 1.0, 1e-9]), _zero, jnp.ones((3, 2)), ts, jax.random.key(6))
    jax.effects_barrier()
    np.testing.assert_array_equal(calls, [0, 50, 0])
    np.testing.assert_array_equal(stats["evals"], calls)


@pytest.mark.parametrize("source", ["increments", "path"])
def test_em_strong_order_one_for_additive_noise(source):
    """OU process dX = −λX dτ + σ dW; nested grids share one Brownian path (as diffrax tests),
    given as materialised increments or as per-sample paths drawn inside the scan."""
    lam, sig, n_ref = 2.0, 0.8, 2**11
    ts = jnp.linspace(0.0, 1.0, n_ref + 1)
    x0 = jnp.ones((1000,))
    key = jax.random.key(8)
    paths = brownian.SamplePaths(brownian.sample_keys(key, 0, 1000), ts)
    fine = (brownian.increments(key, ts, x0.shape) if source == "increments"
            else paths.increments(()))
    # Reference: the exact OU transition driven by the fine increments (error O(h_ref)).
    h = 1.0 / n_ref
    x_ref = jax.lax.fori_loop(0, n_ref, lambda i, x: jnp.exp(-lam * h) * x
                              + sig * jnp.exp(-lam * h / 2) * fine[i], x0)
    steps = [8, 16, 32, 64, 128]
    errors = []
    for n in steps:
        if source == "increments":
            noise = {"increments": brownian.increments(key, ts, x0.shape, num_steps=n)}
        else:
            noise = {"path": paths}
        x, _ = sampling.euler_maruyama(lambda x, t: -lam * x, lambda t: sig, x0,
                                       brownian.coarse_grid(ts, n), key, **noise)
        errors.append(float(jnp.sqrt(jnp.mean((x - x_ref) ** 2))))
    order = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert 0.85 < order < 1.15, (order, errors)


def test_path_by_key_gives_the_samples_of_its_materialised_increments():
    drifts, probs = _ladder(), jnp.array([1.0, 0.5, 0.2])
    ts = jnp.linspace(0.0, 1.0, 33)
    x0 = jax.random.normal(jax.random.key(12), (6, 3))
    paths = brownian.SamplePaths(brownian.sample_keys(jax.random.key(13), 0, 6), ts)
    key, g = jax.random.key(14), (lambda t: 0.4)
    for n in (8, 32):
        coarse = brownian.coarse_grid(ts, n)
        x_path, s_path = sampling.multilevel_euler_maruyama(drifts, probs, g, x0, coarse, key,
                                                            path=paths)
        x_inc, s_inc = sampling.multilevel_euler_maruyama(
            drifts, probs, g, x0, coarse, key, increments=paths.increments((3,), n))
        np.testing.assert_allclose(x_path, x_inc, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(s_path["evals"], s_inc["evals"])


def test_batch_and_jit_consistency():
    drifts, probs = _ladder(), jnp.array([1.0, 0.5, 0.2])
    x0 = jax.random.normal(jax.random.key(9), (4, 3))
    ts = jnp.linspace(0.0, 1.0, 31)
    g = lambda t: 0.3
    key = jax.random.key(10)
    x, stats = sampling.multilevel_euler_maruyama(drifts, probs, g, x0, ts, key)
    incs = brownian.increments(jax.random.split(key)[0], ts, x0.shape)
    for i in range(4):  # draws are shared across the batch: each row alone gives the same
        xi, si = sampling.multilevel_euler_maruyama(
            drifts, probs, g, x0[i:i + 1], ts, key, increments=incs[:, i:i + 1])
        np.testing.assert_allclose(xi[0], x[i], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(si["evals"], stats["evals"])
    jitted = jax.jit(lambda p, x0, k: sampling.multilevel_euler_maruyama(
        drifts, p, g, x0, ts, k)[0])
    np.testing.assert_allclose(jitted(probs, x0, key), x, rtol=1e-5, atol=1e-6)
    # Traced probabilities: the solve is differentiable in p.
    grad = jax.grad(lambda p: jitted(p, x0, key).sum())(probs)
    assert np.all(np.isfinite(grad))


def test_invalid_input_names_the_argument():
    drifts, x0, ts, key = _ladder(), jnp.ones((2, 2)), jnp.linspace(0, 1, 5), jax.random.key(0)
    mlem = sampling.multilevel_euler_maruyama
    for bad in ([1.0, 0.0, 0.5], [1.0, 1.5, 0.5], [1.0, np.nan, 0.5]):
        with pytest.raises(ValueError, match="probs"):
            mlem(drifts, jnp.array(bad), _zero, x0, ts, key)
    with pytest.raises(ValueError, match="probs"):
        mlem(drifts, jnp.ones(2), _zero, x0, ts, key)
    with pytest.raises(ValueError, match="probs"):
        mlem(drifts, jnp.ones((5, 3)), _zero, x0, ts, key)
    with pytest.raises(ValueError, match="ts"):
        mlem(drifts, jnp.ones(3), _zero, x0, jnp.array([0.0, 0.5, 0.4]), key)
    with pytest.raises(ValueError, match="drifts"):
        mlem([], jnp.ones(0), _zero, x0, ts, key)
    with pytest.raises(ValueError, match="increments"):
        mlem(drifts, jnp.ones(3), _zero, x0, ts, key, increments=jnp.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="increments"):
        sampling.euler_maruyama(drifts[0], _zero, x0, ts, key, increments=jnp.zeros((4, 2)))


# --- the Poisson limit (sampling.poisson_multilevel_euler_maruyama) ---------------------------

def test_poisson_one_interval_is_unbiased_for_the_top_level():
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


def test_poisson_event_counts_are_poisson():
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


@pytest.mark.parametrize("num_steps", [16, pytest.param(1024, marks=pytest.mark.slow)])
def test_poisson_correction_cost_is_bounded_by_the_rates_whatever_the_step_count(num_steps):
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


def test_poisson_invalid_rates_name_the_argument():
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


# --- deterministic switching (sampling.switching_euler_maruyama) ------------------------------

def test_switching_uses_the_level_of_each_step_and_counts_it():
    drifts = _ladder()
    x0 = jax.random.normal(jax.random.key(1), (4, 3))
    ts = jnp.linspace(0.0, 1.0, 9)
    incs = brownian.increments(jax.random.key(2), ts, x0.shape)
    g = lambda t: 0.5 + t
    levels = jnp.array([1, 1, 1, 2, 2, 3, 3, 3])
    x, stats = sampling.switching_euler_maruyama(drifts, levels, g, x0, ts, None, increments=incs)
    manual = x0
    for n in range(8):
        f = drifts[int(levels[n]) - 1]
        manual = manual + (ts[n + 1] - ts[n]) * f(manual, ts[n]) + g(ts[n]) * incs[n]
    np.testing.assert_allclose(x, manual, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(stats["evals"], [3, 2, 3])
    top, _ = sampling.euler_maruyama(drifts[-1], g, x0, ts, None, increments=incs)
    same, _ = sampling.switching_euler_maruyama(drifts, jnp.full(8, 3), g, x0, ts, None,
                                                increments=incs)
    np.testing.assert_allclose(same, top, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="levels: every level must lie in 1..3"):
        sampling.switching_euler_maruyama(drifts, jnp.zeros(8, int), g, x0, ts, None,
                                          increments=incs)
