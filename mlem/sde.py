"""The variance-preserving SDE (DDPM limit) and its reverse-time drift (docs/design.md §2).

Data time ``t ∈ [t_min, 1]`` runs forward (data → noise); the sampler integrates the
reverse SDE in solver time ``τ = 1 − t``, so ``τ`` increases from 0 to ``1 − t_min``::

    forward:  dx = −½β(t) x dt + sqrt(β(t)) dW
    reverse:  dX = [½β(t) X + β(t) s(X, t)] dτ + sqrt(β(t)) dW,   t = 1 − τ

with the score ``s = −ε̂/σ`` of an ε-predicting network. This file is the only place
where that sign convention is written.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]  # ε̂(x_t, t): batch-first x, scalar or (B,) t
DriftFn = Callable[[Array, Array], Array]  # f(x, τ): batch-first x, scalar τ


@dataclasses.dataclass(frozen=True)
class VPSDE:
    """``β(t) = β_min + t(β_max − β_min)``, ``x_t = α(t) x₀ + σ(t) ε``, ``σ² = 1 − α²``."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_min: float = 1e-3

    def __post_init__(self):
        if not 0 <= self.beta_min <= self.beta_max:
            raise ValueError(f"beta_min/beta_max: need 0 <= beta_min <= beta_max, got "
                             f"{self.beta_min}, {self.beta_max}")
        if not 0 < self.t_min < 1:
            raise ValueError(f"t_min: must lie in (0, 1), got {self.t_min}")

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Array) -> Array:
        """``log α(t) = −½ ∫₀ᵗ β``."""
        return -0.5 * (self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min))

    def alpha(self, t: Array) -> Array:
        return jnp.exp(self.log_alpha(t))

    def sigma(self, t: Array) -> Array:
        return jnp.sqrt(-jnp.expm1(2.0 * self.log_alpha(t)))

    def marginal(self, x0: Array, t: Array, noise: Array) -> Array:
        """``x_t = α(t) x₀ + σ(t) ε``; ``t`` has shape ``(B,)`` or is a scalar."""
        t = _per_example(t, x0)
        return self.alpha(t) * x0 + self.sigma(t) * noise

    # --- Reverse SDE in solver time τ = 1 − t -------------------------------------------

    def data_time(self, tau: Array) -> Array:
        return 1.0 - tau

    def diffusion(self, tau: Array) -> Array:
        """``g(τ) = sqrt(β(1 − τ))``."""
        return jnp.sqrt(self.beta(self.data_time(tau)))

    def linear_drift(self, x: Array, tau: Array) -> Array:
        """The exact, free part ``½β(t) x`` of the reverse drift."""
        return 0.5 * self.beta(self.data_time(tau)) * x

    def drift_from_eps(self, eps_fn: EpsFn) -> DriftFn:
        """Reverse drift ``f(x, τ) = ½β(t) x − β(t) ε̂(x, t)/σ(t)`` with ``t = 1 − τ``."""

        def drift(x: Array, tau: Array) -> Array:
            t = self.data_time(tau)
            return 0.5 * self.beta(t) * x - self.beta(t) / self.sigma(t) * eps_fn(x, t)

        return drift

    def time_grid(self, num_steps: int) -> Array:
        """``num_steps + 1`` uniform solver times from ``0`` to ``1 − t_min``."""
        if num_steps < 1:
            raise ValueError(f"num_steps: must be >= 1, got {num_steps}")
        return jnp.linspace(0.0, 1.0 - self.t_min, num_steps + 1)


def _per_example(t: Array, x: Array) -> Array:
    """Broadcast a scalar or ``(B,)`` time against batch-first ``x``."""
    t = jnp.asarray(t, x.dtype)
    return t.reshape(t.shape + (1,) * (x.ndim - t.ndim)) if t.ndim else t


def gaussian_eps(sde: VPSDE, mean: Array, std: float) -> EpsFn:
    """Exact ε-predictor for data ``N(mean, std² I)``: ``x_t ~ N(α·mean, α²std² + σ²)``.

    ``ε̂ = −σ·score = σ (x − α·mean) / (α² std² + σ²)``. Used by tests and the synthetic
    testbed as a drift whose answer is known.
    """

    def eps_fn(x: Array, t: Array) -> Array:
        t = _per_example(t, x)
        a, s = sde.alpha(t), sde.sigma(t)
        return s * (x - a * mean) / (a**2 * std**2 + s**2)

    return eps_fn
