"""Synthetic SDEs with an exactly known drift and a controllable-γ drift ladder (docs/design.md §1).

The SDE lives on ``R^d`` in solver time ``τ ∈ [0, 1]`` with constant additive noise::

    dX = f*(X) dτ + g dW,    f*(x) = −x + Σ_m a_m v_m cos(ω_m·x + b_m),    X_0 ~ N(0, I)

a dissipative linear part plus bounded random Fourier features. Two ladders ``f¹ … fᴷ``
approximate ``f*`` with error ``δ_k ≈ δ_1 2^{-(k-1)}`` at a cost that grows by ``2^γ`` a level:

* :func:`fourier_hierarchy` — **real compute**. Coefficients ``a_m ≈ A m^{-(1/2 + 1/γ)}`` (exactly:
  ``a_m² = A²(m^{-2/γ} − (m+1)^{-2/γ})``), so the tail after ``M`` features has
  ``Σ_{m>M} a_m² = A²(M+1)^{-2/γ}``; level ``k`` keeps the first
  ``M_k = M_1 2^{γ(k-1)}`` features, so ``δ_k ∝ M_k^{-1/γ} ∝ 2^{-k}`` and its FLOPs (and
  wall-clock) grow like ``M_k``. The exact drift is the truncation at
  ``M_∞ = exact_factor · M_K`` (the infinite series has no closed form).
* :func:`dyadic_hierarchy` — **declared cost**. ``fᵏ = f* + 2^{-k} e`` with one fixed smooth
  random perturbation ``e`` (by default), so ``δ_k ∝ 2^{-k}`` and ``V_k = E‖fᵏ − fᵏ⁻¹‖² =
  4^{-k} E‖e‖²`` hold exactly for every distribution of states; every level costs the same to
  evaluate here, and its declared cost is ``c_k = 2^{γk}``. Cheap, so the exponent study can
  use many levels.

:func:`level_errors` and :func:`level_variances` measure ``δ_k`` and ``V_k`` of a ladder;
:func:`mlem.eval.fits.fit_gamma` recovers γ from them (``log δ_k`` against ``log c_k`` has slope
``−1/γ``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mlem import cost

__all__ = ["DriftFn", "Hierarchy", "dyadic_hierarchy", "fourier_features", "fourier_flops",
           "fourier_hierarchy", "level_errors", "level_variances", "xla_costs"]

Array = jax.Array
DriftFn = Callable[[Array, Array], Array]
Params = dict[str, Array]


def fourier_features(params: Params, x: Array, tau: Array | None = None) -> Array:
    """The drift ``−x + cos(x Ω + b) A`` for ``x (B, d)``, ``Ω (d, M)``, ``b (M,)``, ``A (M, d)``.

    Autonomous: ``tau`` is accepted for the drift signature ``f(x, τ)`` and ignored. Optional
    ``params["perturbation"]`` (a nested params dict scaled by ``params["scale"]``) adds
    ``scale · cos(x Ω' + b') A'`` — the ``2^{-k} e_k`` of the dyadic ladder.
    """
    out = -x + jnp.cos(x @ params["omega"] + params["phase"]) @ params["amp"]
    if "perturbation" in params:
        e = params["perturbation"]
        out = out + params["scale"] * (jnp.cos(x @ e["omega"] + e["phase"]) @ e["amp"])
    return out


def fourier_flops(dim: int, num_features: int) -> int:
    """FLOPs per sample of :func:`fourier_features` without perturbation, counted by hand.

    ``x Ω`` and ``· A``: ``2dM`` each; ``+ b`` and ``cos``: ``M`` each (a cosine counted as
    one FLOP); ``−x +``: ``2d``.
    """
    return 4 * dim * num_features + 2 * num_features + 2 * dim


@dataclasses.dataclass(frozen=True, eq=False)
class Hierarchy:
    """A drift ladder ``f¹ … fᴷ`` (cheapest first) for ``dX = f*(X) dτ + g dW`` on ``R^dim``.

    Attributes:
      name: ``"fourier"`` or ``"dyadic"``.
      gamma: the target exponent (cost ∝ accuracy^{-γ}).
      dim: state dimension ``d``.
      level_params: ``K`` parameter pytrees; level ``k`` is ``drift_fn(level_params[k], x, τ)``.
      exact_params: parameters of the exact drift ``f*``.
      costs: ``(K,)`` declared FLOPs per sample of one evaluation of each level.
      noise: the constant diffusion ``g``.
      x0_std: ``X_0 ~ N(0, x0_std² I)``.
      drift_fn: ``(params, x, τ) -> f(x, τ)``, ``x`` ``(B, d)``.

    ``drifts``, ``exact_drift`` and ``diffusion`` are built once, so ``jit`` caches that key on
    them (the samplers take them as static arguments) hit on every call. Inside a ``jit`` that
    takes the parameters as arguments, use :meth:`drifts_from` instead (large arrays as
    arguments compile far faster than as closure constants).
    """

    name: str
    gamma: float
    dim: int
    level_params: tuple[Params, ...]
    exact_params: Params
    costs: np.ndarray
    noise: float = 1.0
    x0_std: float = 1.0
    drift_fn: Callable[..., Array] = fourier_features
    drifts: tuple[DriftFn, ...] = dataclasses.field(init=False, repr=False)
    exact_drift: DriftFn = dataclasses.field(init=False, repr=False)
    diffusion: Callable[[Array], Array] = dataclasses.field(init=False, repr=False)

    def __post_init__(self):
        if len(self.level_params) != len(self.costs):
            raise ValueError(f"costs: need one per level ({len(self.level_params)}), "
                             f"got {len(self.costs)}")
        drifts = tuple(functools.partial(self.drift_fn, p) for p in self.level_params)
        object.__setattr__(self, "drifts", drifts)
        object.__setattr__(self, "exact_drift", functools.partial(self.drift_fn, self.exact_params))
        object.__setattr__(self, "diffusion", functools.partial(_constant, self.noise))

    @property
    def num_levels(self) -> int:
        return len(self.level_params)

    def drifts_from(self, level_params: Sequence[Params]) -> list[DriftFn]:
        """Level drifts closing over (possibly traced) ``level_params``."""
        return [functools.partial(self.drift_fn, p) for p in level_params]

    def sample_x0(self, key: Array, batch_size: int) -> Array:
        """``(batch_size, dim)`` draws of ``X_0 ~ N(0, x0_std² I)``."""
        return self.x0_std * jax.random.normal(key, (batch_size, self.dim))


def _constant(value: float, tau: Array) -> Array:
    return jnp.asarray(value, jnp.float32)


def _random_features(key: Array, dim: int, num: int, freq: float) -> tuple[Array, Array, Array]:
    """``Ω`` ``(d, M)`` with ``N(0, freq²/d)`` entries, ``U[0, 2π)`` phases, unit rows ``(M, d)``.
    """
    k_omega, k_phase, k_dir = jax.random.split(key, 3)
    omega = freq / np.sqrt(dim) * jax.random.normal(k_omega, (dim, num))
    phase = jax.random.uniform(k_phase, (num,), maxval=2 * np.pi)
    directions = jax.random.normal(k_dir, (num, dim))
    directions = directions / jnp.linalg.norm(directions, axis=1, keepdims=True)
    return omega, phase, directions


def _power_law_params(key: Array, dim: int, num: int, gamma: float, amplitude: float,
                      freq: float) -> Params:
    """Fourier drift with ``a_m² = amplitude² (m^{-2/γ} − (m+1)^{-2/γ}) ≈ (2/γ) m^{-1-2/γ}``.

    The squares telescope, so the tail after ``M`` features is exactly
    ``Σ_{m>M} a_m² = amplitude² (M+1)^{-2/γ}`` (minus the part beyond ``num``).
    """
    omega, phase, directions = _random_features(key, dim, num, freq)
    m = np.arange(1, num + 1, dtype=np.float64)
    a = amplitude * np.sqrt(m ** (-2.0 / gamma) - (m + 1) ** (-2.0 / gamma))
    amp = jnp.asarray(a, jnp.float32)[:, None] * directions
    return {"omega": omega, "phase": phase, "amp": amp}


def _truncate(params: Params, num: int) -> Params:
    return {"omega": params["omega"][:, :num], "phase": params["phase"][:num],
            "amp": params["amp"][:num]}


def fourier_hierarchy(
    gamma: float = 3.0, num_levels: int = 4, dim: int = 16, base_features: int = 8, *,
    exact_factor: int = 64, amplitude: float = 0.5, freq: float = 2.0, noise: float = 1.0,
    seed: int = 0,
) -> Hierarchy:
    """The real-compute ladder: level ``k`` is the first ``M_k = round(M_1 2^{γ(k-1)})`` features.

    Args:
      gamma: target exponent; ``δ_k ∝ M_k^{-1/γ}`` and cost ``∝ M_k``.
      num_levels: ``K``.
      dim: ``d``.
      base_features: ``M_1``.
      exact_factor: ``f*`` keeps ``M_∞ = exact_factor · M_K`` features.
      amplitude, freq: ``a_1`` and the RMS frequency ``|ω|``.
      noise: the diffusion ``g``.
      seed: fixes every random feature.

    Costs are :func:`fourier_flops` of each level (hand count; see :func:`xla_costs`).
    """
    _check_ladder(gamma, num_levels, dim)
    if base_features < 1 or exact_factor < 2:
        raise ValueError(f"base_features, exact_factor: need >= 1 and >= 2, got "
                         f"{base_features}, {exact_factor}")
    sizes = [int(round(base_features * 2.0 ** (gamma * k))) for k in range(num_levels)]
    full = _power_law_params(jax.random.key(seed), dim, exact_factor * sizes[-1], gamma,
                             amplitude, freq)
    costs = np.array([fourier_flops(dim, m) for m in sizes], np.float64)
    return Hierarchy("fourier", gamma, dim, tuple(_truncate(full, m) for m in sizes), full,
                     costs, noise)


def dyadic_hierarchy(
    gamma: float = 3.0, num_levels: int = 13, dim: int = 4, *, num_features: int = 16,
    perturbation_features: int = 8, perturbation_rms: float = 8.0,
    perturbation_freq: float = 0.5, level_correlation: float = 1.0, amplitude: float = 0.5,
    freq: float = 1.0, noise: float = 1.0, seed: int = 0,
) -> Hierarchy:
    """The declared-cost ladder ``fᵏ = f* + 2^{-k} e_k``, ``c_k = 2^{γk}``.

    ``f*`` has ``num_features`` power-law Fourier features. Each ``e_k = ρ u_0 + sqrt(1 − ρ²) u_k``
    (``ρ = level_correlation``) mixes a shared and an own random-feature field
    ``u = cos(x Ω + b) A`` (frequency ``perturbation_freq``), rescaled so that
    ``sqrt(E‖e_k(X)‖²/d) = perturbation_rms`` for ``X ~ N(0, I)`` (estimated on a fixed sample).
    Every level thus has the same error size, ``δ_{k+1}/δ_k = 1/2``, and
    ``V_k ≈ 4^{-k} (ρ² + 5(1 − ρ²)) perturbation_rms² d``.

    The default ``ρ = 1`` (one shared field ``e``) makes both laws exact, pointwise in ``x``.
    With ``ρ < 1`` they hold only on average over the random fields: for a given seed the cross
    terms ``<e_k, e_{k−1}>`` make ``4^k V_k`` wander (by 2.4× over levels 9–14 at ``ρ = 0.9``,
    seed 0), which shifts the ML-EM cost exponent (``β < 2`` in ``2 + (γ − β)``).
    """
    _check_ladder(gamma, num_levels, dim)
    if not 0 <= level_correlation <= 1:
        raise ValueError(f"level_correlation: must lie in [0, 1], got {level_correlation}")
    key_exact, key_levels, key_norm = jax.random.split(jax.random.key(seed), 3)
    exact = _power_law_params(key_exact, dim, num_features, gamma, amplitude, freq)
    probe = jax.random.normal(key_norm, (4096, dim))
    fields = [_random_features(key, dim, perturbation_features, perturbation_freq)
              for key in jax.random.split(key_levels, num_levels + 1)]
    rho, rest = level_correlation, np.sqrt(1.0 - level_correlation**2)
    levels = []
    for k in range(1, num_levels + 1):
        parts = [(w, f) for w, f in ((rho, fields[0]), (rest, fields[k])) if w > 0]
        e = {"omega": jnp.concatenate([f[0] for _, f in parts], 1),
             "phase": jnp.concatenate([f[1] for _, f in parts]),
             "amp": jnp.concatenate([w * f[2] for w, f in parts])}
        rms = jnp.sqrt(jnp.mean((jnp.cos(probe @ e["omega"] + e["phase"]) @ e["amp"]) ** 2))
        e["amp"] = e["amp"] * (perturbation_rms / rms)
        levels.append({**exact, "perturbation": e, "scale": jnp.float32(2.0**-k)})
    costs = 2.0 ** (gamma * np.arange(1, num_levels + 1))
    return Hierarchy("dyadic", gamma, dim, tuple(levels), exact, costs, noise)


def _check_ladder(gamma: float, num_levels: int, dim: int) -> None:
    if not gamma > 0 or num_levels < 2 or dim < 1:
        raise ValueError(f"gamma, num_levels, dim: need gamma > 0, K >= 2 and d >= 1; got "
                         f"{gamma}, {num_levels}, {dim}")


def level_errors(hierarchy: Hierarchy, xs: Array, *, chunk: int = 256) -> np.ndarray:
    """``(K,)`` drift errors ``δ_k = sqrt(E‖fᵏ(X) − f*(X)‖²)`` over the points ``xs`` ``(n, d)``."""
    values = _evaluate(hierarchy, xs, chunk)  # (K + 1, n, d), the exact drift last
    return np.sqrt(np.mean(np.sum((values[:-1] - values[-1]) ** 2, axis=2), axis=1))


def level_variances(hierarchy: Hierarchy, xs: Array, *, chunk: int = 256) -> np.ndarray:
    """``(K,)`` increment variances ``V_k = E‖fᵏ(X) − fᵏ⁻¹(X)‖²`` (``f⁰ = 0``) over ``xs``."""
    values = _evaluate(hierarchy, xs, chunk)[:-1]
    increments = np.diff(values, axis=0, prepend=np.zeros_like(values[:1]))
    return np.mean(np.sum(increments**2, axis=2), axis=1)


@functools.partial(jax.jit, static_argnames=("drift_fn",))
def _evaluate_chunk(drift_fn, params, x):
    return jnp.stack([drift_fn(p, x, 0.0) for p in params])


def _evaluate(hierarchy: Hierarchy, xs: Array, chunk: int) -> np.ndarray:
    """``(K + 1, n, d)``: every level, then the exact drift, at ``xs`` (parameters as arguments)."""
    params = [*hierarchy.level_params, hierarchy.exact_params]
    chunk = max(1, min(chunk, (1 << 23) // hierarchy.exact_params["omega"].shape[1]))  # ≤ 32 MB
    return np.concatenate([np.asarray(_evaluate_chunk(hierarchy.drift_fn, params, xs[i:i + chunk]))
                           for i in range(0, xs.shape[0], chunk)], axis=1)


def xla_costs(hierarchy: Hierarchy, batch_size: int) -> np.ndarray:
    """``(K,)`` FLOPs per sample of each level from XLA's cost analysis at ``batch_size``."""
    x = jnp.zeros((batch_size, hierarchy.dim))
    return np.array([cost.flops_per_sample(hierarchy.drift_fn, p, x, 0.0, batch_size=batch_size)
                     for p in hierarchy.level_params])
