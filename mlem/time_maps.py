"""Levels trained on another noise schedule, mapped onto the VP-SDE of :mod:`mlem.sde`.

Every level of a ladder is called as ``ε̂(x, t)`` at the data time ``t`` of one
:class:`~mlem.sde.VPSDE`, where ``x_t = α(t) x₀ + σ(t) ε``. A network trained on another
*variance-preserving* schedule ``x = α'(t') x₀ + σ'(t') ε`` (``σ'² = 1 − α'²``) sees the
same distribution of ``x`` wherever ``α'(t') = α(t)``, so its ε̂ is the same function there:

    ε̂_vp(x, t) = ε̂_model(x, t'(t)),   t'(t) = α'⁻¹(α(t)).

:func:`cosine` is ``t'`` for the cosine schedule of Nichol & Dhariwal (2021), ``ᾱ(t') =
f(t')/f(0)``, ``f(u) = cos²(π/2 · (u + s)/(1 + s))``; :func:`tabulated` for a discrete
schedule given by its ``alphas_cumprod`` (DDPM, diffusers' schedulers): a fractional
timestep. :func:`eps_on_vpsde` and :func:`apply_on_vpsde` wrap a level with a time map, ready
for :meth:`mlem.ladder.Ladder.from_functions`. A variance-exploding model (``x = x₀ + s ε``,
called with the noise level ``s``) needs its input rescaled too: :func:`ve_eps_on_vpsde`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from mlem.sde import VPSDE, EpsFn

__all__ = ["TimeMap", "apply_on_vpsde", "cosine", "cosine_alpha", "eps_on_vpsde",
           "tabulated", "ve_eps_on_vpsde"]

Array = jax.Array
TimeMap = Callable[[Array], Array]  # VP-SDE data time t → the model's own time t'


def cosine_alpha(t: Array, s: float = 0.008) -> Array:
    """``α'(t) = sqrt(ᾱ(t))`` of the cosine schedule, ``cos(π/2·(t+s)/(1+s))`` over its
    value at ``t = 0``."""
    return jnp.cos(0.5 * jnp.pi * (t + s) / (1 + s)) / math.cos(0.5 * math.pi * s / (1 + s))


def cosine(sde: VPSDE, s: float = 0.008, scale: float = 1.0) -> TimeMap:
    """``t ↦ scale · t'`` with ``α'(t') = α(t)`` for the cosine schedule with offset ``s``.

    ``scale``: the factor of the model's time input (e.g. 1000 for a network fed ``1000 t'``).
    The angle ``θ = π/2·(t'+s)/(1+s)`` has ``cos θ = c₀ α`` with ``c₀ = cos θ₀``,
    ``θ₀ = π/2·s/(1+s)``; it is computed as ``atan2(sqrt(sin²θ₀ + c₀² σ²), c₀ α)``, accurate
    at small ``t`` where ``arccos`` is not.
    """
    theta0 = 0.5 * math.pi * s / (1 + s)
    c0, s0 = math.cos(theta0), math.sin(theta0)

    def time_map(t: Array) -> Array:
        alpha, sigma = sde.alpha(t), sde.sigma(t)
        theta = jnp.arctan2(jnp.sqrt(s0**2 + (c0 * sigma) ** 2), c0 * alpha)
        return scale * ((1 + s) * theta / (0.5 * jnp.pi) - s)

    return time_map


def tabulated(sde: VPSDE, alphas_cumprod: np.ndarray) -> TimeMap:
    """``t ↦`` the fractional timestep ``i ∈ [0, T − 1]`` whose ``ᾱ_i`` equals ``α(t)²``.

    ``alphas_cumprod``: ``(T,)`` decreasing ``ᾱ_i`` of a discrete schedule, where the model at
    timestep ``i`` denoises ``sqrt(ᾱ_i) x₀ + sqrt(1 − ᾱ_i) ε``. Between timesteps ``i`` is
    linear in the log-SNR ``log(ᾱ/(1 − ᾱ))``; outside the table's range it is clamped to
    ``0`` or ``T − 1`` (the model was not trained beyond them).
    """
    abar = np.asarray(alphas_cumprod, np.float64)
    if abar.ndim != 1 or len(abar) < 2 or not np.all(np.diff(abar) < 0) or not (
            0 < abar[-1] and abar[0] < 1):
        raise ValueError("alphas_cumprod: need a decreasing 1-D table of values in (0, 1)")
    neg_log_snr = jnp.asarray(np.log1p(-abar) - np.log(abar), jnp.float32)  # increasing
    steps = jnp.arange(len(abar), dtype=jnp.float32)
    return lambda t: jnp.interp(-sde.log_snr(t), neg_log_snr, steps)


def eps_on_vpsde(eps_fn: EpsFn, time_map: TimeMap) -> EpsFn:
    """``ε̂_vp(x, t) = eps_fn(x, time_map(t))``: a variance-preserving model on the VP-SDE."""
    return lambda x, t: eps_fn(x, time_map(t))


def apply_on_vpsde(apply_fn: Callable[..., Array], time_map: TimeMap) -> Callable[..., Array]:
    """``apply(params, x, t) = apply_fn(params, x, time_map(t))``: :func:`eps_on_vpsde` for
    the ``apply_fns`` of :meth:`mlem.ladder.Ladder.from_functions`."""
    return lambda params, x, t: apply_fn(params, x, time_map(t))


def ve_eps_on_vpsde(eps_fn: EpsFn, sde: VPSDE) -> EpsFn:
    """A variance-exploding model ``eps_fn(x, s)`` of ``x = x₀ + s ε`` on the VP-SDE:
    ``ε̂_vp(x, t) = eps_fn(x/α(t), σ(t)/α(t))`` (``x_t/α = x₀ + (σ/α) ε``)."""

    def eps(x: Array, t: Array) -> Array:
        alpha = sde.alpha(t)
        scale = jnp.reshape(alpha, jnp.shape(alpha) + (1,) * (x.ndim - jnp.ndim(alpha)))
        return eps_fn(x / scale, sde.sigma(t) / alpha)

    return eps
