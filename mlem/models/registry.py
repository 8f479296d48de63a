"""The ladder registry: named UNet levels ``f¹…fᴷ`` of strictly increasing per-sample FLOPs.

Each level is a ``functools.partial(UNet, ...)`` (like ``ResNet50`` in flax/examples/imagenet),
so ``get_model(name, dropout=..., dtype=...)`` returns an unbound Flax module. Sizes were
chosen by measuring XLA FLOPs (``python -m analysis.ladder_table``): each level costs ×2–4 the one
below it.

- ``celeba64_level1..5`` (64×64×3): base width 16→32→64→96→128; level 5 is the standard DDPM
  CelebA-64 UNet (ch=128, ch_mult=(1, 2, 2, 2), 2 residual blocks, attention at 16, ~35.7M).
- ``mnist_level1..4`` (16×16×1, CPU-sized): base width 4→8→16→32, three resolutions.
- ``tiny_level1..2`` (8×8 images, a few thousand parameters): for tests only.
- ``smoke_level1..5`` (one resolution, no attention: quick to compile): the five levels of
  ``python -m experiments.celeba64 --smoke``.
- ``gaussian`` / ``gaussian_rank<r>``: not a network but the exact ε-prediction of a Gaussian
  fitted to the training split (:mod:`mlem.models.gaussian`), an almost free bottom level;
  :func:`get_level` builds it from a level config.
"""

from __future__ import annotations

import functools

import flax.linen as nn

from mlem.models.gaussian import GaussianEps
from mlem.models.unet import UNet

__all__ = ["GAUSSIAN", "LEVELS", "gaussian_rank", "get_level", "get_model", "level_names"]

_CELEBA = dict(ch_mult=(1, 2, 2, 2), attn_resolutions=(16,), dropout=0.1)
_MNIST = dict(ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), dropout=0.0,
              norm_groups=4)
_TINY = dict(ch_mult=(1, 2), num_res_blocks=1, dropout=0.0, norm_groups=4)
_SMOKE = dict(ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0, norm_groups=4)

LEVELS: dict[str, functools.partial] = {
    "celeba64_level1": functools.partial(UNet, ch=16, num_res_blocks=1, norm_groups=8,
                                         **_CELEBA),
    "celeba64_level2": functools.partial(UNet, ch=32, num_res_blocks=1, **_CELEBA),
    "celeba64_level3": functools.partial(UNet, ch=64, num_res_blocks=1, **_CELEBA),
    "celeba64_level4": functools.partial(UNet, ch=96, num_res_blocks=1, **_CELEBA),
    "celeba64_level5": functools.partial(UNet, ch=128, num_res_blocks=2, **_CELEBA),
    "mnist_level1": functools.partial(UNet, ch=4, **_MNIST),
    "mnist_level2": functools.partial(UNet, ch=8, **_MNIST),
    "mnist_level3": functools.partial(UNet, ch=16, **_MNIST),
    "mnist_level4": functools.partial(UNet, ch=32, **_MNIST),
    "tiny_level1": functools.partial(UNet, ch=4, attn_resolutions=(), **_TINY),
    "tiny_level2": functools.partial(UNet, ch=8, attn_resolutions=(4,), **_TINY),
    **{f"smoke_level{k}": functools.partial(UNet, ch=ch, **_SMOKE)
       for k, ch in enumerate((4, 8, 12, 16, 24), start=1)},
}


def level_names(prefix: str = "") -> list[str]:
    """Registered levels whose name starts with ``prefix``, cheapest first.

    ``level_names('celeba64')`` → ``['celeba64_level1', …, 'celeba64_level5']``.
    """
    names = [n for n in LEVELS if n.startswith(prefix)]
    return sorted(names, key=lambda n: (n.rsplit("_level", 1)[0], int(n.rsplit("_level", 1)[1])))


def get_model(name: str, **overrides) -> nn.Module:
    """The UNet of level ``name``; ``overrides`` replace fields (e.g. ``dropout``, ``dtype``).

    Raises ``ValueError`` listing the known levels for an unknown name, and ``TypeError``
    (from the dataclass) for an unknown field.
    """
    if name not in LEVELS:
        raise ValueError(f"unknown model level {name!r}; known levels: {', '.join(level_names())}")
    return LEVELS[name](**overrides)


GAUSSIAN = "gaussian"  # the analytic level: "gaussian" (full covariance) or "gaussian_rank<r>"


def gaussian_rank(name: str) -> int | None:
    """``None`` unless ``name`` is the analytic Gaussian level; then its covariance rank
    (``0``: full)."""
    if name == GAUSSIAN:
        return 0
    prefix = f"{GAUSSIAN}_rank"
    if name.startswith(prefix) and name[len(prefix):].isdigit() and int(name[len(prefix):]) > 0:
        return int(name[len(prefix):])
    return None


def get_level(config) -> nn.Module:
    """The network of ``config.model.level`` built from a whole level config: a UNet with the
    config's dropout and compute dtype, or, for ``gaussian[_rank<r>]``, the analytic
    :class:`~mlem.models.gaussian.GaussianEps` on the config's SDE."""
    rank = gaussian_rank(config.model.level)
    if rank is not None:
        size = config.data.image_size**2 * config.data.num_channels
        return GaussianEps(rank=min(rank, size) if rank else size, **dict(config.sde))
    return get_model(config.model.level, dropout=config.model.dropout, dtype=config.model.dtype)
