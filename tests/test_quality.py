"""Quality metrics (mlem.eval.metrics) on generated features with known answers, and the feature
networks (mlem.eval.features, mlem.eval.inception) on tiny inputs."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from mlem.eval import features, inception, metrics
from tests import helpers


def _gaussian(rng, n=400, d=8):
    return rng.normal(size=(n, d))


def test_identical_sets_give_zero_within_their_intervals():
    f = _gaussian(np.random.default_rng(0))
    fd = metrics.fd_with_ci(f, f, num_resamples=40)
    assert abs(fd["value"]) < 1e-9
    assert fd["lo"] <= 0.0 <= fd["hi"] and fd["bias"] > 0  # resamples are biased upwards
    kid = metrics.kid_with_ci(f, f, num_subsets=10, subset_size=200, num_resamples=40,
                              same_rows=True)
    assert kid["lo"] <= 0.0 <= kid["hi"]
    # without same_rows a set against itself pairs rows with themselves: slightly negative
    assert metrics.kid(f, f, 10, 200) < kid["lo"]


def test_independent_samples_of_one_distribution_give_kid_near_zero():
    rng = np.random.default_rng(1)
    kid = metrics.kid_with_ci(_gaussian(rng), _gaussian(rng), num_subsets=10,
                              subset_size=200, num_resamples=40)
    assert kid["lo"] <= 0.0 <= kid["hi"]
    values = [metrics.kid(_gaussian(rng, 200), _gaussian(rng, 200), 5, 200) for _ in range(20)]
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))


def test_frechet_distance_matches_the_closed_form():
    """Diagonal covariances: (Σ₁Σ₂)^½ = diag(sqrt(s₁s₂)), so
    FD = ‖μ₁−μ₂‖² + Σ (sqrt(s₁) − sqrt(s₂))²; and a rotated pair of the same spectrum."""
    rng = np.random.default_rng(2)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    exact = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    np.testing.assert_allclose(got, exact, rtol=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    got = metrics.frechet_distance(mu1, q @ np.diag(s1) @ q.T, mu2, q @ np.diag(s2) @ q.T)
    np.testing.assert_allclose(got, exact, rtol=1e-8)
    # from samples: the Gaussian fit converges to the closed form
    x = mu1 + rng.normal(size=(20000, 5)) * np.sqrt(s1)
    y = mu2 + rng.normal(size=(20000, 5)) * np.sqrt(s2)
    np.testing.assert_allclose(metrics.fd(x, y), exact, rtol=0.05)
    with pytest.raises(ValueError, match="shapes"):
        metrics.frechet_distance(mu1, np.diag(s1), mu2[:4], np.diag(s2)[:4, :4])


def test_both_grow_monotonically_with_added_noise():
    rng = np.random.default_rng(3)
    ref, base, noise = _gaussian(rng), _gaussian(rng), rng.normal(size=(400, 8))
    levels = [0.0, 0.3, 0.6, 1.0, 2.0]
    fds = [metrics.fd(base + s * noise, ref) for s in levels]
    kids = [metrics.kid(base + s * noise, ref, 10, 200) for s in levels]
    assert np.all(np.diff(fds) > 0) and np.all(np.diff(kids) > 0)


def test_intervals_resample_realisations_when_given_groups():
    rng = np.random.default_rng(4)
    ref = _gaussian(rng)
    groups = [_gaussian(rng, 50) + 0.5 for _ in range(8)]
    fd = metrics.fd_with_ci(groups, metrics.gaussian_stats(ref), num_resamples=30)
    kid = metrics.kid_with_ci(groups, ref, num_subsets=5, subset_size=200, num_resamples=20)
    assert fd["lo"] < fd["value"] < fd["hi"] and 0 < kid["lo"] < kid["value"] < kid["hi"]
    with pytest.raises(ValueError, match="realisations"):
        metrics.fd_with_ci(groups[:1], ref)


def test_paired_kid_difference_cancels_shared_noise_and_detects_a_shift():
    """Two samplers on the same 8 realisations: b = a + small independent noise. Their KIDs
    move together across realisations, so the paired interval of KID(a) − KID(b) is much
    narrower than either KID's own; a shift of b is detected; mismatched realisations raise."""
    rng = np.random.default_rng(5)
    reference = _gaussian(rng, 300, 6)
    a = [rng.normal(size=(20, 6)) * 1.2 for _ in range(8)]
    b = [u + 0.05 * rng.normal(size=u.shape) for u in a]
    d = metrics.kid_difference_with_ci(a, b, reference, 10, 200, 60)
    own = metrics.kid_with_ci(a, reference, 10, 200, 60)
    assert d["lo"] <= d["value"] <= d["hi"]
    assert d["hi"] - d["lo"] < 0.2 * (own["hi"] - own["lo"])
    shifted = [u + 1.0 for u in b]
    assert metrics.kid_difference_with_ci(shifted, a, reference, 10, 200, 60)["lo"] > 0
    assert metrics.kid_difference_with_ci(a, a, reference, 10, 200, 20) == {
        "value": 0.0, "lo": 0.0, "hi": 0.0}
    with pytest.raises(ValueError, match="same ones"):
        metrics.kid_difference_with_ci(a, b[:7], reference)


def test_stats_round_trip_and_streamed_reference_stats(tmp_path):
    rng = np.random.default_rng(5)
    images = rng.normal(size=(70, 4, 4, 3))
    feature_fn = lambda x: x.reshape(len(x), -1)[:, :6] * 2.0
    mu, sigma = features.reference_stats(feature_fn, (images[i:i + 16]
                                                      for i in range(0, 70, 16)))
    want_mu, want_sigma = metrics.gaussian_stats(feature_fn(images))
    np.testing.assert_allclose(mu, want_mu, atol=1e-12)
    np.testing.assert_allclose(sigma, want_sigma, atol=1e-12)
    metrics.save_stats(tmp_path / "ref.npz", mu, sigma)
    mu2, sigma2 = metrics.load_stats(tmp_path / "ref.npz")
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    np.savez(tmp_path / "bad.npz", mean=mu)
    with pytest.raises(ValueError, match="mu and sigma"):
        metrics.load_stats(tmp_path / "bad.npz")


def test_classifier_trains_on_separable_digits_and_gives_penultimate_features():
    """Class c is a bright square at a class-specific place: separable in a few steps."""
    rng = np.random.default_rng(6)
    labels = np.arange(200) % 10
    images = np.full((200, 16, 16, 1), -1.0, np.float32)
    for i, c in enumerate(labels):
        r, col = 4 * (c // 4) + 1, 4 * (c % 4) + 1
        images[i, r:r + 3, col:col + 3] = 1.0
    images += 0.1 * rng.normal(size=images.shape).astype(np.float32)
    params = features.train_classifier(images, labels, steps=60, seed=0, batch_size=64)
    assert features.accuracy(params, images, labels) > 0.9
    f = features.classifier_features(params, images[:30], batch_size=16)
    assert f.shape == (30, 128) and f.dtype == np.float32
    np.testing.assert_array_equal(f, features.classifier_features(params, images[:30]))


@pytest.fixture(scope="module")
def inception_variables():
    return inception.random_variables(seed=0)


def test_inception_gives_2048_deterministic_features_on_a_tiny_input(inception_variables):
    x = np.asarray(jax.random.uniform(jax.random.key(0), (2, 75, 75, 3), minval=-1.0,
                                      maxval=1.0))
    fn = features.inception_feature_fn(inception_variables, resize_to=None)
    f = fn(x)
    assert f.shape == (2, inception.FEATURES) and np.isfinite(f).all()
    np.testing.assert_array_equal(f, fn(x))  # deterministic (jitted, no dropout)
    assert not np.allclose(f[0], f[1])
    with pytest.raises(ValueError, match="75"):
        fn(x[:, :60, :60])


def test_inception_weights_load_from_a_state_dict_npz(tmp_path, inception_variables):
    """Write random variables as pytorch-fid state-dict names in PyTorch layouts, load back."""
    arrays = helpers.inception_state_dict(inception_variables)
    assert "Mixed_7c.branch_pool.conv.weight" in arrays
    np.savez(tmp_path / "inception.npz", **arrays)
    loaded = inception.load_inception_params(tmp_path / "inception.npz")
    jax.tree.map(np.testing.assert_array_equal, loaded, inception_variables)
    del arrays["Mixed_5b.branch1x1.conv.weight"]
    arrays["Mixed_5c.branch1x1.bn.running_var"] = np.ones(3, np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="missing params/Mixed_5b/branch1x1/conv/kernel"):
        inception.load_inception_params(tmp_path / "bad.npz")
