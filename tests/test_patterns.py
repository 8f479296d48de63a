"""Fixed evaluation patterns: the sampler's ``draws=``, and ``mlem.patterns`` (docs/patterns.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlem import brownian, patterns, sampling
from tests import helpers


def _ladder():
    """Three drift levels with distinct, state-dependent increments."""
    f1 = lambda x, t: -x
    f2 = lambda x, t: -x + 0.5 * jnp.sin(3.0 * x) * (1.0 + t)
    f3 = lambda x, t: -x + 0.5 * jnp.sin(3.0 * x) * (1.0 + t) + 0.2 * jnp.cos(x)
    return [f1, f2, f3]


def test_fixed_draws_of_a_key_reproduce_its_solve_exactly():
    drifts, probs, g = _ladder(), jnp.array([1.0, 0.5, 0.2]), (lambda t: 0.4 + t)
    x0 = jax.random.normal(jax.random.key(1), (5, 3))
    ts = jnp.linspace(0.0, 1.0, 41)
    key = jax.random.key(2)
    mlem = sampling.multilevel_euler_maruyama
    x, stats = mlem(drifts, probs, g, x0, ts, key)
    x_fixed, s_fixed = mlem(drifts, probs, g, x0, ts, key, draws=stats["draws"])
    np.testing.assert_array_equal(x_fixed, x)
    np.testing.assert_array_equal(s_fixed["evals"], stats["evals"])
    np.testing.assert_array_equal(s_fixed["draws"], stats["draws"])
    # key drives only the Brownian path: with the increments given, no key is needed
    incs = brownian.increments(jax.random.split(key)[0], ts, x0.shape)
    x_none, _ = mlem(drifts, probs, g, x0, ts, None, increments=incs, draws=stats["draws"])
    np.testing.assert_allclose(x_none, x, rtol=1e-6, atol=1e-6)
    # another key's draws give another solve; traced draws go through one jitted solve
    other = np.asarray(mlem(drifts, probs, g, x0, ts, jax.random.key(3))[1]["draws"])
    assert not np.array_equal(other, np.asarray(stats["draws"]))
    jitted = jax.jit(lambda d: mlem(drifts, probs, g, x0, ts, key, draws=d)[0])
    np.testing.assert_allclose(jitted(stats["draws"]), x, rtol=1e-6, atol=1e-6)
    assert not np.allclose(jitted(jnp.asarray(other)), x)
    # column 0 is forced true
    no_base = jnp.asarray(stats["draws"]).at[:, 0].set(False)
    np.testing.assert_array_equal(mlem(drifts, probs, g, x0, ts, key, draws=no_base)[0], x)


def test_all_true_pattern_at_probability_one_is_em_with_the_top_level():
    drifts, g = _ladder(), (lambda t: 0.5 + t)
    x0 = jax.random.normal(jax.random.key(4), (6, 2))
    ts = jnp.linspace(0.0, 1.0, 17)
    incs = brownian.increments(jax.random.key(5), ts, x0.shape)
    x, stats = sampling.multilevel_euler_maruyama(drifts, jnp.ones(3), g, x0, ts, None,
                                                  increments=incs, draws=jnp.ones((16, 3), bool))
    x_em, _ = sampling.euler_maruyama(drifts[-1], g, x0, ts, None, increments=incs)
    np.testing.assert_array_equal(x, x_em)
    np.testing.assert_array_equal(stats["evals"], [0, 0, 16])


def test_evaluations_follow_the_pattern_and_are_priced_exactly():
    """Every combination of (B_2, B_3) with p = (1, 0.5, 0.5): level 2 runs iff exactly one
    of them is drawn (both drawn: the equal weights cancel); a host callback counts calls."""
    calls = np.zeros(3, int)

    drifts = [helpers.counted(calls, k, f) for k, f in enumerate(_ladder())]
    probs = jnp.array([1.0, 0.5, 0.5])
    pattern = np.array([[1, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1], [1, 1, 1], [1, 0, 0]], bool)
    expected = np.array([[1, 0, 0], [1, 1, 0], [1, 1, 1], [1, 0, 1], [1, 0, 1], [1, 0, 0]], bool)
    np.testing.assert_array_equal(patterns.evaluated(pattern, probs), expected)
    ts = jnp.linspace(0.0, 1.0, 7)
    _, stats = sampling.multilevel_euler_maruyama(drifts, probs, lambda t: 0.3, jnp.ones((2, 2)),
                                                  ts, jax.random.key(0), draws=pattern)
    jax.effects_barrier()
    np.testing.assert_array_equal(calls, [6, 2, 3])
    np.testing.assert_array_equal(stats["evals"], calls)
    np.testing.assert_array_equal(patterns.evals(pattern, probs), calls)
    assert patterns.cost(pattern, probs, [1.0, 2.0, 4.0]) == pytest.approx(6 + 4 + 12)
    # drawn patterns: the sampler's counts equal the pattern's, pattern by pattern
    n = 30
    schedule = np.stack([np.ones(n), np.linspace(0.2, 0.9, n), np.full(n, 0.1)], 1)
    many = patterns.draw(schedule, 4, jax.random.key(1))
    counts = patterns.evals(many, schedule)
    assert counts.shape == (4, 3)
    for m in range(4):
        _, s = sampling.multilevel_euler_maruyama(_ladder(), schedule, lambda t: 0.3,
                                                  jnp.ones((2, 2)), jnp.linspace(0, 1, n + 1),
                                                  jax.random.key(2), draws=many[m])
        np.testing.assert_array_equal(s["evals"], counts[m])


def test_draw_frequencies_match_the_schedule():
    n, m = 50, 400
    probs = np.stack([np.ones(n), np.linspace(0.05, 0.95, n), np.full(n, 0.1)], 1)
    drawn = patterns.draw(probs, m, jax.random.key(3))
    assert drawn.shape == (m, n, 3) and drawn.dtype == np.bool_
    assert drawn[..., 0].all()
    freq = drawn.mean(0)
    z = (freq[:, 1:] - probs[:, 1:]) / np.sqrt(probs[:, 1:] * (1 - probs[:, 1:]) / m)
    assert np.all(np.abs(z) < 4.5), np.abs(z).max()
    # pooled over steps: tight enough to see a 10% error in the schedule
    pooled = freq[:, 2].mean()
    assert abs(pooled - 0.1) < 4.5 * np.sqrt(0.1 * 0.9 / (m * n)), pooled
    assert not np.array_equal(drawn[0], drawn[1])
    with pytest.raises(ValueError, match="probs"):
        patterns.draw(np.ones(3), 2, jax.random.key(0))


def test_a_fixed_pattern_is_biased_and_random_patterns_are_not():
    """dX = −a_k X dτ + g dW with a = (0.5, 1.5): the mean of X_N under the weights of a
    pattern is x0 Π(1 − η c_n), c_n = a_1 + (a_2 − a_1) B_n/p. A fixed pattern's mean over many
    Brownian paths is its own product, not the top level's (1 − η a_2)^N; averaged over
    random patterns it is the top level's."""
    a, p, n = (0.5, 1.5), 0.3, 8
    drifts = [lambda x, t: -a[0] * x, lambda x, t: -a[1] * x]
    probs, g = jnp.array([1.0, p]), (lambda t: 0.5)
    ts = jnp.linspace(0.0, 1.0, n + 1)
    eta = 1.0 / n
    top_mean = (1 - eta * a[1]) ** n  # 0.19
    pattern = np.zeros((n, 2), bool)
    pattern[:, 0] = pattern[0, 1] = True  # level 2 drawn once, at the first step
    c = a[0] + (a[1] - a[0]) * pattern[:, 1] / p  # pattern mean 0.33
    pattern_mean = float(np.prod(1 - eta * c))
    # one fixed pattern, 20 000 independent paths (a batch of one-pixel samples)
    samples, key = 20_000, jax.random.key(8)
    x0 = jnp.ones((samples, 1))
    x, _ = sampling.multilevel_euler_maruyama(drifts, probs, g, x0, ts, key, draws=pattern)
    x_top, _ = sampling.euler_maruyama(drifts[1], g, x0, ts, key)  # the same paths
    se = float(x.std() / np.sqrt(samples))
    assert abs(float(x.mean()) - pattern_mean) < 4.5 * se
    assert abs(float(x.mean()) - top_mean) > 10 * se, (pattern_mean, top_mean)
    # patterns.bias sees it from differences on shared paths: b² = (pattern − top mean)²
    report = patterns.bias(np.asarray(x - x_top))
    true_sq = (pattern_mean - top_mean) ** 2
    assert report["bias_sq"] == pytest.approx(true_sq, rel=0.1)
    assert 0 < report["bias_share"] <= 1 and report["bias_sq_noise"] < 0.01 * true_sq
    # a fresh random pattern per path: unbiased for the top level
    paths = 20_000
    drawn = patterns.draw(np.tile(probs, (n, 1)), paths, jax.random.key(9))
    keys = jax.random.split(jax.random.key(10), paths)
    xs, _ = jax.vmap(lambda d, k: sampling.multilevel_euler_maruyama(
        drifts, probs, g, jnp.ones((1, 1)), ts, k, draws=d))(jnp.asarray(drawn), keys)
    z = (float(xs.mean()) - top_mean) / float(xs.std() / np.sqrt(paths))
    assert abs(z) < 4.5, z
    # and patterns.bias finds no bias where there is none (EM against itself plus noise)
    noise = np.asarray(jax.random.normal(jax.random.key(11), (samples, 4)))
    assert abs(patterns.bias(noise)["bias_sq"]) < 5 * patterns.bias(noise)["bias_sq_noise"]


def test_select_and_report_keep_selection_and_evaluation_apart():
    """Ten equally good patterns; selection noise alone makes the winner look better on the
    selection realisations than it is on the evaluation ones."""
    rng = np.random.default_rng(0)
    m, s, r = 10, 4, 50
    selection = 1.0 + 0.2 * rng.standard_normal((m, s))
    evaluation = 1.0 + 0.2 * rng.standard_normal((m, r))
    index, means = patterns.select(selection)
    assert index == int(np.argmin(selection.mean(1))) and means.shape == (m,)
    report = patterns.selection_report(selection, evaluation[index], evaluation)
    assert report["index"] == index and report["num_patterns"] == m
    assert report["selection_mse"] == pytest.approx(means.min())
    assert report["evaluation_mse"] == pytest.approx(evaluation[index].mean())
    assert report["optimism"] > 0  # the winner's selection score is optimistic
    assert report["random_pattern_mse"] == pytest.approx(evaluation.mean())
    assert 1 <= report["evaluation_rank"] <= m
    assert report["selection_gain"] == pytest.approx(evaluation.mean() / evaluation[index].mean())
    # a truly better pattern is found, and keeps its advantage on evaluation
    selection[3] -= 0.5
    evaluation[3] -= 0.5
    report = patterns.selection_report(selection, evaluation[3], evaluation)
    assert report["index"] == 3 and report["evaluation_rank"] == 1
    assert report["selection_gain"] > 1.3
    # a diverged pattern is never selected
    selection[5] = np.nan
    assert patterns.select(selection)[0] == 3
    with pytest.raises(ValueError, match="all_evaluation_errors"):
        patterns.selection_report(selection, evaluation[3], evaluation[:, :5])


def test_invalid_draws_name_the_argument():
    x0, ts = jnp.ones((2, 2)), jnp.linspace(0.0, 1.0, 5)
    mlem = sampling.multilevel_euler_maruyama
    with pytest.raises(ValueError, match=r"draws: expected shape \(4, 3\)"):
        mlem(_ladder(), jnp.ones(3), lambda t: 0.0, x0, ts, jax.random.key(0),
             draws=jnp.ones((4, 2), bool))
    with pytest.raises(ValueError, match="draws: expected a boolean"):
        mlem(_ladder(), jnp.ones(3), lambda t: 0.0, x0, ts, jax.random.key(0),
             draws=jnp.ones((4, 3)))
    with pytest.raises(ValueError, match="key"):
        mlem(_ladder(), jnp.ones(3), lambda t: 0.0, x0, ts, None, draws=jnp.ones((4, 3), bool))
    with pytest.raises(ValueError, match="pattern"):
        patterns.evals(np.ones((4, 3)), jnp.ones(3))


def test_ladder_mlem_passes_fixed_draws_to_the_same_solver():
    """Two analytic Gaussian levels (different means) as a ladder: the draws of a keyed
    solve reproduce it through ``ladder.mlem``."""
    from mlem import ladder as ladders
    from mlem.sde import VPSDE

    ladder, x0 = helpers.gaussian_ladder(VPSDE())
    ts, probs, key = np.linspace(0.0, 0.99, 9), np.array([1.0, 0.5]), jax.random.key(2)
    x, stats = ladders.mlem(ladder, probs, x0, ts, key)
    x_fixed, s_fixed = ladders.mlem(ladder, probs, x0, ts, key, draws=stats["draws"])
    np.testing.assert_array_equal(x_fixed, x)
    np.testing.assert_array_equal(s_fixed["evals"], stats["evals"])
    np.testing.assert_array_equal(s_fixed["evals"], patterns.evals(stats["draws"], probs))
    x_other, _ = ladders.mlem(ladder, probs, x0, ts, key, draws=~np.asarray(stats["draws"]))
    assert not np.allclose(x_other, x)
    with pytest.raises(ValueError, match="draws"):
        ladders.mlem(ladder, probs, x0, ts, key, draws=np.ones((4, 2), bool))
