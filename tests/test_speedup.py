"""The comparison's mathematics (analysis.speedup) on constructed curves with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from analysis import speedup


def test_lower_envelope_keeps_only_pareto_points():
    costs = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    errors = np.array([5.0, 3.0, 4.0, 3.5, 1.0, 1.0])
    idx = speedup.lower_envelope(costs, errors)
    assert idx.tolist() == [0, 1, 4]  # (2,4) dominated at equal cost, (3,3.5), (5,1) dominated
    env = speedup.Envelope.of(np.append(costs, 6.0), np.append(errors, 0.0))  # error 0 dropped
    np.testing.assert_array_equal(env.index, [0, 1, 4])


def _power_law_points(rng, scale, exponent, errors, dominated=3):
    """Points on ``cost = scale·error^-exponent`` plus points dominated by some of them."""
    costs = scale * errors**-exponent
    pick = rng.choice(errors.size, dominated, replace=False)
    return (np.concatenate([costs, costs[pick] * 1.3]),
            np.concatenate([errors, errors[pick] * 1.5]))


def test_speedup_and_error_ratio_match_power_laws():
    """cost_em = a·m^-1.5, cost_ml = b·m^-1 ⇒ speedup(m) = (a/b)·m^-0.5,
    mse_em(c) / mse_ml(c) = (c/a)^(-2/3) / (c/b)^(-1)."""
    rng = np.random.default_rng(0)
    a, b = 2.0e6, 5.0e6
    em = speedup.Envelope.of(*_power_law_points(rng, a, 1.5, np.geomspace(1e-4, 1e-1, 7)))
    ml = speedup.Envelope.of(*_power_law_points(rng, b, 1.0, np.geomspace(3e-5, 3e-2, 5)))
    assert em.cost.size == 7 and ml.cost.size == 5  # every dominated point dropped
    grid, curve = speedup.speedup_curve(em, ml, num=50)
    assert grid[0] == pytest.approx(1e-4) and grid[-1] == pytest.approx(3e-2)
    np.testing.assert_allclose(curve, (a / b) * grid**-0.5, rtol=1e-9)
    costs, ratio = speedup.error_ratio_curve(em, ml, num=50)
    np.testing.assert_allclose(ratio, (costs / a) ** (-1 / 1.5) / (costs / b) ** -1.0, rtol=1e-9)
    assert np.isnan(em.cost_at(1e-5)[0])  # no extrapolation
    best, at = speedup.max_speedup(em, ml)
    assert at == pytest.approx(1e-4) and best == pytest.approx((a / b) * 1e-4**-0.5)


def test_max_speedup_is_exact_at_a_vertex_where_a_grid_misses_it():
    """EM and ML-EM cross twice; the maximum sits at ML-EM's middle vertex (m = 0.0123)."""
    em = speedup.Envelope.of([1.0, 100.0], [1.0, 1e-4])  # cost = m^-0.5
    vertex = 0.0123
    ml = speedup.Envelope.of([0.5, vertex**-0.5 / 3.0, 200.0], [1.0, vertex, 1e-4])
    best, at = speedup.max_speedup(em, ml)
    assert at == pytest.approx(vertex) and best == pytest.approx(3.0)
    dense = np.geomspace(1e-4, 1.0, 200)
    assert np.nanmax(speedup.speedup_at(em, ml, dense)) < best - 1e-4  # a grid is below it
    far = speedup.Envelope.of([1.0, 2.0], [10.0, 5.0])  # no common error range
    assert np.isnan(speedup.max_speedup(em, far)[0])


def _noisy_sweep(rng, realisations, noise=0.3):
    """EM at cost a·m^-1.5 (deterministic given the coupling) and ML-EM at cost b·m^-1 whose
    error carries realisation noise (its Bernoulli draws): true speedup (a/b)·m^-0.5."""
    a, b = 2.0e6, 5.0e6
    em_m, ml_m = np.geomspace(1e-4, 1e-1, 6), np.geomspace(3e-5, 3e-2, 6)
    em = em_m[:, None] * rng.lognormal(0.0, 0.02, (6, realisations))
    ml = ml_m[:, None] * rng.lognormal(-noise**2 / 2, noise, (6, realisations))
    error = np.concatenate([em, ml])
    flops = np.concatenate([a * em_m**-1.5, b * ml_m**-1.0])
    seconds = flops[:, None] * 1e-9 * rng.lognormal(0.0, 0.05, (12, realisations))
    sweep = speedup.Sweep(np.array(["em"] * 6 + ["mlem"] * 6), error,
                          {"flops": flops, "seconds": seconds})
    return sweep, a / b, em_m


def test_bootstrap_over_realisations_covers_the_true_speedup():
    """Coverage of the 95% interval at the operating point over independent repetitions."""
    rng = np.random.default_rng(3)
    hits, repetitions = 0, 30
    for _ in range(repetitions):
        sweep, ratio, em_m = _noisy_sweep(rng, realisations=12)
        stats = speedup.bootstrap_compare(sweep, "em", "mlem", "flops", operating_point=2,
                                          num_resamples=200)
        truth = ratio * np.mean(sweep.error[2]) ** -0.5  # at the realised operating MSE
        lo, hi = stats["at_operating_point_ci"]
        hits += lo <= truth <= hi
        assert lo <= stats["at_operating_point"] <= hi
        assert stats["max"] >= stats["at_operating_point"]
        assert stats["num_realisations"] == 12 and stats["at_operating_point_undefined"] == 0
    assert hits / repetitions >= 0.8, hits


def test_interval_width_shrinks_with_realisations_and_seconds_are_resampled():
    rng = np.random.default_rng(4)
    widths = []
    for realisations in (4, 64):
        sweep, _, _ = _noisy_sweep(rng, realisations)
        stats = speedup.bootstrap_compare(sweep, "em", "mlem", "seconds", 2, num_resamples=300)
        lo, hi = stats["at_operating_point_ci"]
        widths.append(hi - lo)
        assert lo < hi and stats["equal_cost_ci"][0] < stats["equal_cost_ci"][1]
    assert widths[1] < 0.5 * widths[0], widths


def test_undefined_values_are_counted_not_hidden():
    rng = np.random.default_rng(5)
    sweep, _, _ = _noisy_sweep(rng, 6)
    error = sweep.error.copy()
    error[6:] *= 1e3  # ML-EM never reaches the operating MSE
    far = speedup.Sweep(sweep.curve, error, sweep.costs)
    stats = speedup.bootstrap_compare(far, "em", "mlem", "flops", 2, num_resamples=50)
    assert np.isnan(stats["at_operating_point"]) and stats["at_operating_point_undefined"] == 1.0
    with pytest.raises(ValueError, match="costs"):
        speedup.Sweep(sweep.curve, sweep.error, {"flops": np.ones(3)})
