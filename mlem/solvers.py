"""Update rules: one solver step given the (combined) level output (docs/solvers.md).

Every solver here takes a step that is **affine in the level output** ``u``::

    X_{n+1} = A_n X_n + B_n u(X_n) + C_n ξ_n

* :class:`EulerMaruyama` — ``u`` a drift: ``X + η u + g(τ) ΔW`` (the reverse SDE, ``sde``);
* :class:`Euler` — ``u`` a drift, no noise: ``X + η u`` (the probability-flow ODE, ``ode``);
* :class:`DDIM` — ``u = ε̂`` (η_DDIM = 0, the exponential integrator of the PF-ODE, ``ddim``);
* :class:`Ancestral` — ``u = ε̂`` plus fresh noise (DDPM ancestral, ``ancestral``).

Because the step is affine in ``u``, replacing ``u`` by the randomised telescope
``Σ_k (B_k/p_k)(uᵏ − uᵏ⁻¹) = Σ_j a_j uʲ`` keeps it unbiased for the top level given
``X_n``; :mod:`mlem.sampling` computes that combination once for every rule. For EM and
Euler the levels may stay drifts: a drift ``½β x − κ ε̂`` is itself affine in ε̂, and since
``Σ_j a_j = w_1 = 1`` the telescope of drifts is the drift of the telescope of ε̂.

A rule is anything that satisfies the protocol :class:`UpdateRule`, so a user can add one:
hashable (a static argument of the jitted scans; those here are frozen dataclasses), with
``stochastic`` (whether it consumes Brownian increments), ``level_time(τ)`` (the time at
which the levels are called: solver time τ for drifts, data time ``t = 1 − τ`` for ε̂) and
``__call__(x, u, τ0, τ1, dw)``. The VP-SDE's conventions are those of :mod:`mlem.sde`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

import jax
import jax.numpy as jnp

from mlem.sde import VPSDE, EpsFn

__all__ = ["SOLVERS", "Ancestral", "DDIM", "Euler", "EulerMaruyama", "UpdateRule",
           "check_solver", "for_vpsde"]

Array = jax.Array
SOLVERS = ("sde", "ode", "ddim", "ancestral")


class UpdateRule(Protocol):
    """What :mod:`mlem.sampling` needs of an update rule; the four below are examples.

    ``__call__(x, u, τ0, τ1, dw)`` is one step from solver time ``τ0`` to ``τ1`` given the
    level output ``u`` (the multilevel telescope ``Σ_j a_j uʲ`` under ML-EM), and must be
    affine in ``u`` for ML-EM to stay unbiased. ``dw`` is the step's Brownian increment
    (shaped like ``x``) when ``stochastic`` is true, else ``None``. ``level_time(τ)`` is the
    time at which the levels are called. A rule is a static argument of the jitted scans, so
    it must be hashable: a frozen dataclass, say.
    """

    stochastic: bool

    def level_time(self, tau: Array) -> Array: ...

    def __call__(self, x: Array, u: Array, tau0: Array, tau1: Array,
                 dw: Array | None) -> Array: ...


@dataclasses.dataclass(frozen=True)
class EulerMaruyama:
    """``X + (τ1 − τ0) u + g(τ0) ΔW``; levels are drifts ``f(x, τ)``."""

    diffusion: Callable[[Array], Array]
    stochastic = True

    def level_time(self, tau: Array) -> Array:
        return tau

    def __call__(self, x: Array, u: Array, tau0: Array, tau1: Array, dw: Array) -> Array:
        return x + (tau1 - tau0) * u + self.diffusion(tau0) * dw


@dataclasses.dataclass(frozen=True)
class Euler:
    """``X + (τ1 − τ0) u``; levels are drifts ``f(x, τ)`` (an ODE: no noise)."""

    stochastic = False

    def level_time(self, tau: Array) -> Array:
        return tau

    def __call__(self, x: Array, u: Array, tau0: Array, tau1: Array, dw: None) -> Array:
        return x + (tau1 - tau0) * u


@dataclasses.dataclass(frozen=True)
class DDIM:
    """``α₁ (X − σ₀ ε̂)/α₀ + σ₁ ε̂`` between data times ``1 − τ0 > 1 − τ1``; levels are ε̂."""

    sde: VPSDE
    stochastic = False

    def level_time(self, tau: Array) -> Array:
        return self.sde.data_time(tau)

    def __call__(self, x: Array, u: Array, tau0: Array, tau1: Array, dw: None) -> Array:
        a, b = self.sde.ddim_coefficients(self.sde.data_time(tau0), self.sde.data_time(tau1))
        return a * x + b * u


@dataclasses.dataclass(frozen=True)
class Ancestral:
    """DDPM ancestral step ``a X + b ε̂ + c ξ`` (:meth:`VPSDE.ancestral_coefficients`); levels are ε̂.

    ``ξ = ΔW / sqrt(τ1 − τ0)`` comes from the Brownian increment of the step, so ancestral
    solves on nested grids share their noise like EM solves do.
    """

    sde: VPSDE
    stochastic = True

    def level_time(self, tau: Array) -> Array:
        return self.sde.data_time(tau)

    def __call__(self, x: Array, u: Array, tau0: Array, tau1: Array, dw: Array) -> Array:
        a, b, c = self.sde.ancestral_coefficients(self.sde.data_time(tau0),
                                                  self.sde.data_time(tau1))
        return a * x + b * u + c * dw / jnp.sqrt(tau1 - tau0)


def check_solver(name: str) -> str:
    """``name`` if it names a solver, else a ``ValueError`` listing them."""
    if name not in SOLVERS:
        raise ValueError(f"solver: must be one of {', '.join(SOLVERS)}, got {name!r}")
    return name


def for_vpsde(sde: VPSDE, solver: str, eps_fns: Sequence[EpsFn]
              ) -> tuple[list[Callable[[Array, Array], Array]], UpdateRule]:
    """The levels and update rule of ``solver`` for ε-predictors ``eps_fns`` (cheapest first).

    ``sde``: reverse-SDE drifts and EM; ``ode``: PF-ODE drifts and Euler; ``ddim`` and
    ``ancestral``: the ε-predictors themselves.
    """
    check_solver(solver)
    if solver == "sde":
        return [sde.drift_from_eps(e) for e in eps_fns], EulerMaruyama(sde.diffusion)
    if solver == "ode":
        return [sde.pf_ode_drift_from_eps(e) for e in eps_fns], Euler()
    rule = DDIM(sde) if solver == "ddim" else Ancestral(sde)
    return list(eps_fns), rule
