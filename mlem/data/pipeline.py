"""Host-side data pipeline: in-memory sources, antialiased resizing, deterministic batches.

A *source* is anything with ``len(source)`` and ``source[idx]`` where ``idx`` is an int array
of shape ``(n,)`` and the result is float32 ``(n, H, W, C)`` in ``[-1, 1]`` (preprocessed, not
flipped). :class:`TrainPipeline` turns a source into batches that are a pure function of
``(seed, step)``, so a run resumed at step ``s`` sees exactly the batches an uninterrupted
run would.
"""

from __future__ import annotations

import functools
import queue
import threading
from collections.abc import Iterator
from typing import Protocol

import numpy as np

__all__ = ["ArraySource", "BatchIterator", "Source", "TrainPipeline", "heldout_batches", "resize",
           "resize_matrix", "to_signed"]

# Stream tags: permutations and flips draw from different numpy SeedSequences.
_PERM_STREAM, _FLIP_STREAM = 0, 1


class Source(Protocol):
    def __len__(self) -> int: ...

    def __getitem__(self, idx: np.ndarray) -> np.ndarray: ...


class ArraySource:
    """A source backed by one read-only float32 array ``(N, H, W, C)`` in ``[-1, 1]``."""

    def __init__(self, images: np.ndarray):
        if images.ndim != 4 or images.dtype != np.float32:
            raise ValueError(f"images: need float32 (N, H, W, C), got {images.dtype} "
                             f"{images.shape}")
        self.images = images
        self.images.setflags(write=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return self.images[idx]


@functools.lru_cache(maxsize=32)
def resize_matrix(in_size: int, out_size: int) -> np.ndarray:
    """Antialiased linear resampling weights, shape ``(out_size, in_size)``, rows sum to 1.

    Triangle kernel on half-pixel centres, widened by ``in/out`` when downsampling: equal
    to ``jax.image.resize(..., method='linear', antialias=True)`` (tested), whose
    ``scale_and_translate`` follows TF's, as used by score_sde's
    ``tf.image.resize(..., antialias=True)``. Read-only (cached).
    """
    scale = out_size / in_size
    kernel_scale = min(scale, 1.0)
    centres = (np.arange(out_size) + 0.5) / scale  # output centres in input coordinates
    dist = (np.arange(in_size)[None, :] + 0.5) - centres[:, None]
    weights = np.maximum(0.0, 1.0 - np.abs(dist * kernel_scale))
    weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    weights.setflags(write=False)
    return weights


@functools.lru_cache(maxsize=32)
def _taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The nonzero band of :func:`resize_matrix`: input indices and weights ``(out, taps)``."""
    weights = resize_matrix(in_size, out_size)
    num_taps = int((weights > 0).sum(axis=1).max())
    idx = np.zeros((out_size, num_taps), np.intp)
    w = np.zeros((out_size, num_taps), np.float32)  # padding taps: index 0, weight 0
    for row in range(out_size):
        nonzero = np.flatnonzero(weights[row])
        idx[row, :nonzero.size], w[row, :nonzero.size] = nonzero, weights[row, nonzero]
    return idx, w


def _resample(x: np.ndarray, axis: int, size: int) -> np.ndarray:
    idx, w = _taps(x.shape[axis], size)
    x = np.moveaxis(x, axis, 0)
    w = w.reshape(w.shape + (1,) * (x.ndim - 1))
    out = w[:, 0] * x[idx[:, 0]]
    for tap in range(1, idx.shape[1]):
        out += w[:, tap] * x[idx[:, tap]]
    return np.moveaxis(out, 0, axis)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Antialiased resize ``(..., H, W, C)`` → float32 ``(..., size, size, C)``.

    Separable, applying the few nonzero taps of :func:`resize_matrix` per axis with plain
    numpy (no BLAS: small matmuls from many decode threads stall in OpenBLAS).
    """
    x = images.astype(np.float32)
    if x.shape[-3] != size:
        x = _resample(x, x.ndim - 3, size)
    if x.shape[-2] != size:
        x = _resample(x, x.ndim - 2, size)
    return x


def to_signed(images_uint8: np.ndarray) -> np.ndarray:
    """``[0, 255]`` → ``[-1, 1]`` float32, same shape."""
    return images_uint8.astype(np.float32) / 127.5 - 1.0


class TrainPipeline:
    """Shuffled training batches, a pure function of ``(seed, step)``.

    Epoch ``e`` visits the source in the order ``default_rng((seed, 0, e)).permutation(N)``;
    global position ``p = step * batch_size + j`` is item ``p mod N`` of epoch ``p // N``, so
    batches span epoch boundaries consistently. With ``random_flip``, image ``j`` of batch
    ``step`` is mirrored left–right iff ``default_rng((seed, 1, step)).random(B)[j] < 0.5``.
    """

    def __init__(self, source: Source, batch_size: int, seed: int, random_flip: bool,
                 prefetch: int = 2):
        if batch_size <= 0:
            raise ValueError(f"batch_size: must be positive, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed: must be a non-negative int, got {seed}")
        if len(source) == 0:
            raise ValueError("source: is empty; check the dataset split")
        self.source, self.batch_size, self.seed = source, batch_size, int(seed)
        self.random_flip, self.prefetch = random_flip, max(1, prefetch)
        self._perms: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def _permutation(self, epoch: int) -> np.ndarray:
        with self._lock:
            if epoch not in self._perms:
                if len(self._perms) >= 2:
                    self._perms.pop(min(self._perms))
                rng = np.random.default_rng((self.seed, _PERM_STREAM, epoch))
                self._perms[epoch] = rng.permutation(len(self.source))
            return self._perms[epoch]

    def indices(self, step: int) -> np.ndarray:
        """Source indices of batch ``step``, int64 ``(B,)``."""
        n = len(self.source)
        pos = step * self.batch_size + np.arange(self.batch_size)
        epochs, offsets = np.divmod(pos, n)
        out = np.empty(self.batch_size, dtype=np.int64)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._permutation(int(epoch))[offsets[sel]]
        return out

    def flips(self, step: int) -> np.ndarray:
        """Which images of batch ``step`` are mirrored, bool ``(B,)``."""
        if not self.random_flip:
            return np.zeros(self.batch_size, dtype=bool)
        return np.random.default_rng((self.seed, _FLIP_STREAM, step)).random(self.batch_size) < 0.5

    def batch(self, step: int) -> np.ndarray:
        """Batch ``step``: float32 ``(B, H, W, C)`` in ``[-1, 1]``."""
        if step < 0:
            raise ValueError(f"step: must be non-negative, got {step}")
        images = np.asarray(self.source[self.indices(step)], dtype=np.float32)
        flip = self.flips(step)
        if flip.any():
            images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
        return images

    def iterate(self, start_step: int = 0, stop_step: int | None = None) -> BatchIterator:
        """Batches ``start_step, start_step + 1, …`` (up to ``stop_step``, exclusive),
        computed ``prefetch`` ahead on a background thread."""
        return BatchIterator(self.batch, start_step, stop_step, self.prefetch)


class BatchIterator(Iterator[np.ndarray]):
    """Iterator over ``batch_fn(step)`` with a prefetching daemon thread.

    ``close()`` (or leaving a ``with`` block, or garbage collection) stops the thread.
    An exception raised while producing a batch is re-raised by ``next``.
    """

    def __init__(self, batch_fn, start_step: int, stop_step: int | None, prefetch: int):
        self._queue: queue.Queue = queue.Queue(maxsize=prefetch)
        self._stop = threading.Event()
        # The thread holds the queue and the event, never `self`, so an abandoned iterator
        # is garbage-collected and its __del__ stops the thread.
        self._thread = threading.Thread(
            target=_produce, args=(batch_fn, start_step, stop_step, self._queue, self._stop),
            daemon=True, name="mlem-batch-prefetch")
        self._thread.start()

    def __next__(self) -> np.ndarray:
        while True:
            if self._stop.is_set():
                raise StopIteration
            try:
                item = self._queue.get(timeout=0.1)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    raise StopIteration from None
        if item is _DONE:
            self.close()
            raise StopIteration
        if isinstance(item, BaseException):
            self.close()
            raise item
        return item

    def close(self) -> None:
        """Stop the prefetch thread and wait for it (at most about one batch time)."""
        self._stop.set()
        self._thread.join(timeout=10.0)

    @property
    def alive(self) -> bool:
        """Whether the prefetch thread is still running."""
        return self._thread.is_alive()

    def __enter__(self) -> BatchIterator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        self._stop.set()


_DONE = object()


def _put(q: queue.Queue, stop: threading.Event, item) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _produce(batch_fn, step: int, stop_step: int | None, q: queue.Queue,
             stop: threading.Event) -> None:
    try:
        while (stop_step is None or step < stop_step) and not stop.is_set():
            if not _put(q, stop, batch_fn(step)):
                return
            step += 1
    except BaseException as err:  # handed to the consumer, re-raised by __next__
        _put(q, stop, err)
        return
    _put(q, stop, _DONE)


def heldout_batches(source: Source, batch_size: int, num_batches: int) -> np.ndarray:
    """The first ``num_batches * batch_size`` items, float32 ``(num_batches, B, H, W, C)``.

    Deterministic and unflipped: the fixed evaluation set of the held-out loss.
    """
    need = batch_size * num_batches
    if batch_size <= 0 or num_batches <= 0:
        raise ValueError(f"heldout_batches: batch_size and num_batches must be positive, got "
                         f"{batch_size}, {num_batches}")
    if need > len(source):
        raise ValueError(f"heldout_batches: need {need} images but the held-out split has "
                         f"{len(source)}; lower config.eval.batch_size or config.eval.num_batches")
    images = np.asarray(source[np.arange(need)], dtype=np.float32)
    return images.reshape(num_batches, batch_size, *images.shape[1:])
