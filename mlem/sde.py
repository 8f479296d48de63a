"""The variance-preserving SDE (DDPM limit) and its reverse-time drift (docs/design.md §2).

Data time ``t ∈ [t_min, 1]`` runs forward (data → noise); the sampler integrates the
reverse SDE in solver time ``τ = 1 − t``, so ``τ`` increases from 0 to ``1 − t_min``::

    forward:  dx = −½β(t) x dt + sqrt(β(t)) dW
    reverse:  dX = [½β(t) X + β(t) s(X, t)] dτ + sqrt(β(t)) dW,   t = 1 − τ

with the score ``s = −ε̂/σ`` of an ε-predicting network. The probability-flow ODE has the
same marginals and half the score term, and no noise::

    PF-ODE:   dX = [½β(t) X + ½β(t) s(X, t)] dτ,   t = 1 − τ

DDIM and DDPM ancestral sampling step between data times ``t_n > t_{n+1}`` through the
prediction ``x̂₀ = (x − σ_n ε̂)/α_n``; each step is affine in ε̂
(:meth:`VPSDE.ddim_coefficients`, :meth:`VPSDE.ancestral_coefficients`). This file is the
only place where these sign and time conventions are written (docs/solvers.md).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["GRIDS", "KARRAS_RHO", "VPSDE", "DriftFn", "EpsFn", "check_grid", "gaussian_eps",
           "parse_grid"]

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]  # ε̂(x_t, t): batch-first x, scalar or (B,) t
DriftFn = Callable[[Array, Array], Array]  # f(x, τ): batch-first x, scalar τ
GRIDS = ("uniform", "quadratic", "logsnr", "karras")
KARRAS_RHO = 7.0  # EDM's ρ of the karras grid; karras:ρ for another (parse_grid)


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

    def pf_ode_drift_from_eps(self, eps_fn: EpsFn) -> DriftFn:
        """Probability-flow drift ``f(x, τ) = ½β(t) x − ½β(t) ε̂(x, t)/σ(t)`` with ``t = 1 − τ``."""

        def drift(x: Array, tau: Array) -> Array:
            t = self.data_time(tau)
            return 0.5 * self.beta(t) * x - 0.5 * self.beta(t) / self.sigma(t) * eps_fn(x, t)

        return drift

    def log_snr(self, t: Array) -> Array:
        """``λ(t) = log(α²/σ²)``, decreasing in ``t``."""
        return 2.0 * self.log_alpha(t) - jnp.log(-jnp.expm1(2.0 * self.log_alpha(t)))

    def time_of_log_snr(self, lam: Array) -> Array:
        """The data time ``t`` with ``λ(t) = lam``: ``log α² = log sigmoid(λ)`` solved for ``t``."""
        xp = np if isinstance(lam, (float, np.ndarray)) else jnp
        log_a2 = -xp.logaddexp(0.0, -lam)  # log sigmoid(λ) = −(β_min t + ½ t² Δβ)
        delta = self.beta_max - self.beta_min
        if delta == 0:
            return -log_a2 / self.beta_min
        return (xp.sqrt(self.beta_min**2 - 2.0 * delta * log_a2) - self.beta_min) / delta

    # --- Steps between data times t0 > t1 (DDIM, ancestral), affine in ε̂ -------------------

    def ddim_coefficients(self, t0: Array, t1: Array) -> tuple[Array, Array]:
        """``(a, b)`` of the DDIM step (η_DDIM = 0) ``x' = a x + b ε̂`` from ``t0`` to ``t1 < t0``.

        ``x' = α₁ (x − σ₀ ε̂)/α₀ + σ₁ ε̂``: ``a = α₁/α₀``, ``b = σ₁ − α₁σ₀/α₀``. It is the
        exponential integrator of the PF-ODE with ε̂ frozen over the step.
        """
        a0, s0, a1, s1 = self.alpha(t0), self.sigma(t0), self.alpha(t1), self.sigma(t1)
        return a1 / a0, s1 - a1 * s0 / a0

    def ancestral_coefficients(self, t0: Array, t1: Array) -> tuple[Array, Array, Array]:
        """``(a, b, c)`` of the DDPM ancestral step ``x' = a x + b ε̂ + c ξ``, ``ξ ~ N(0, I)``.

        DDIM with η = 1: ``x' = α₁ x̂₀ + sqrt(σ₁² − c²) ε̂ + c ξ`` with ``x̂₀ = (x − σ₀ ε̂)/α₀``
        and ``c² = (σ₁²/σ₀²)(1 − α₀²/α₁²)``, the variance of the DDPM posterior
        ``q(x_{t1} | x_{t0}, x₀)``; ``σ₁² − c² = σ₁² α₀² (1/α₁² − 1)/σ₀² ≥ 0``.
        """
        a0, s0, a1, s1 = self.alpha(t0), self.sigma(t0), self.alpha(t1), self.sigma(t1)
        c = s1 / s0 * jnp.sqrt(-jnp.expm1(2.0 * (jnp.log(a0) - jnp.log(a1))))
        return a1 / a0, jnp.sqrt(jnp.maximum(s1**2 - c**2, 0.0)) - a1 * s0 / a0, c

    # --- Time grids ----------------------------------------------------------------------

    def time_grid(self, num_steps: int, kind: str = "uniform", *, rho: float | None = None
                  ) -> Array:
        """``num_steps + 1`` increasing solver times from ``0`` to ``1 − t_min``.

        ``kind``: ``uniform`` in τ; ``quadratic``, data time ``t_i = t_min + (1 − t_min)(1 −
        i/N)²`` (steps shrink towards the data); ``logsnr``, uniform in ``λ(t)`` from ``λ(1)``
        to ``λ(t_min)``; ``karras`` (EDM), uniform in ``σ̃^{1/ρ}`` with ``σ̃ = σ/α`` from
        ``σ̃(1)`` to ``σ̃(t_min)``, with ``ρ = 7`` (EDM's), or another ``ρ`` as ``karras:ρ``
        (e.g. ``karras:5``, so that the grid's name carries it into configs, stage settings
        and stored sets) or as ``rho`` (this kind only). Each is
        ``φ(i/N)`` for a fixed ``φ``, so the grid of ``N`` steps is every ``(P/N)``-th point of
        the grid of ``P`` steps of the same kind (nested grids: coupled Brownian paths,
        :mod:`mlem.brownian`). The Karras grid nests because it ends at ``t_min``, as every grid
        here does, rather than with EDM's extra step to ``σ̃ = 0`` (docs/solvers.md).
        """
        if num_steps < 1:
            raise ValueError(f"num_steps: must be >= 1, got {num_steps}")
        kind, grid_rho = parse_grid(kind)
        rho = grid_rho if rho is None else float(rho)
        if not rho > 0:
            raise ValueError(f"rho: must be positive, got {rho}")
        u = np.arange(num_steps + 1, dtype=np.float64) / num_steps
        end = 1.0 - self.t_min
        if kind == "uniform":
            return jnp.linspace(0.0, end, num_steps + 1)
        if kind == "quadratic":
            tau = end * (1.0 - (1.0 - u) ** 2)
        else:
            log_a2 = lambda t: -(self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min))
            lam0, lam1 = (log_a2(t) - np.log(-np.expm1(log_a2(t))) for t in (1.0, self.t_min))
            if kind == "logsnr":
                lam = lam0 + u * (lam1 - lam0)
            else:  # σ̃ = exp(−λ/2); uniform in σ̃^{1/ρ}
                r0, r1 = np.exp(-lam0 / (2 * rho)), np.exp(-lam1 / (2 * rho))
                lam = -2.0 * rho * np.log(r0 + u * (r1 - r0))
            tau = 1.0 - np.asarray(self.time_of_log_snr(lam), np.float64)
            tau[0], tau[-1] = 0.0, end
        return jnp.asarray(tau, jnp.float32)


def parse_grid(kind: str) -> tuple[str, float]:
    """``(name, ρ)`` of a grid spec: one of :data:`GRIDS`, or ``karras:ρ`` with ``ρ > 0``
    (``karras`` alone is ``ρ = 7``; ``ρ`` means nothing to the other kinds, which get 7).
    A ``ValueError`` that lists the choices otherwise."""
    name, sep, value = str(kind).partition(":")
    rho = KARRAS_RHO
    if sep and name == "karras":
        try:
            rho = float(value)
        except ValueError:
            rho = float("nan")
        if not rho > 0:
            raise ValueError(f"grid: karras:ρ needs a positive number ρ, got {kind!r}")
    if name not in GRIDS or (sep and name != "karras"):
        raise ValueError(f"grid: must be one of {', '.join(GRIDS)} (or karras:ρ, e.g. "
                         f"karras:5), got {kind!r}")
    return name, rho


def check_grid(kind: str) -> str:
    """``kind`` if it is a grid spec (:func:`parse_grid`), else a ``ValueError`` listing
    them."""
    parse_grid(kind)
    return kind


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
