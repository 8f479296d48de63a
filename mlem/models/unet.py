"""A DDPM-style UNet that predicts the noise ``ε̂(x_t, t)`` (Ho et al. 2020, score_sde ``ddpm``).

Residual blocks (GroupNorm → SiLU → conv, time embedding added, dropout, zero-initialised
output conv), single-head self-attention at chosen resolutions, strided-conv downsampling and
nearest-neighbour upsampling with skip connections. The size is set by typed fields, so a
misspelt field fails at construction; ladder levels are ``functools.partial(UNet, ...)``.

Parameters are always float32; ``dtype='bfloat16'`` only lowers the compute precision
(normalisation statistics and the attention softmax stay float32). The output is float32.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["AttnBlock", "ResBlock", "UNet", "timestep_embedding"]

Array = jax.Array
_zero_init = nn.initializers.zeros


def timestep_embedding(t: Array, dim: int, max_period: float = 10_000.0) -> Array:
    """Sinusoidal embedding of (scaled) times ``t: (B,)`` → ``(B, dim)``; ``dim`` even."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / max(half - 1, 1))
    args = t.astype(jnp.float32)[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def _group_norm(channels: int, max_groups: int, dtype) -> nn.GroupNorm:
    groups = min(max_groups, channels)
    if channels % groups:
        raise ValueError(f"GroupNorm: {channels} channels are not divisible by {groups} groups; "
                         f"use a base width ch (and ch_mult) giving multiples of {groups}, "
                         f"or set norm_groups to a divisor of {channels}")
    return nn.GroupNorm(num_groups=groups, epsilon=1e-6, dtype=dtype)


class ResBlock(nn.Module):
    """``x: (B, H, W, C_in)``, ``temb: (B, D)`` → ``(B, H, W, out_ch)``."""

    out_ch: int
    dropout: float
    norm_groups: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: Array, temb: Array, train: bool) -> Array:
        h = nn.silu(_group_norm(x.shape[-1], self.norm_groups, self.dtype)(x))
        h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype)(h)
        h = h + nn.Dense(self.out_ch, dtype=self.dtype)(nn.silu(temb))[:, None, None, :]
        h = nn.silu(_group_norm(self.out_ch, self.norm_groups, self.dtype)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), dtype=self.dtype, kernel_init=_zero_init)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Dense(self.out_ch, dtype=self.dtype, name="skip")(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``H·W`` positions; ``(B, H, W, C)`` → same shape."""

    norm_groups: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, hgt, wid, c = x.shape
        h = _group_norm(c, self.norm_groups, self.dtype)(x).reshape(b, hgt * wid, c)
        q, k, v = (nn.Dense(c, dtype=self.dtype, name=n)(h) for n in ("q", "k", "v"))
        logits = jnp.einsum("bqc,bkc->bqk", q, k).astype(jnp.float32) / math.sqrt(c)
        weights = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        h = jnp.einsum("bqk,bkc->bqc", weights, v)
        h = nn.Dense(c, dtype=self.dtype, kernel_init=_zero_init, name="proj")(h)
        return x + h.reshape(b, hgt, wid, c)


class UNet(nn.Module):
    """ε-prediction UNet: ``(x: (B, H, W, C), t: (B,) or scalar in [0, 1])`` → ``(B, H, W, C)``.

    Attributes:
      ch: base width; resolution ``i`` has ``ch * ch_mult[i]`` channels.
      ch_mult: channel multipliers, one per resolution (``len - 1`` downsamplings).
      num_res_blocks: residual blocks per resolution on the way down (``+1`` on the way up).
      attn_resolutions: spatial sizes (e.g. ``(16,)``) at which self-attention is applied.
      dropout: dropout rate inside residual blocks (active only with ``train=True``).
      dtype: compute dtype, ``'float32'`` or ``'bfloat16'``; parameters stay float32.
      norm_groups: GroupNorm uses ``min(norm_groups, channels)`` groups.
      time_scale: data time ``t ∈ [0, 1]`` is multiplied by this before the sinusoids.
    """

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    dtype: str = "float32"
    norm_groups: int = 32
    time_scale: float = 1000.0

    def _check(self, x: Array) -> None:
        if x.ndim != 4:
            raise ValueError(f"x: expected (B, H, W, C) images, got shape {x.shape}")
        if self.ch < 2 or self.ch % 2 or not self.ch_mult or self.num_res_blocks < 1:
            raise ValueError(f"UNet: need an even ch >= 2, a non-empty ch_mult and "
                             f"num_res_blocks >= 1; got ch={self.ch}, ch_mult={self.ch_mult}, "
                             f"num_res_blocks={self.num_res_blocks}")
        factor = 2 ** (len(self.ch_mult) - 1)
        if x.shape[1] % factor or x.shape[2] % factor:
            raise ValueError(f"image_size {x.shape[1]}x{x.shape[2]} is not divisible by "
                             f"2**(len(ch_mult)-1) = {factor} for ch_mult={self.ch_mult}; "
                             f"resize the images or use fewer resolutions in ch_mult")

    @nn.compact
    def __call__(self, x: Array, t: Array, train: bool = False) -> Array:
        self._check(x)
        dtype = jnp.dtype(self.dtype)
        block = dict(dropout=self.dropout, norm_groups=self.norm_groups, dtype=dtype)
        attn = dict(norm_groups=self.norm_groups, dtype=dtype)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))

        temb = timestep_embedding(t * self.time_scale, self.ch)
        temb = nn.Dense(4 * self.ch, dtype=dtype)(temb)
        temb = nn.Dense(4 * self.ch, dtype=dtype)(nn.silu(temb))

        h = nn.Conv(self.ch, (3, 3), dtype=dtype)(x.astype(dtype))
        skips = [h]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = ResBlock(self.ch * mult, **block)(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock(**attn)(h)
                skips.append(h)
            if level != len(self.ch_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), dtype=dtype)(h)
                skips.append(h)

        h = ResBlock(h.shape[-1], **block)(h, temb, train)
        h = AttnBlock(**attn)(h)
        h = ResBlock(h.shape[-1], **block)(h, temb, train)

        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = ResBlock(self.ch * mult, **block)(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock(**attn)(h)
            if level != 0:
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = nn.Conv(h.shape[-1], (3, 3), dtype=dtype)(h)

        h = nn.silu(_group_norm(h.shape[-1], self.norm_groups, dtype)(h))
        h = nn.Conv(x.shape[-1], (3, 3), dtype=dtype, kernel_init=_zero_init)(h)
        return h.astype(jnp.float32)
