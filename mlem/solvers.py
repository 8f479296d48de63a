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

Second-order solvers need more than one output per step: a **multistep rule**
(:class:`MultistepRule`) carries a state between steps and asks for its level outputs
itself, through ``evaluate(i, y, s)``, the ``i``-th call of the step (each call a fresh
multilevel telescope under ML-EM):

* :class:`DPMSolverPP2M` — DPM-Solver++(2M) (``dpmpp2m``; with ``eta = 1`` its SDE variant,
  ``dpmpp2m-sde``): one call per step, the previous step's data prediction carried;
* :class:`Heun` — EDM's Heun on ``σ̃ = σ/α`` (``heun``): two calls per step, Euler (= DDIM)
  on the last;
* :class:`DriftHeun` — Heun's method on any drift-form SDE with additive noise (the
  stochastic Heun scheme; Heun's second-order method for an ODE): two calls per step. The
  synthetic testbed's second-order solver (:mod:`analysis.testbed`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from mlem.sde import VPSDE, EpsFn

__all__ = ["DETERMINISTIC", "SOLVERS", "Ancestral", "DDIM", "DPMSolverPP2M", "DriftHeun", "Euler",
           "EulerMaruyama", "Evaluate", "Heun", "MultistepRule", "UpdateRule", "calls_per_step",
           "check_solver", "for_vpsde", "is_multistep"]

Array = jax.Array
SOLVERS = ("sde", "ode", "ddim", "ancestral", "dpmpp2m", "dpmpp2m-sde", "heun")
DETERMINISTIC = ("ode", "ddim", "dpmpp2m", "heun")  # they draw no Brownian increments
Evaluate = Callable[[int, Array, Array], Array]  # evaluate(i, y, s): the step's i-th output


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


class MultistepRule(Protocol):
    """An update rule with a carried state and/or several level calls per step.

    :mod:`mlem.sampling` tells the two kinds apart by ``step`` (:func:`is_multistep`). Per
    solve it calls ``init(x0, ts)`` once for the state (any pytree of arrays); per step it
    asks ``calls(τ0, τ1, state)``, a ``(evaluations,)`` boolean array of the calls the step
    makes, then runs ``step(x, evaluate, τ0, τ1, dw, state) → (x', state')``. Inside ``step``
    the rule calls ``evaluate(i, y, s)`` once for each ``i < evaluations``: the level output
    at ``(y, s)`` — one level's, or under ML-EM a telescope ``Σ_j a_j uʲ`` with its own
    Bernoulli draws for each ``i`` — and zeros, computing nothing, when call ``i`` is not
    made. ``evaluations`` is a static int. Unbiasedness for the top level given the state
    holds when ``x'`` is affine in each output given the points at which they are evaluated
    (docs/solvers.md).
    """

    stochastic: bool
    evaluations: int

    def level_time(self, tau: Array) -> Array: ...

    def init(self, x0: Array, ts: Array) -> Any: ...

    def calls(self, tau0: Array, tau1: Array, state: Any) -> Array: ...

    def step(self, x: Array, evaluate: Evaluate, tau0: Array, tau1: Array, dw: Array | None,
             state: Any) -> tuple[Array, Any]: ...


def is_multistep(rule: UpdateRule | MultistepRule) -> bool:
    """Whether ``rule`` is a :class:`MultistepRule` (it has ``step``) or a one-call
    :class:`UpdateRule`."""
    return hasattr(rule, "step")


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


class _Previous(NamedTuple):
    """The state of :class:`DPMSolverPP2M`: the previous data prediction ``D_{n−1}``
    (combined), the previous step ``h_{n−1}`` in ``λ``, whether no step was taken yet, and the
    solve's last solver time ``τ_N``."""

    denoised: Array
    h: Array
    first: Array
    end: Array


@dataclasses.dataclass(frozen=True)
class DPMSolverPP2M:
    """DPM-Solver++(2M) (Lu et al. 2022; k-diffusion's ``sample_dpmpp_2m``/``_2m_sde``); levels ε̂.

    Multistep in ``λ = log(α/σ)``, data prediction ``D = (x − σ₀ε̂)/α₀``, ``h = λ₁ − λ₀``,
    ``r = h_{n−1}/h``::

        D̄ = D + (D − D_{n−1})/(2r)     (D̄ = D on the first step, and on the last when
                                        lower_order_final: DPM-Solver++(1) = DDIM)
        x' = (σ₁/σ₀) e^{−ηh} x − α₁ expm1(−(1 + η)h) D̄ + σ₁ sqrt(−expm1(−2ηh)) ξ

    ``eta = 0``: the ODE solver (``dpmpp2m``); ``eta = 1``: its SDE variant
    (``dpmpp2m-sde``), whose first-order step is DDPM's ancestral step and whose
    ``ξ = ΔW/sqrt(τ1 − τ0)`` is the coupled Brownian increment, as for :class:`Ancestral`.
    One call per step; the state carries ``D_{n−1}`` formed from the previous (combined)
    output, never re-evaluated. ``x'`` is affine in the current output given ``(x, D_{n−1})``.
    """

    sde: VPSDE
    eta: float = 0.0
    lower_order_final: bool = True
    evaluations = 1

    @property
    def stochastic(self) -> bool:
        return self.eta > 0

    def level_time(self, tau: Array) -> Array:
        return self.sde.data_time(tau)

    def init(self, x0: Array, ts: Array) -> _Previous:
        one = jnp.ones((), ts.dtype)  # any h_{-1} ≠ 0: unused on the first step
        return _Previous(jnp.zeros_like(x0), one, jnp.array(True), ts[-1])

    def calls(self, tau0: Array, tau1: Array, state: _Previous) -> Array:
        return jnp.ones((1,), bool)

    def step(self, x: Array, evaluate: Evaluate, tau0: Array, tau1: Array, dw: Array | None,
             state: _Previous) -> tuple[Array, _Previous]:
        sde = self.sde
        t0, t1 = sde.data_time(tau0), sde.data_time(tau1)
        a0, s0, a1, s1 = sde.alpha(t0), sde.sigma(t0), sde.alpha(t1), sde.sigma(t1)
        denoised = (x - s0 * evaluate(0, x, t0)) / a0
        h = (0.5 * (sde.log_snr(t1) - sde.log_snr(t0))).astype(state.h.dtype)
        second = ~state.first
        if self.lower_order_final:
            second = second & (tau1 < state.end)
        c = jnp.where(second, h / (2.0 * state.h), 0.0)  # 1/(2r)
        combined = denoised + c * (denoised - state.denoised)
        x = s1 / s0 * jnp.exp(-self.eta * h) * x - a1 * jnp.expm1(-(1.0 + self.eta) * h) * combined
        if self.stochastic:
            x = x + s1 * jnp.sqrt(-jnp.expm1(-2.0 * self.eta * h)) * dw / jnp.sqrt(tau1 - tau0)
        return x, _Previous(denoised, h, jnp.array(False), state.end)


@dataclasses.dataclass(frozen=True)
class Heun:
    """EDM's deterministic sampler (Karras et al. 2022, Alg. 1): Heun on ``σ̃ = σ/α``; levels ε̂.

    In ``x̃ = x/α`` the PF-ODE is ``dx̃/dσ̃ = ε̂``; its Euler step is DDIM
    (``a x + b ε̂``, :meth:`VPSDE.ddim_coefficients`), the predictor. The corrector calls the
    levels again at the predicted point and data time ``t1``::

        x̂ = a x + b ε̂(x, t0),   x' = a x + b (ε̂(x, t0) + ε̂(x̂, t1))/2

    Two calls per step; with ``final_euler`` (EDM's choice) the last step is the predictor
    alone, one call. Under ML-EM each call is its own telescope; ``x'`` is affine in each
    output, but the second is evaluated at ``x̂``, which depends on the first randomised
    output, so the step is not unbiased for the top level (docs/solvers.md). The state is
    the solve's last solver time ``τ_N``.
    """

    sde: VPSDE
    final_euler: bool = True
    stochastic = False
    evaluations = 2

    def level_time(self, tau: Array) -> Array:
        return self.sde.data_time(tau)

    def init(self, x0: Array, ts: Array) -> Array:
        return ts[-1]

    def calls(self, tau0: Array, tau1: Array, end: Array) -> Array:
        corrector = (tau1 < end) if self.final_euler else jnp.array(True)
        return jnp.stack([jnp.array(True), corrector])

    def step(self, x: Array, evaluate: Evaluate, tau0: Array, tau1: Array, dw: None,
             end: Array) -> tuple[Array, Array]:
        t0, t1 = self.sde.data_time(tau0), self.sde.data_time(tau1)
        a, b = self.sde.ddim_coefficients(t0, t1)
        first = evaluate(0, x, t0)
        predicted = a * x + b * first
        second = evaluate(1, predicted, t1)
        corrected = a * x + 0.5 * b * (first + second)
        return jnp.where(self.calls(tau0, tau1, end)[1], corrected, predicted), end


@dataclasses.dataclass(frozen=True)
class DriftHeun:
    """Heun's method on ``dX = f(X, τ) dτ + g(τ) dW`` with levels that are drifts ``f``::

        x̂ = x + h f(x, τ0) + g(τ0) ΔW,   x' = x + h (f(x, τ0) + f(x̂, τ1))/2 + g(τ0) ΔW

    the stochastic Heun scheme (weak order 2 for additive noise; for ``diffusion=None``, an
    ODE, Heun's second-order method). Two calls per step, both always made. Under ML-EM
    each call is its own telescope; as for :class:`Heun`, the corrector is evaluated at a
    point that depends on the first randomised output, so the step is not unbiased for the
    top level given the state (docs/solvers.md). The state is unused (``None``).
    """

    diffusion: Callable[[Array], Array] | None = None
    evaluations = 2

    @property
    def stochastic(self) -> bool:
        return self.diffusion is not None

    def level_time(self, tau: Array) -> Array:
        return tau

    def init(self, x0: Array, ts: Array) -> None:
        return None

    def calls(self, tau0: Array, tau1: Array, state: None) -> Array:
        return jnp.array([True, True])

    def step(self, x: Array, evaluate: Evaluate, tau0: Array, tau1: Array, dw: Array | None,
             state: None) -> tuple[Array, None]:
        h = tau1 - tau0
        noise = 0.0 if self.diffusion is None else self.diffusion(tau0) * dw
        first = evaluate(0, x, tau0)
        second = evaluate(1, x + h * first + noise, tau1)
        return x + 0.5 * h * (first + second) + noise, state


def check_solver(name: str) -> str:
    """``name`` if it names a solver, else a ``ValueError`` listing them."""
    if name not in SOLVERS:
        raise ValueError(f"solver: must be one of {', '.join(SOLVERS)}, got {name!r}")
    return name


def calls_per_step(rule: UpdateRule | MultistepRule, ts: Array) -> np.ndarray:
    """``(N,)`` level calls that each step of a solve on the grid ``ts`` makes: one for a
    one-call rule; a multistep rule's ``calls`` at its initial state (every rule here decides
    them from the grid alone, e.g. :class:`Heun`'s one-call last step). The weights of
    :func:`mlem.cost.expected_cost`."""
    ts = jnp.asarray(ts)
    if not is_multistep(rule):
        return np.ones(ts.shape[0] - 1, np.int64)
    state = rule.init(jnp.zeros((), ts.dtype), ts)
    made = jax.vmap(lambda t0, t1: rule.calls(t0, t1, state))(ts[:-1], ts[1:])
    return np.asarray(made, np.int64).reshape(ts.shape[0] - 1, -1).sum(1)


def for_vpsde(sde: VPSDE, solver: str, eps_fns: Sequence[EpsFn]
              ) -> tuple[list[Callable[[Array, Array], Array]], UpdateRule | MultistepRule]:
    """The levels and update rule of ``solver`` for ε-predictors ``eps_fns`` (cheapest first).

    ``sde``: reverse-SDE drifts and EM; ``ode``: PF-ODE drifts and Euler; ``ddim``,
    ``ancestral``, ``dpmpp2m``, ``dpmpp2m-sde`` and ``heun``: the ε-predictors themselves.
    """
    check_solver(solver)
    if solver == "sde":
        return [sde.drift_from_eps(e) for e in eps_fns], EulerMaruyama(sde.diffusion)
    if solver == "ode":
        return [sde.pf_ode_drift_from_eps(e) for e in eps_fns], Euler()
    rules = {"ddim": DDIM(sde), "ancestral": Ancestral(sde), "dpmpp2m": DPMSolverPP2M(sde),
             "dpmpp2m-sde": DPMSolverPP2M(sde, eta=1.0), "heun": Heun(sde)}
    return list(eps_fns), rules[solver]
