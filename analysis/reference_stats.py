"""FID/KID reference statistics of a dataset split with the FID Inception-v3 (issue 13 §2).

    python -m analysis.reference_stats --config configs/celeba64_sample.py \\
        --inception_weights pt_inception-2015-12-05.npz \\
        --out runs/celeba64/celeba64_train_inception.npz \\
        [--local_path /data/celeba/img_align_celeba.zip | --data_dir DIR] [--split train] \\
        [--max_images N] [--kid_rows 10000] [--batch_size 200] [--seed 0]

The data is that of the sample config's first training config (``config.train_configs[0]``;
``--local_path`` / ``--data_dir`` set its ``data.local_path`` / ``data.data_dir``), read
through :func:`mlem.data.get_source` like training reads it (docs/data.md). Every image of
the split (or the first ``--max_images``) goes through
``features.inception_feature_fn(load_inception_params(weights))``; the Gaussian fit is
streamed (:func:`mlem.eval.features.reference_stats`) and ``kid_rows`` feature rows, chosen
uniformly at random (``--seed``) before streaming, are kept for KID, so memory stays flat.

The output, one npz (written atomically by :func:`mlem.eval.metrics.save_stats`, so
:func:`mlem.eval.metrics.load_stats` reads its ``mu``/``sigma``; :func:`load_reference` reads all):
``mu (2048,)``, ``sigma (2048, 2048)`` float64 (pytorch-fid's keys), ``features
(kid_rows, 2048)`` float32, ``feature_rows (kid_rows,)`` int64 (their image indices in the
split) and ``record``: a JSON string with the provenance (:func:`compute` lists it).
"""

from __future__ import annotations

import json
import time
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from tqdm import tqdm

from analysis import cli
from mlem import cli as mlem_cli
from mlem import data, files
from mlem.config_files import load_config
from mlem.data.pipeline import BatchIterator
from mlem.eval import features, metrics
from mlem.eval.inception import load_inception_params

DEFAULT_CONFIG = "configs/celeba64_sample.py"
FEATURE_NET = "FID Inception-v3 pool3 (pytorch-fid pt_inception-2015-12-05 architecture)"


class ReferenceStats(NamedTuple):
    """``mu (d,)``, ``sigma (d, d)`` float64 of all ``num_images`` features; ``rows (k,)``
    sorted image indices and ``features (k, d)`` float32 their feature rows."""

    mu: np.ndarray
    sigma: np.ndarray
    rows: np.ndarray
    features: np.ndarray
    num_images: int


def kid_subset(num_images: int, kid_rows: int, seed: int) -> np.ndarray:
    """Sorted indices of ``min(kid_rows, num_images)`` images drawn uniformly without
    replacement by ``np.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_images, min(kid_rows, num_images), replace=False))


def split_stats(source: data.Source, feature_fn: Callable[[np.ndarray], np.ndarray],
                kid_rows: int, seed: int = 0, batch_size: int = 200,
                max_images: int | None = None,
                on_batch: Callable[[int], Any] | None = None) -> ReferenceStats:
    """The Gaussian fit of ``feature_fn`` over the first ``max_images`` (default all) images of
    ``source``, in order, in batches of ``batch_size`` (read one batch ahead on a thread),
    and the feature rows of :func:`kid_subset`. ``on_batch(n)`` after each batch of ``n``.
    """
    num_images = len(source) if max_images is None else min(max_images, len(source))
    if num_images < 2 or kid_rows < 2 or batch_size < 1:
        raise ValueError(f"reference statistics need >= 2 images, kid_rows >= 2 and "
                         f"batch_size >= 1; got {num_images} images, kid_rows={kid_rows}, "
                         f"batch_size={batch_size}")
    rows = kid_subset(num_images, kid_rows, seed)
    kept, seen = [], 0

    def keep(f: np.ndarray) -> None:  # features of images seen … seen + len(f) - 1
        nonlocal seen
        chosen = rows[(rows >= seen) & (rows < seen + len(f))] - seen
        kept.append(np.asarray(f, np.float32)[chosen])
        seen += len(f)
        if on_batch is not None:
            on_batch(len(f))

    def batch(b: int) -> np.ndarray:
        return source[np.arange(b * batch_size, min(num_images, (b + 1) * batch_size))]

    num_batches = -(-num_images // batch_size)
    with BatchIterator(batch, 0, num_batches, prefetch=2) as batches:
        mu, sigma = features.reference_stats(feature_fn, batches, on_features=keep)
    if seen != num_images:  # the reader stopped early
        raise RuntimeError(f"reference statistics: read {seen} of {num_images} images")
    return ReferenceStats(mu, sigma, rows, np.concatenate(kept), num_images)


def save_reference(path: str | Path, stats: ReferenceStats, record: dict[str, Any]) -> None:
    """One npz at ``path`` (atomic): ``mu``, ``sigma``, ``features``, ``feature_rows`` and
    ``record`` (a JSON string)."""
    metrics.save_stats(path, stats.mu, stats.sigma, features=stats.features,
                       feature_rows=stats.rows.astype(np.int64),
                       record=np.asarray(json.dumps(record, sort_keys=True)))


def load_reference(path: str | Path) -> dict[str, Any]:
    """``{"mu", "sigma", "features", "feature_rows", "record"}`` of a file written by
    :func:`save_reference` (``record`` as a dict)."""
    mu, sigma = metrics.load_stats(path)
    with np.load(path) as f:
        missing = {"features", "feature_rows", "record"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: not a reference file of analysis.reference_stats "
                             f"(missing {sorted(missing)})")
        return {"mu": mu, "sigma": sigma, "features": f["features"],
                "feature_rows": f["feature_rows"], "record": json.loads(str(f["record"]))}


def read_weights(path: str) -> Any:
    """:func:`load_inception_params`, any unreadable file a ``ValueError`` naming the flag."""
    try:
        return load_inception_params(path)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"--inception_weights={path}: not pytorch-fid's Inception "
                         f"weights as an npz of arrays ({type(err).__name__}: {err})") from None


def data_config(sample_config, local_path: str | None, data_dir: str | None):
    """``config.data`` of ``sample_config.train_configs[0]`` with the given location."""
    train_configs = tuple(sample_config.train_configs)
    if not train_configs:
        raise ValueError("config.train_configs is empty: the data comes from the first "
                         "training config (e.g. configs/celeba64_sample.py)")
    config = load_config(train_configs[0]).data
    if local_path:
        config.local_path = local_path
    if data_dir:
        config.data_dir = data_dir
    if config.num_channels != 3:
        raise ValueError(f"the Inception network needs RGB images, but {train_configs[0]} "
                         f"reads {config.name} with {config.num_channels} channel(s); MNIST "
                         f"uses the classifier features (docs/quality.md)")
    return config, train_configs[0]


def compute(sample_config, config_path: str, weights: str, out: str, split: str = "train",
            max_images: int | None = None, kid_rows: int = 10_000, batch_size: int = 200,
            seed: int = 0, local_path: str | None = None, data_dir: str | None = None,
            resize_to: int = 299, progress: bool = True) -> dict[str, Any]:
    """Compute and save the reference file ``out``; returns its record: ``num_images,
    split, dataset, image_size, train_config, config, kid_rows, seed, max_images,
    inception_weights`` (the file name), ``inception_weights_sha256, resize_to,
    feature_net, seconds, seconds_per_image, device``.

    Bad input raises ``ValueError`` or ``FileNotFoundError`` before any feature is computed.
    """
    if kid_rows < 2:
        raise ValueError(f"--kid_rows: KID needs at least 2 rows, got {kid_rows}")
    if batch_size < 1:
        raise ValueError(f"--batch_size: must be positive, got {batch_size}")
    if max_images is not None and max_images < 2:
        raise ValueError(f"--max_images: need at least 2 images, got {max_images}")
    if not Path(weights).is_file():
        raise FileNotFoundError(
            f"--inception_weights: no such file {weights}; convert pytorch-fid's "
            f"pt_inception-2015-12-05-6726825d.pth to an npz as docs/quality.md shows "
            f"(nothing is downloaded)")
    data_cfg, train_config = data_config(sample_config, local_path, data_dir)
    try:
        source = data.get_source(data_cfg, split)
    except data.DatasetNotFoundError as err:
        raise data.DatasetNotFoundError(
            f"{err} With this command the two flags are --data_dir=DIR and "
            f"--local_path=PATH.") from None
    feature_fn = features.inception_feature_fn(read_weights(weights), resize_to)
    num_images = len(source) if max_images is None else min(max_images, len(source))
    start = time.perf_counter()
    with tqdm(total=num_images, unit="img", desc=f"Inception features of {split}",
              dynamic_ncols=True, disable=not progress) as bar:
        stats = split_stats(source, feature_fn, kid_rows, seed, batch_size, max_images,
                            on_batch=bar.update)
    seconds = time.perf_counter() - start
    record = {"num_images": stats.num_images, "split": split, "dataset": data_cfg.name,
              "image_size": data_cfg.image_size, "train_config": train_config,
              "config": config_path, "kid_rows": len(stats.rows), "seed": seed,
              "max_images": max_images, "inception_weights": Path(weights).name,
              "inception_weights_sha256": files.file_sha256(weights), "resize_to": resize_to,
              "feature_net": FEATURE_NET, "seconds": round(seconds, 2),
              "seconds_per_image": seconds / stats.num_images,
              "device": jax.devices()[0].device_kind}
    save_reference(out, stats, record)
    return record


# --- command line ---------------------------------------------------------------------------

def define_flags(argv: list[str]) -> None:
    config_flags.DEFINE_config_file("config", None, "sample config whose train_configs[0] "
                                    f"gives the data (default {DEFAULT_CONFIG})",
                                    sys_argv=list(argv))
    flags.DEFINE_string("inception_weights", None, "local npz of pytorch-fid's "
                        "pt_inception-2015-12-05 state dict (docs/quality.md)", required=True)
    flags.DEFINE_string("out", None, "the reference file to write, e.g. "
                        "runs/celeba64/celeba64_train_inception.npz", required=True)
    flags.DEFINE_string("split", "train", "dataset split: train | heldout | test")
    flags.DEFINE_integer("max_images", None, "only the first N images of the split")
    flags.DEFINE_integer("kid_rows", 10_000, "feature rows kept for KID (random, --seed)")
    flags.DEFINE_integer("batch_size", 200, "images per Inception call")
    flags.DEFINE_integer("seed", 0, "seed of the KID rows")
    flags.DEFINE_string("local_path", None, "sets data.local_path (img_align_celeba.zip or "
                        "the extracted folder)")
    flags.DEFINE_string("data_dir", None, "sets data.data_dir (the tfds celeb_a copy)")
    flags.DEFINE_integer("resize_to", 299, "Inception input size; 299 defines FID, smaller "
                         "values (>= 75) are for tests only")


def parse_flags(argv: Sequence[str]) -> list[str]:
    return cli.parse(cli.with_default_config(argv, DEFAULT_CONFIG), define_flags)


def run(argv: Sequence[str]) -> dict[str, Any]:
    """Compute with the parsed flags; print the record as JSON and return it."""
    cli.start(argv)
    f = flags.FLAGS
    try:
        record = compute(f.config, config_flags.get_config_filename(f["config"]),
                         f.inception_weights, f.out, f.split, f.max_images, f.kid_rows,
                         f.batch_size, f.seed, f.local_path, f.data_dir, f.resize_to)
    except (ValueError, FileNotFoundError) as err:
        mlem_cli.fail(err)
    print(json.dumps(record, indent=1, sort_keys=True))
    return record


def _app_main(argv: Sequence[str]) -> None:
    run(argv)  # app.run would exit with run's return value


if __name__ == "__main__":
    app.run(_app_main, flags_parser=parse_flags)
