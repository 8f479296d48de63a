"""The FID Inception-v3 (pool3, 2048 features) in Flax, and loading its weights from a local
npz file (docs/quality.md). Nothing is downloaded.

The architecture is pytorch-fid's ``FIDInceptionA/C/E_1/E_2`` variant of torchvision's
Inception-v3, i.e. the TF graph ``pt_inception-2015-12-05`` of the original FID code: average
pools that exclude padding, a max pool in the last block's pool branch, BatchNorm ``eps =
1e-3``, no transform of the input. Module names equal the PyTorch state-dict names, so the
npz keys map one to one (:func:`load_inception_params`).

Input: images ``(B, H, W, 3)`` in ``[-1, 1]`` (pytorch-fid's ``2x − 1`` of ``[0, 1]``
images), bilinearly resized to ``resize_to`` (299; ``None`` keeps the size, at least 75).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["FEATURES", "INPUT_SIZE", "MIN_SIZE", "BasicConv2d", "InceptionA", "InceptionB",
           "InceptionC", "InceptionD", "InceptionE", "InceptionV3", "load_inception_params",
           "random_variables", "variables_from_state_dict"]

Array = jax.Array
INPUT_SIZE = 299
FEATURES = 2048
MIN_SIZE = 75


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (running statistics), ReLU."""

    features: int
    kernel: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: Array) -> Array:
        pad = tuple((p, p) for p in self.padding)
        x = nn.Conv(self.features, self.kernel, self.strides, padding=pad, use_bias=False,
                    name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _conv(name: str, features: int, kernel: int | tuple[int, int], strides: int = 1,
          padding: int | tuple[int, int] = 0) -> BasicConv2d:
    kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
    padding = (padding, padding) if isinstance(padding, int) else padding
    return BasicConv2d(features, kernel, strides, padding, name=name)


def _avg_pool3(x: Array) -> Array:
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool3(x: Array, strides: int = 2) -> Array:
    pad = ((1, 1), (1, 1)) if strides == 1 else "VALID"
    return nn.max_pool(x, (3, 3), (strides, strides), padding=pad)


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = _conv("branch1x1", 64, 1)(x)
        b5 = _conv("branch5x5_2", 64, 5, padding=2)(_conv("branch5x5_1", 48, 1)(x))
        b3 = _conv("branch3x3dbl_1", 64, 1)(x)
        b3 = _conv("branch3x3dbl_3", 96, 3, padding=1)(_conv("branch3x3dbl_2", 96, 3,
                                                              padding=1)(b3))
        bp = _conv("branch_pool", self.pool_features, 1)(_avg_pool3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = _conv("branch3x3", 384, 3, strides=2)(x)
        bd = _conv("branch3x3dbl_1", 64, 1)(x)
        bd = _conv("branch3x3dbl_2", 96, 3, padding=1)(bd)
        bd = _conv("branch3x3dbl_3", 96, 3, strides=2)(bd)
        return jnp.concatenate([b3, bd, _max_pool3(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c7 = self.channels_7x7
        b1 = _conv("branch1x1", 192, 1)(x)
        b7 = _conv("branch7x7_1", c7, 1)(x)
        b7 = _conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
        b7 = _conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
        bd = _conv("branch7x7dbl_1", c7, 1)(x)
        bd = _conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
        bd = _conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
        bd = _conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
        bd = _conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
        bp = _conv("branch_pool", 192, 1)(_avg_pool3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = _conv("branch3x3_2", 320, 3, strides=2)(_conv("branch3x3_1", 192, 1)(x))
        b7 = _conv("branch7x7x3_1", 192, 1)(x)
        b7 = _conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = _conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = _conv("branch7x7x3_4", 192, 3, strides=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool3(x)], axis=-1)


class InceptionE(nn.Module):
    """``max_pool``: the last block (FIDInceptionE_2) pools its pool branch by max."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = _conv("branch1x1", 320, 1)(x)
        b3 = _conv("branch3x3_1", 384, 1)(x)
        b3 = jnp.concatenate([_conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
                              _conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3)], -1)
        bd = _conv("branch3x3dbl_1", 448, 1)(x)
        bd = _conv("branch3x3dbl_2", 384, 3, padding=1)(bd)
        bd = jnp.concatenate([_conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
                              _conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd)], -1)
        pooled = _max_pool3(x, strides=1) if self.max_pool else _avg_pool3(x)
        bp = _conv("branch_pool", 192, 1)(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
    """FID Inception-v3 up to pool3: ``(B, H, W, 3)`` in ``[-1, 1]`` → float32 ``(B, 2048)``."""

    resize_to: int | None = INPUT_SIZE

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = x.astype(jnp.float32)
        if self.resize_to is not None:
            shape = (x.shape[0], self.resize_to, self.resize_to, x.shape[-1])
            x = jax.image.resize(x, shape, "bilinear", antialias=False)
        if min(x.shape[1:3]) < MIN_SIZE or x.shape[-1] != 3:
            raise ValueError(f"InceptionV3: need (B, H, W, 3) with H, W >= {MIN_SIZE}, got "
                             f"{x.shape}")
        x = _conv("Conv2d_1a_3x3", 32, 3, strides=2)(x)
        x = _conv("Conv2d_2a_3x3", 32, 3)(x)
        x = _conv("Conv2d_2b_3x3", 64, 3, padding=1)(x)
        x = _max_pool3(x)
        x = _conv("Conv2d_3b_1x1", 80, 1)(x)
        x = _conv("Conv2d_4a_3x3", 192, 3)(x)
        x = _max_pool3(x)
        x = InceptionA(32, name="Mixed_5b")(x)
        x = InceptionA(64, name="Mixed_5c")(x)
        x = InceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                         ("Mixed_6e", 192)):
            x = InceptionC(c7, name=name)(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = InceptionE(name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def random_variables(seed: int = 0) -> dict[str, Any]:
    """Random ``{"params", "batch_stats"}`` for tests, drawn in numpy from the shapes (no
    XLA init compile): He-normal kernels, unit BatchNorm scale and variance, zero biases and
    means. Features need the real weights (:func:`load_inception_params`)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = str(getattr(path[-1], "key", path[-1]))
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            return rng.normal(0.0, np.sqrt(2.0 / fan_in), leaf.shape).astype(np.float32)
        return (np.ones if name in ("scale", "var") else np.zeros)(leaf.shape, np.float32)

    return jax.tree_util.tree_map_with_path(draw, _variable_shapes())


def _variable_shapes() -> dict[str, Any]:
    x = jax.ShapeDtypeStruct((1, MIN_SIZE, MIN_SIZE, 3), jnp.float32)
    shapes = jax.eval_shape(InceptionV3(None).init, jax.random.key(0), x)
    return flax.core.unfreeze(shapes)


# PyTorch state-dict suffix → (collection, Flax leaf name); conv weights are OIHW.
_LEAVES = {"conv.weight": ("params", "kernel"), "bn.weight": ("params", "scale"),
           "bn.bias": ("params", "bias"), "bn.running_mean": ("batch_stats", "mean"),
           "bn.running_var": ("batch_stats", "var")}
_IGNORED = ("fc.", "AuxLogits.")


def variables_from_state_dict(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    """pytorch-fid state-dict names and arrays → ``{"params", "batch_stats"}`` of
    :class:`InceptionV3`; ``fc.*``, ``AuxLogits.*`` and ``*.num_batches_tracked`` are dropped.

    ``Mixed_5b.branch1x1.conv.weight (64, 192, 1, 1)`` becomes
    ``params/Mixed_5b/branch1x1/conv/kernel (1, 1, 192, 64)``; ``….bn.running_var``
    becomes ``batch_stats/…/bn/var``.
    """
    tree: dict[str, Any] = {"params": {}, "batch_stats": {}}
    for name, value in arrays.items():
        if name.startswith(_IGNORED) or name.endswith("num_batches_tracked"):
            continue
        parts = name.split(".")
        suffix = ".".join(parts[-2:])
        if suffix not in _LEAVES:
            raise ValueError(f"Inception weights: unexpected key {name!r}; expected "
                             f"<module>.{{{', '.join(_LEAVES)}}} (docs/quality.md)")
        collection, leaf = _LEAVES[suffix]
        value = np.asarray(value, np.float32)
        if leaf == "kernel":
            value = value.transpose(2, 3, 1, 0)  # OIHW → HWIO
        node = tree[collection]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[leaf] = value
    return tree


def load_inception_params(path: str | Path) -> dict[str, Any]:
    """Variables of :class:`InceptionV3` from a local npz of pytorch-fid's state dict
    (``pt_inception-2015-12-05-6726825d.pth`` saved with ``np.savez``; docs/quality.md).

    Every array's shape is checked against the architecture; a missing, extra or misshapen
    entry raises ``ValueError`` naming it.
    """
    with np.load(path) as data:
        loaded = variables_from_state_dict({k: data[k] for k in data.files})
    want = {"/".join(str(getattr(k, "key", k)) for k in p): v.shape
            for p, v in jax.tree_util.tree_leaves_with_path(_variable_shapes())}
    got = {"/".join(str(getattr(k, "key", k)) for k in p): v.shape
           for p, v in jax.tree_util.tree_leaves_with_path(loaded)}
    problems = sorted([f"missing {k}" for k in want.keys() - got.keys()]
                      + [f"unexpected {k}" for k in got.keys() - want.keys()]
                      + [f"{k}: shape {got[k]}, expected {want[k]}"
                         for k in want.keys() & got.keys() if got[k] != want[k]])
    if problems:
        raise ValueError(f"{path}: not the FID Inception-v3 weights ({len(problems)} "
                         f"problems: {'; '.join(problems[:5])}); see docs/quality.md")
    return loaded
