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
"""

from __future__ import annotations

import functools

import flax.linen as nn

from mlem.models.unet import UNet

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
