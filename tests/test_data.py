"""Data: CelebA (generated zip/folder, tfds mock), MNIST-5k, synthetic, the training pipeline."""

import time
import zipfile

import numpy as np
import pytest
from ml_collections import ConfigDict
from PIL import Image

from mlem import data
from mlem.data import celeba, mnist, pipeline
from tests import helpers

SPLIT_OF = helpers.CELEBA_SPLIT_OF  # 32 fake images: 20 train, 8 validation, 4 test
_partition_text = helpers.celeba_partition_text


def _config(name="celeba64", **kw):
    base = dict(name=name, image_size=16, num_channels=3 if name != "mnist5k" else 1,
                source="auto", data_dir=None, local_path=None, random_flip=True)
    base.update(kw)
    return ConfigDict(base)


@pytest.fixture(scope="module")
def celeba_dirs(tmp_path_factory):
    """A fake CelebA: extracted folder, zip with the partition file beside it, zip with it
    inside (:func:`tests.helpers.fake_celeba`)."""
    return helpers.fake_celeba(tmp_path_factory.mktemp("celeba"))


# ----------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("h,w,size", [(140, 140, 64), (28, 28, 16), (28, 28, 40), (30, 20, 8)])
def test_resize_matches_jax_antialiased_linear(h, w, size):
    import jax

    x = np.random.default_rng(1).random((2, h, w, 3), dtype=np.float32)
    want = jax.image.resize(x, (2, size, size, 3), method="linear", antialias=True)
    np.testing.assert_allclose(pipeline.resize(x, size), np.asarray(want), atol=1e-5)


def test_preprocess_crops_the_centre_140_and_resizes():
    """White outside the crop box, black inside, a white quadrant in the crop's top-left:
    the output is +1 on that quadrant and −1 elsewhere (no leakage from outside the box)."""
    img = np.full((218, 178, 3), 255, np.uint8)
    top, left = (218 - 140) // 2, (178 - 140) // 2
    assert (top, left) == (39, 19)
    img[top:top + 140, left:left + 140] = 0
    img[top:top + 70, left:left + 70] = 255
    out = celeba.preprocess(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out[:30, :30], 1.0, atol=1e-6)
    np.testing.assert_allclose(out[34:, :], -1.0, atol=1e-6)
    np.testing.assert_allclose(out[:, 34:], -1.0, atol=1e-6)
    assert -1.0 < out[31, 10, 0] < 1.0  # antialiased edge, not a hard nearest-neighbour cut


# ----------------------------------------------------------------------------- CelebA local
@pytest.mark.parametrize("where", ["folder", "folder/img_align_celeba", "zip",
                                   "zip/img_align_celeba.zip", "inside.zip"])
def test_local_celeba_layouts(celeba_dirs, where):
    sizes = {}
    for split in ("train", "heldout", "test"):
        source = data.get_source(_config(local_path=str(celeba_dirs / where)), split)
        sizes[split] = len(source)
        x = source[np.arange(len(source))]
        assert x.shape == (len(source), 16, 16, 3) and x.dtype == np.float32
        assert x.min() >= -1.0 and x.max() <= 1.0 and x.std() > 0.05
    assert sizes == {"train": 20, "heldout": 8, "test": 4}


def test_local_celeba_reads_the_listed_image(celeba_dirs):
    """Held-out item 0 is 000021.jpg (first with partition 1), decoded and preprocessed."""
    source = data.get_source(_config(local_path=str(celeba_dirs / "inside.zip")), "heldout")
    jpg = celeba_dirs / "folder" / "img_align_celeba" / "000021.jpg"
    want = celeba.preprocess(np.asarray(Image.open(jpg).convert("RGB")), 16)
    np.testing.assert_array_equal(source[np.array([0])][0], want)
    np.testing.assert_array_equal(source[0], want)


def test_partition_parser_reads_kaggle_csv_and_rejects_garbage():
    assert celeba.parse_partition("image_id,partition\n000001.jpg,0\n000002.jpg,2\n") == [
        ("000001.jpg", 0), ("000002.jpg", 2)]
    with pytest.raises(ValueError, match="line 2"):
        celeba.parse_partition("000001.jpg 0\n000002.jpg 7\n")


def _assert_names_both_routes(message):
    assert "tfds build celeb_a" in message and "--file_format=array_record" in message
    assert "--config.data.data_dir" in message and "tensorflow-cpu" in message
    assert "--config.data.local_path=" in message and "list_eval_partition.txt" in message


def test_missing_celeba_names_both_routes(tmp_path, celeba_dirs):
    cases = [
        _config(local_path=str(tmp_path / "nope.zip")),
        _config(source="local"),
        _config(local_path=str(celeba_dirs / "folder" / "img_align_celeba" / "000001.jpg")),
        _config(source="tfds", data_dir=str(tmp_path / "empty_tfds")),
    ]
    for cfg in cases:
        with pytest.raises(data.DatasetNotFoundError) as info:
            data.get_source(cfg, "train")
        assert isinstance(info.value, FileNotFoundError)
        assert "\n" not in str(info.value)
        _assert_names_both_routes(str(info.value))


def test_incomplete_zip_is_reported(tmp_path, celeba_dirs):
    partial = tmp_path / "img_align_celeba.zip"
    with zipfile.ZipFile(partial, "w") as zf:
        zf.write(celeba_dirs / "folder" / "img_align_celeba" / "000001.jpg", "000001.jpg")
    (tmp_path / "list_eval_partition.txt").write_text(_partition_text())
    with pytest.raises(data.DatasetNotFoundError, match="19 images .* missing"):
        data.get_source(_config(local_path=str(partial)), "train")


# ----------------------------------------------------------------------------- CelebA tfds
def test_tfds_route_with_mock_data():
    """tfds.testing.mock_data mocks tfds.data_source without TensorFlow: random 218×178 JPEG
    records go through the same crop/resize as the local route."""
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        source = data.get_source(_config(source="tfds"), "heldout")
        raw = tfds.data_source("celeb_a", split="validation", download=False)
        assert len(source) == 6
        x = source[np.arange(6)]
        assert x.shape == (6, 16, 16, 3) and x.min() >= -1.0 and x.max() <= 1.0
        np.testing.assert_array_equal(x[3], celeba.preprocess(raw[3]["image"], 16))
        batch = data.TrainPipeline(source, 4, seed=0, random_flip=True).batch(2)
        assert batch.shape == (4, 16, 16, 3)


def test_tfds_prepared_in_the_wrong_format_says_rebuild(monkeypatch, tmp_path):
    """A celeb_a prepared as tfrecord (the tfds default) cannot be read randomly."""
    import tensorflow_datasets as tfds

    class Prepared:
        def is_prepared(self):
            return True

    def tfrecord_only(*args, **kwargs):
        raise NotImplementedError("Random access data source for file format tfrecord")

    monkeypatch.setattr(tfds, "data_source", tfrecord_only)
    monkeypatch.setattr(tfds, "builder", lambda *args, **kwargs: Prepared())
    with pytest.raises(data.DatasetNotFoundError, match="rebuild it with --file_format") as info:
        data.get_source(_config(source="tfds", data_dir=str(tmp_path)), "train")
    _assert_names_both_routes(str(info.value))


# ----------------------------------------------------------------------------- MNIST-5k
def test_mnist5k_loads_and_splits_fixed():
    images, labels = mnist.load_raw()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [500] * 10
    train, held = (mnist.split_indices(labels, s) for s in ("train", "heldout"))
    assert len(train) == 4500 and len(held) == 500
    assert np.intersect1d(train, held).size == 0
    np.testing.assert_array_equal(held[:12], [450, 950, 1450, 1950, 2450, 2950, 3450, 3950,
                                              4450, 4950, 451, 951])
    np.testing.assert_array_equal(labels[held[:20]], np.tile(np.arange(10), 2))
    x = data.get_source(_config("mnist5k", image_size=28), "train")[np.arange(4500)]
    assert x.shape == (4500, 28, 28, 1) and x.min() == -1.0 and x.max() == 1.0
    assert -0.8 < x.mean() < -0.65  # ~13% ink, as in full MNIST
    assert np.all(x[:, 0, :, :] == -1.0)  # blank border row


def test_mnist5k_sizes():
    for size in (16, 32):
        x = data.get_source(_config("mnist5k", image_size=size), "heldout")[np.arange(500)]
        assert x.shape == (500, size, size, 1) and x.min() >= -1.0 and x.max() <= 1.0
    padded = mnist.to_size(mnist.load_raw()[0][:3], 32)
    np.testing.assert_array_equal(padded[:, 2:30, 2:30, 0], mnist.to_size(
        mnist.load_raw()[0][:3], 28)[..., 0])
    assert np.all(padded[:, :2] == -1.0)


# ----------------------------------------------------------------------------- dispatch
def test_get_source_rejects_bad_config():
    with pytest.raises(ValueError, match="celeba64.*mnist5k.*synthetic"):
        data.get_source(_config("cifar10"), "train")
    with pytest.raises(ValueError, match="num_channels"):
        data.get_source(_config("mnist5k", num_channels=3), "train")
    with pytest.raises(ValueError, match="split"):
        data.get_source(_config("synthetic"), "validation")


def test_synthetic_is_fixed_and_smooth():
    a = data.get_source(_config("synthetic", image_size=8, num_channels=2), "train")
    b = data.get_source(_config("synthetic", image_size=8, num_channels=2), "train")
    h = data.get_source(_config("synthetic", image_size=8, num_channels=2), "heldout")
    assert (len(a), len(h)) == (1024, 256) and a[np.arange(3)].shape == (3, 8, 8, 2)
    np.testing.assert_array_equal(a.images, b.images)
    assert not np.allclose(a.images[:256], h.images)
    assert np.abs(np.diff(a.images, axis=1)).mean() < 0.5 * a.images.std()


# ----------------------------------------------------------------------------- pipeline
def _indexed_source(n=10, size=4):
    """Image i is constant i/n, except a left-half marker so flips are visible."""
    x = np.broadcast_to((np.arange(n) / n)[:, None, None, None], (n, size, size, 1)).copy()
    x[:, :, : size // 2] -= 0.5
    return pipeline.ArraySource(x.astype(np.float32))


def test_batch_is_pure_function_of_seed_and_step():
    src = _indexed_source()
    a, b = (data.TrainPipeline(src, 3, seed=7, random_flip=True) for _ in range(2))
    for step in (5, 0, 12, 5):
        np.testing.assert_array_equal(a.batch(step), b.batch(step))
    assert not np.array_equal(a.batch(1), data.TrainPipeline(src, 3, 8, True).batch(1))


def test_each_index_once_per_epoch_across_batch_boundaries():
    pipe = data.TrainPipeline(_indexed_source(n=10), 3, seed=1, random_flip=False)
    order = np.concatenate([pipe.indices(s) for s in range(10)])  # 30 positions = 3 epochs
    for epoch in range(3):
        assert sorted(order[10 * epoch: 10 * epoch + 10]) == list(range(10))
    assert not np.array_equal(order[:10], order[10:20])  # reshuffled per epoch
    values = pipe.batch(4)[:, 0, -1, 0]  # right column: no marker
    np.testing.assert_allclose(values, pipe.indices(4) / 10, atol=1e-6)


def test_flips_only_when_asked():
    src = _indexed_source()
    train = data.TrainPipeline(src, 8, seed=3, random_flip=True)
    flips = np.concatenate([train.flips(s) for s in range(20)])
    assert 0.3 < flips.mean() < 0.7
    step = int(np.flatnonzero([train.flips(s).any() for s in range(20)])[0])
    batch, plain = train.batch(step), src[train.indices(step)]
    for j, flipped in enumerate(train.flips(step)):
        np.testing.assert_array_equal(batch[j], plain[j][:, ::-1] if flipped else plain[j])
    still = data.TrainPipeline(src, 8, seed=3, random_flip=False)
    np.testing.assert_array_equal(still.batch(step), plain)
    held = data.heldout_batches(src, 2, 3)
    assert held.shape == (3, 2, 4, 4, 1)
    np.testing.assert_array_equal(held.reshape(6, 4, 4, 1), src[np.arange(6)])
    with pytest.raises(ValueError, match="config.eval"):
        data.heldout_batches(src, 4, 3)


def test_iterate_resumes_exactly_and_stops_cleanly():
    src = _indexed_source()
    fresh = data.TrainPipeline(src, 4, seed=2, random_flip=True)
    with data.TrainPipeline(src, 4, seed=2, random_flip=True).iterate(7) as it:
        got = [next(it) for _ in range(6)]
    assert not it.alive
    for k, batch in enumerate(got):
        np.testing.assert_array_equal(batch, fresh.batch(7 + k))
    assert len(list(fresh.iterate(3, stop_step=6))) == 3


def test_iterate_reraises_errors_from_the_producer():
    class Broken:
        def __len__(self):
            return 5

        def __getitem__(self, idx):
            raise OSError("disk gone")

    it = data.TrainPipeline(Broken(), 2, seed=0, random_flip=False).iterate(0)
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    assert not it.alive


def test_abandoned_iterator_thread_exits():
    it = data.TrainPipeline(_indexed_source(), 2, 0, False).iterate(0)
    next(it)
    thread = it._thread
    del it
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_pipeline_rejects_bad_arguments():
    with pytest.raises(ValueError, match="batch_size"):
        data.TrainPipeline(_indexed_source(), 0, 0, False)
    with pytest.raises(ValueError, match="seed"):
        data.TrainPipeline(_indexed_source(), 2, -1, False)


def test_mnist_batches_are_fast():
    pipe = data.TrainPipeline(data.get_source(_config("mnist5k"), "train"), 128, 0, True)
    start = time.perf_counter()
    for step in range(50):
        pipe.batch(step)
    assert (time.perf_counter() - start) / 50 < 0.02
