"""FLOP counting, expected cost and probability schedules."""

import jax.numpy as jnp
import numpy as np
import pytest

from mlem import cost, schedules


def test_flops_per_sample_of_a_matmul():
    w = jnp.ones((64, 32))
    flops = cost.flops_per_sample(lambda x: x @ w, jnp.ones((8, 64)), batch_size=8)
    assert flops == pytest.approx(2 * 64 * 32, rel=0.05)


def test_expected_evaluations_formula():
    probs = jnp.array([1.0, 0.5, 0.1])
    q = cost.evaluation_probs(probs, 10)
    np.testing.assert_allclose(q[0], [1.0, 1 - 0.5 * 0.9, 0.1], rtol=1e-6)
    np.testing.assert_allclose(cost.expected_evals(probs, 10), 10 * q[0], rtol=1e-6)
    assert cost.expected_cost(probs, [1, 10, 100], 10) == pytest.approx(
        10 * (1 + 0.55 * 10 + 0.1 * 100), rel=1e-5)
    with pytest.raises(ValueError, match="num_steps"):
        cost.evaluation_probs(probs)
    with pytest.raises(ValueError, match="costs"):
        cost.expected_cost(probs, [1, 2], 10)


def test_dyadic_and_variance_optimal_schedules():
    p = schedules.dyadic(4, gamma=2.0, c=8.0)
    np.testing.assert_allclose(p, [1.0, 1.0, 0.5, 0.125])
    v = np.array([1.0, 0.25, 0.0625])
    c_inc = schedules.increment_costs([1.0, 4.0, 16.0])
    np.testing.assert_allclose(c_inc, [1.0, 5.0, 20.0])
    p = schedules.variance_optimal(v, c_inc, c=2.0)
    np.testing.assert_allclose(p, [1.0, min(1, 2 * np.sqrt(0.25 / 5)), 2 * np.sqrt(0.0625 / 20)])
    binned = schedules.variance_optimal(np.stack([v, 4 * v]), c_inc, c=0.5)
    assert binned.shape == (2, 3) and np.all(binned[:, 0] == 1) and np.all(binned[1] >= binned[0])
    with pytest.raises(ValueError, match="variances"):
        schedules.variance_optimal(v[:2], c_inc, c=1.0)
    with pytest.raises(ValueError, match="costs"):
        schedules.increment_costs([1.0, 0.0])


def test_schedule_on_grid_and_file_round_trip(tmp_path):
    bins = np.array([[1.0, 0.5], [1.0, 0.1]])
    ts = np.linspace(0.0, 1.0, 5)
    grid = schedules.on_grid(bins, [0.0, 0.5, 1.0], ts)
    np.testing.assert_allclose(grid[:, 1], [0.5, 0.5, 0.1, 0.1])
    path = tmp_path / "schedule.json"
    schedules.save(path, bins, bin_edges=[0.0, 0.5, 1.0], c=1.0)
    np.testing.assert_allclose(schedules.load(path, 2, ts), grid)
    with pytest.raises(ValueError, match="levels"):
        schedules.load(path, 3, ts)
    np.testing.assert_allclose(schedules.constant([0.3, 0.2], 3)[:, 0], 1.0)


def test_knob_for_top_level_evaluations_is_exact_and_checked():
    """The sweep's dimensionless knob: c such that Σ_n p_K(τ_n) is the requested number."""
    variances = np.array([[4.0, 1.0, 0.02], [4.0, 0.5, 0.5], [4.0, 0.1, 0.001]])  # 3 time bins
    inc = schedules.increment_costs([1.0, 4.0, 16.0])
    ts = np.linspace(0.0, 1.0, 13)
    make = lambda c: schedules.on_grid(schedules.variance_optimal(variances, inc, c),
                                       [0.0, 0.3, 0.6, 1.0], ts)
    for target in (0.25, 1.0, 5.0, 12.0):
        c = schedules.knob_for_top_evals(make, target)
        assert schedules.top_evals(make(c)) == pytest.approx(target, rel=1e-8)
    with pytest.raises(ValueError, match="top_evals: must lie in"):
        schedules.knob_for_top_evals(make, 13.0)
    with pytest.raises(ValueError, match="top_evals: must lie in"):
        schedules.knob_for_top_evals(make, 0.0)


def test_seconds_per_call_is_positive_and_orders_work():
    small, large = jnp.ones((64, 64)), jnp.ones((512, 512))
    t_small = cost.seconds_per_call(lambda a: a @ a, small, repeats=3)
    t_large = cost.seconds_per_call(lambda a: a @ a, large, repeats=3)
    assert 0 < t_small < t_large
    with pytest.raises(ValueError, match="repeats"):
        cost.median_seconds(lambda: small, repeats=0)
