"""CelebA reference statistics (analysis.reference_stats): the streamed fit and KID rows with
a cheap feature function, and the command end to end on a fake CelebA with random Inception
weights at 75×75 (``--resize_to 75``, test only)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import reference_stats
from mlem import data
from mlem.eval import features, inception, metrics
from tests import helpers

CONFIG = "configs/celeba64_sample.py"

ROOT = Path(__file__).resolve().parents[1]


def _fake_features(images: np.ndarray) -> np.ndarray:
    """``(B, H, W, C)`` → float32 ``(B, 6)``: a few nonlinear pixel summaries."""
    x = images.reshape(len(images), -1).astype(np.float64)
    return np.stack([x.mean(1), x.std(1), x[:, 0], x[:, -1] ** 2, np.sin(3 * x[:, 5]),
                     x[:, :7].sum(1)], 1).astype(np.float32)


def _source(n: int = 37) -> data.ArraySource:
    rng = np.random.default_rng(3)
    return data.ArraySource(rng.uniform(-1, 1, (n, 4, 4, 3)).astype(np.float32))


def test_split_stats_is_the_gaussian_fit_and_keeps_the_chosen_rows():
    source = _source()
    seen = []
    stats = reference_stats.split_stats(source, _fake_features, kid_rows=9, seed=1,
                                        batch_size=8, on_batch=seen.append)
    every = _fake_features(source[np.arange(len(source))])
    mu, sigma = metrics.gaussian_stats(every)
    np.testing.assert_allclose(stats.mu, mu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.sigma, sigma, rtol=1e-8, atol=1e-10)
    assert stats.num_images == 37 and seen == [8, 8, 8, 8, 5]
    assert len(stats.rows) == 9 and np.all(np.diff(stats.rows) > 0)
    assert stats.features.dtype == np.float32
    np.testing.assert_array_equal(stats.features, every[stats.rows])
    np.testing.assert_array_equal(stats.rows, reference_stats.kid_subset(37, 9, 1))

    head = reference_stats.split_stats(source, _fake_features, 50, max_images=20)
    np.testing.assert_allclose(head.mu, every[:20].astype(np.float64).mean(0), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_array_equal(head.rows, np.arange(20))  # kid_rows > images: all
    with pytest.raises(ValueError, match="kid_rows=1"):
        reference_stats.split_stats(source, _fake_features, 1)


def test_the_seed_fixes_the_subset():
    a, b, c = (reference_stats.kid_subset(10_000, 100, s) for s in (0, 0, 1))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and len(np.unique(a)) == 100
    stats = [reference_stats.split_stats(_source(), _fake_features, 5, seed=s, batch_size=16)
             for s in (4, 4)]
    np.testing.assert_array_equal(stats[0].rows, stats[1].rows)
    np.testing.assert_array_equal(stats[0].features, stats[1].features)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A fake CelebA and random Inception weights as a pytorch-fid state-dict npz."""
    root = tmp_path_factory.mktemp("refstats")
    variables = inception.random_variables(seed=0)
    weights = root / "inception.npz"
    np.savez(weights, **helpers.inception_state_dict(variables))
    return {"celeba": helpers.fake_celeba(root / "celeba"), "weights": weights,
            "variables": variables}


def test_command_writes_the_reference_file(inputs, tmp_path):
    out = tmp_path / "refs" / "celeba64_train_inception.npz"
    record = reference_stats.compute(
        reference_stats.load_config(CONFIG), CONFIG, str(inputs["weights"]), str(out),
        local_path=str(inputs["celeba"] / "inside.zip"), max_images=8, batch_size=4,
        kid_rows=3, seed=2, resize_to=75, progress=False)
    ref = reference_stats.load_reference(out)
    assert sorted(os.listdir(out.parent)) == [out.name]  # no temporary file left behind
    assert ref["mu"].shape == (2048,) and ref["sigma"].shape == (2048, 2048)
    assert ref["features"].shape == (3, 2048) and ref["features"].dtype == np.float32
    assert ref["record"] == record
    assert {k: record[k] for k in ("num_images", "split", "dataset", "image_size", "kid_rows",
                                   "train_config")} == {
        "num_images": 8, "split": "train", "dataset": "celeba64", "image_size": 64,
        "kid_rows": 3, "train_config": "configs/celeba64.py:1"}
    assert record["inception_weights_sha256"] == hashlib.sha256(
        inputs["weights"].read_bytes()).hexdigest()
    np.testing.assert_array_equal(ref["feature_rows"], reference_stats.kid_subset(8, 3, 2))

    # The same numbers as features of the first 8 train images computed directly.
    config = reference_stats.data_config(
        reference_stats.load_config("configs/celeba64_sample.py"),
        str(inputs["celeba"] / "inside.zip"), None)[0]
    images = data.get_source(config, "train")[np.arange(8)]
    direct = features.inception_feature_fn(inputs["variables"], 75)(images)
    mu, sigma = metrics.load_stats(out)
    np.testing.assert_allclose(mu, direct.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sigma, np.cov(direct, rowvar=False), rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(ref["features"], direct[ref["feature_rows"]], rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({"kid_rows": 1}, "--kid_rows: KID needs at least 2 rows"),
    ({"config": "configs/mnist_sample.py"}, "needs RGB images"),
    ({"local_path": "/nonexistent/celeba.zip"}, "CelebA not found"),
])
def test_bad_input_is_refused_before_anything_is_written(inputs, tmp_path, kwargs, message):
    """(The command line turns these into one ``error:`` line: the test below.)"""
    config = kwargs.pop("config", CONFIG)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        reference_stats.compute(reference_stats.load_config(config), config,
                                str(inputs["weights"]), str(tmp_path / "ref.npz"),
                                progress=False, **kwargs)
    assert not (tmp_path / "ref.npz").exists()


@pytest.mark.integration
def test_missing_weights_is_one_line_and_a_nonzero_exit(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.reference_stats", "--inception_weights",
         str(tmp_path / "missing.npz"), "--out", str(tmp_path / "ref.npz")],
        cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --inception_weights: no such file")
    assert "docs/quality.md" in lines[0] and "Traceback" not in proc.stderr


def test_an_interrupted_write_leaves_no_file(tmp_path, monkeypatch):
    target = tmp_path / "ref.npz"

    def savez_then_die(f, **arrays):
        f.write(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(metrics.np, "savez", savez_then_die)
    with pytest.raises(KeyboardInterrupt):
        metrics.save_stats(target, np.zeros(2), np.eye(2))
    assert os.listdir(tmp_path) == []
