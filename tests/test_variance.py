"""Increment variances of any ladder (:mod:`mlem.variance`), and ``analysis.variance`` as a
thin CLI over it: the same numbers as before the move (issue 21 §2)."""

from __future__ import annotations

import types

import ml_collections
import numpy as np
import pytest

import mlem
from analysis import variance as analysis_variance
from mlem import variance
from mlem.sde import VPSDE, gaussian_eps
from tests import helpers

SOURCE = np.random.default_rng(0).normal(size=(10, 4, 4, 1)).astype(np.float32)
# analysis.variance.drift_statistics before the move, on helpers.gaussian_ladder with SOURCE
# as held-out images, 40 samples, 4 bins, seed 3, batches of 16: per-bin means and errors.
PREVIOUS_MEANS = [[1654.1233947754, 4.138019979], [675.6781646729, 119.0021127701],
                  [465.3689544678, 380.8209655762], [133.7321725845, 196.4200285196]]
PREVIOUS_ERRORS = [[263.5374989478, 1.6131439375], [92.7022302188, 19.5306155996],
                   [71.2949043779, 13.1732628337], [27.9839312901, 40.2505536019]]


def _xs(idx: np.ndarray) -> np.ndarray:
    return SOURCE[idx % len(SOURCE)]


def test_increment_variances_match_the_previous_analysis_numbers():
    ladder, _ = helpers.gaussian_ladder(VPSDE())
    result = variance.increment_variances(ladder, _xs, 4, num_samples=40, seed=3, batch_size=16)
    np.testing.assert_allclose(result.bin_edges, np.linspace(0, 0.999, 5))
    np.testing.assert_allclose(result.variances, PREVIOUS_MEANS, rtol=1e-5)
    np.testing.assert_allclose(result.standard_errors, PREVIOUS_ERRORS, rtol=1e-5)
    # the same bins given as edges give the same numbers
    again = variance.increment_variances(ladder, _xs, result.bin_edges, num_samples=40, seed=3,
                                         batch_size=16)
    np.testing.assert_array_equal(again.variances, result.variances)


def test_analysis_stage_is_the_library_on_held_out_images(tmp_path, monkeypatch):
    ladder, _ = helpers.gaussian_ladder(VPSDE())
    monkeypatch.setattr(analysis_variance.data, "get_source", lambda config, split: SOURCE)
    config = ml_collections.ConfigDict({"analysis": {"variance_samples": 40, "num_time_bins": 4,
                                                     "batch_size": 16}, "sampling": {"seed": 3}})
    (tmp_path / "manifest.json").write_text("{}")
    ctx = types.SimpleNamespace(config=config, ladder=ladder, out=tmp_path, recompute=False,
                                level_configs=[types.SimpleNamespace(data=None)])
    stats = analysis_variance.drift_statistics(ctx)
    direct = variance.drift_statistics(ladder, _xs, variance.bin_edges(ladder.sde.t_min, 4), 40,
                                       seed=3, batch_size=16)
    assert set(stats) == set(direct)
    for name in direct:
        np.testing.assert_array_equal(stats[name], direct[name])
    np.testing.assert_array_equal(analysis_variance.drift_statistics(ctx)["increment_sq"],
                                  direct["increment_sq"])  # from the cache
    config.analysis.num_time_bins = 0
    with pytest.raises(ValueError, match="config.analysis.num_time_bins"):
        analysis_variance.drift_statistics(ctx)


def test_increments_of_a_function_ladder_are_the_exact_drift_differences():
    """Level 2 is level 1 plus a constant δ in ε̂, so ``‖f² − f¹‖² = (β/σ)² ‖δ‖²`` per sample;
    a repeated level has no increment."""
    sde, delta = VPSDE(), 0.1
    base = gaussian_eps(sde, 0.0, 1.0)
    own = mlem.Ladder.from_functions(
        [base, lambda x, t: base(x, t) + delta, lambda x, t: base(x, t) + delta],
        image_shape=(3, 3, 1), sde=sde, costs=[1.0, 2.0, 3.0])
    xs = lambda idx: np.zeros((len(idx), 3, 3, 1), np.float32)
    stats = variance.drift_statistics(own, xs, variance.bin_edges(sde.t_min, 4), 32, seed=1,
                                      batch_size=8)
    t = 1.0 - stats["taus"]
    expected = (np.asarray(sde.beta(t)) / np.asarray(sde.sigma(t))) ** 2 * 9 * delta**2
    np.testing.assert_allclose(stats["increment_sq"][:, 1], expected, rtol=1e-4)
    np.testing.assert_allclose(stats["increment_sq"][:, 2], 0.0, atol=1e-6)
    np.testing.assert_allclose(stats["error_sq"][:, 0], expected, rtol=1e-4)
    result = variance.increment_variances(own, xs, 4, num_samples=32, seed=1, batch_size=8)
    assert result.variances.shape == result.standard_errors.shape == (4, 3)
    index = np.arange(32) % 4  # sample i lies in bin i mod 4
    np.testing.assert_allclose(result.variances[:, 1],
                               [expected[index == b].mean() for b in range(4)], rtol=1e-4)


def test_bad_bins_and_sample_counts_name_the_argument():
    ladder, _ = helpers.gaussian_ladder(VPSDE())
    with pytest.raises(ValueError, match="bins: need at least one time bin"):
        variance.increment_variances(ladder, _xs, 0)
    with pytest.raises(ValueError, match="bins: edges must increase"):
        variance.increment_variances(ladder, _xs, np.array([0.0, 0.5, 0.4]))
    with pytest.raises(ValueError, match="num_samples: need at least one sample per time bin"):
        variance.increment_variances(ladder, _xs, 8, num_samples=4)
