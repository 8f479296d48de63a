"""Learned time-dependent ML-EM probabilities ``p_k(τ)`` (docs/learning.md, docs/design.md §1).

**Parametrisation.** Logits ``θ`` of shape ``(bins, K − 1)`` on time bins of the solver time;
``p_k = p_min + (p_max − p_min)·sigmoid(θ_k)`` for levels ``2…K``, level 1 fixed at 1. Step
``n`` takes the bin of its left time ``τ_n`` (:func:`step_bins`, as
:func:`mlem.schedules.on_grid`).

**Objective** (the λ form): ``J(θ) = E_B[ℓ(X(θ, B))] + λ · E[cost](θ) / cost_scale``, where
``ℓ`` is a realisation's MSE to its reference and ``E[cost]`` the exact expected cost
(:func:`expected_cost`, differentiated by autodiff).

**Gradient of** ``E_B[ℓ]``: with ``P(B; θ) = Π p^B (1 − p)^{1−B}`` over steps and levels ``≥ 2``,

    ∇_θ E_B[ℓ] = E_B[ ∂_θ ℓ(X(θ, B)) |_B fixed ]  +  E_B[ (ℓ − b) ∇_θ log P(B; θ) ],

the pathwise term (the solve differentiated in ``probs`` at fixed draws, through the ``1/p``
weights) and the score-function term, ``∇_θ log P = Σ (B − p)/(p(1 − p)) ∂p/∂θ``. The
pathwise term is a forward-mode directional derivative (``jax.jvp`` through the scan, memory
flat in the step count) along random tangents ``v ~ N(0, I)``: ``(∇ℓ·v) v`` is unbiased for
``∇ℓ`` (or along every basis direction, exact, with ``num_tangents=0``). The baseline ``b`` of
a draw is the mean loss of the other draws of the same realisation (leave-one-out): it is
independent of the draw, so the estimator stays unbiased, and it removes the realisation's
own noise and path from the score term.

Pure JAX: arrays and callables in, arrays out; no I/O, configs or logging.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mlem import cost

__all__ = ["LOGIT_MAX", "P_MAX", "P_MIN", "SolveLoss", "draw_terms", "expected_cost", "grid_probs",
           "learn", "leave_one_out", "log_prob", "logits_from_probs", "loss_gradient",
           "objective_gradient", "probs_from_logits", "step_bins"]

Array = jax.Array
# solve_loss(probs (N, K), realisation, key) -> (loss scalar, draws (N, K)) for one draw key.
SolveLoss = Callable[[Array, Any, Array], tuple[Array, Array]]

# p stays strictly below 1: ML-EM skips level j when a_j = 1/p_j − 1/p_{j+1} = 0, which is the
# case when two drawn levels have *equal* probabilities (two saturated p = 1 in particular).
# The solve is then right but its pathwise derivative misses ∂a_j/∂p · fʲ, as fʲ was never
# evaluated. With p ≤ 1 − 1e-5 level 2 never ties with level 1 (p = 1); 1/p differs from 1 in
# float32 (eps 1.2e-7). Distinct logits give distinct p as long as sigmoid has not saturated,
# so logits are clipped to ±LOGIT_MAX (sigmoid(±12) is still strictly monotone in float32).
P_MAX = 1.0 - 1e-5
P_MIN = 1e-3
LOGIT_MAX = 12.0


# --- the parametrisation --------------------------------------------------------------------

def probs_from_logits(logits: Array, p_min: float = P_MIN, num_levels: int | None = None
                      ) -> Array:
    """``(bins, K)`` probabilities from ``(bins, L)`` logits of the top ``L`` levels; the
    ``K − L`` bottom levels (``K = num_levels``, default ``L + 1``) are exactly 1.

    Bottom levels fixed at 1 are free but the highest of them (their weights cancel,
    docs/design.md §1); fixing the levels that a schedule saturates keeps that saving, which
    ``p ≤ P_MAX`` would lose (every level near 1 would be evaluated at every step).
    """
    num_fixed = 1 if num_levels is None else num_levels - logits.shape[1]
    if num_fixed < 1:
        raise ValueError(f"logits: {logits.shape[1]} learned levels leave none fixed at 1 "
                         f"out of num_levels={num_levels}")
    s = jax.nn.sigmoid(jnp.clip(logits, -LOGIT_MAX, LOGIT_MAX))
    upper = p_min + (P_MAX - p_min) * s
    return jnp.concatenate([jnp.ones((upper.shape[0], num_fixed), upper.dtype), upper], axis=1)


def logits_from_probs(probs: Array, num_learned: int | None = None, p_min: float = P_MIN
                      ) -> np.ndarray:
    """Logits of the top ``num_learned`` (default ``K − 1``) levels of ``(bins, K)``
    probabilities, inverting :func:`probs_from_logits`. Probabilities are first clipped into
    ``[p_min, 1 − 1e-3]`` and level ``j`` lowered by ``0.01 j`` in logit: saturated levels
    start distinct, so they do not tie (see ``P_MAX``)."""
    probs = np.asarray(probs, np.float64)
    probs = probs[:, probs.shape[1] - (num_learned or probs.shape[1] - 1):]
    s = np.clip((probs - p_min) / (P_MAX - p_min), 1e-4, 1 - 1e-3)
    logits = np.log(s) - np.log1p(-s) - 0.01 * np.arange(probs.shape[1])
    return np.clip(logits, -LOGIT_MAX, LOGIT_MAX).astype(np.float32)


def step_bins(bin_edges: Sequence[float], ts: Sequence[float]) -> np.ndarray:
    """``(N,)`` bin index of each step of grid ``ts`` (the bin containing its left time)."""
    edges = np.asarray(bin_edges, np.float64)
    if edges.ndim != 1 or edges.size < 2 or not np.all(np.diff(edges) > 0):
        raise ValueError(f"bin_edges: need >= 2 increasing edges, got {edges}")
    index = np.searchsorted(edges, np.asarray(ts, np.float64)[:-1], side="right") - 1
    return np.clip(index, 0, edges.size - 2).astype(np.int32)


def grid_probs(logits: Array, bins: Array, p_min: float = P_MIN,
               num_levels: int | None = None) -> Array:
    """``(N, K)`` probabilities of each step: the probabilities of its bin."""
    return probs_from_logits(logits, p_min, num_levels)[bins]


# --- exact parts: expected cost and the draws' log-likelihood ----------------------------------

def expected_cost(probs: Array, costs: Array) -> Array:
    """Expected cost of a solve with ``(N, K)`` ``probs``: ``Σ_n Σ_j c_j P(a_{n,j} ≠ 0)``
    (:func:`mlem.cost.evaluation_probs`); differentiable in ``probs``."""
    return jnp.sum(cost.evaluation_probs(probs) @ jnp.asarray(costs, probs.dtype))


def log_prob(draws: Array, probs: Array) -> Array:
    """``log P(B; p) = Σ_{n, k ≥ 2} B log p + (1 − B) log(1 − p)`` of ``(N, K)`` draws."""
    p, b = probs[:, 1:], draws[:, 1:]
    return jnp.sum(jnp.where(b, jnp.log(p), jnp.log1p(-p)))


# --- the gradient estimator ---------------------------------------------------------------------

def _pathwise(f: Callable[[Array], tuple[Array, Array]], logits: Array, key: Array,
              num_tangents: int) -> tuple[Array, Array, Array]:
    """``(loss, draws, pathwise gradient estimate)`` of ``f(logits) -> (loss, draws)`` by
    forward mode: ``mean_t (∇ℓ·v_t) v_t`` over ``num_tangents`` Gaussian tangents, or the
    exact gradient along every basis direction when ``num_tangents == 0``."""
    if num_tangents == 0:
        tangents = jnp.eye(logits.size, dtype=logits.dtype).reshape(-1, *logits.shape)
    else:
        tangents = jax.random.normal(key, (num_tangents, *logits.shape), logits.dtype)
    jvp = lambda v: jax.jvp(f, (logits,), (v,), has_aux=True)
    loss, slopes, draws = jax.vmap(jvp, out_axes=(None, 0, None))(tangents)
    scale = 1.0 if num_tangents == 0 else 1.0 / num_tangents
    return loss, draws, scale * jnp.tensordot(slopes, tangents, axes=1)


def draw_terms(solve_loss: SolveLoss, logits: Array, bins: Array, realisations: Any,
               keys: Array, tangent_key: Array, *, p_min: float = P_MIN,
               num_levels: int | None = None, num_tangents: int = 1) -> dict[str, Array]:
    """Per draw: loss ``(R, M)``, pathwise gradient and score ``∇_θ log P(B)`` ``(R, M, *θ)``.

    ``realisations`` is a pytree with leading axis ``R`` (each realisation's initial state,
    noise and reference); ``keys`` ``(R, M)`` the draw keys, ``M`` draws per realisation.
    The draws run one after another (``lax.map``), never under ``vmap``, so the sampler's
    ``lax.cond`` still skips the levels a step does not need.
    """
    num_r, num_m = keys.shape

    def one(args):
        index, key, tkey = args  # realisation index // M, picked here: nothing is duplicated
        realisation = jax.tree_util.tree_map(lambda a: a[index], realisations)
        f = lambda th: solve_loss(grid_probs(th, bins, p_min, num_levels), realisation, key)
        loss, draws, path = _pathwise(f, logits, tkey, num_tangents)
        log_p = lambda th: log_prob(draws, grid_probs(th, bins, p_min, num_levels))
        score = jax.grad(log_p)(logits)
        return loss, path, score

    index = jnp.repeat(jnp.arange(num_r), num_m)
    tkeys = jax.random.split(tangent_key, num_r * num_m)
    loss, path, score = jax.lax.map(one, (index, keys.reshape(-1), tkeys))
    shape = (num_r, num_m)
    return {"loss": loss.reshape(shape), "pathwise": path.reshape(*shape, *logits.shape),
            "score": score.reshape(*shape, *logits.shape)}


def leave_one_out(loss: Array) -> Array:
    """``(R, M)`` baselines: each draw's mean over the other draws of its realisation."""
    num_m = loss.shape[1]
    if num_m < 2:
        raise ValueError(f"keys: need >= 2 draws per realisation for the leave-one-out "
                         f"baseline, got {num_m}")
    return (loss.sum(1, keepdims=True) - loss) / (num_m - 1)


def loss_gradient(terms: dict[str, Array], *, score: bool = True) -> Array:
    """Estimate of ``∇_θ E_B[ℓ]`` from :func:`draw_terms`: pathwise plus (unless
    ``score=False``, the biased negative control) the score term with the leave-one-out
    baseline; averaged over all draws."""
    grad = terms["pathwise"].mean((0, 1))
    if score:
        weight = terms["loss"] - leave_one_out(terms["loss"])
        grad = grad + jnp.tensordot(weight, terms["score"], axes=2) / weight.size
    return grad


def objective_gradient(solve_loss: SolveLoss, logits: Array, bins: Array, costs: Array,
                       lam: float, cost_scale: float, realisations: Any, keys: Array,
                       tangent_key: Array, *, p_min: float = P_MIN,
                       num_levels: int | None = None, num_tangents: int = 1
                       ) -> tuple[Array, dict[str, Array]]:
    """Estimate of ``∇_θ J`` for ``J = E[ℓ] + λ E[cost]/cost_scale``, and its parts
    (``loss``: mean over draws, ``cost``: exact expected cost, ``objective``)."""
    terms = draw_terms(solve_loss, logits, bins, realisations, keys, tangent_key, p_min=p_min,
                       num_levels=num_levels, num_tangents=num_tangents)
    cost_of = lambda th: expected_cost(grid_probs(th, bins, p_min, num_levels), costs)
    exp_cost, cost_grad = jax.value_and_grad(cost_of)(logits)
    grad = loss_gradient(terms) + (lam / cost_scale) * cost_grad
    loss = terms["loss"].mean()
    return grad, {"loss": loss, "cost": exp_cost,
                  "objective": loss + lam * exp_cost / cost_scale}


# --- stochastic gradient descent -----------------------------------------------------------------

def learn(solve_loss: SolveLoss, logits: Array, bins: Array, costs: Array, lam: float,
          cost_scale: float, batches: Callable[[int], tuple[Any, Array]], *, steps: int,
          learning_rate: float = 0.05, key: Array, p_min: float = P_MIN,
          num_levels: int | None = None, num_tangents: int = 1,
          optimizer: optax.GradientTransformation | None = None, context: Any = None
          ) -> tuple[Array, list[dict[str, float]]]:
    """Adam on ``θ`` for ``steps`` steps; ``batches(step) -> (realisations, keys (R, M))``
    gives each step's training realisations and draw keys. Returns the final logits and a
    trace (objective, loss, expected cost per step, as estimated on that step's batch).

    ``context`` (e.g. network parameters), when given, is passed to the jitted step as an
    argument (large arrays compile faster so than as constants) and on to
    ``solve_loss(probs, realisation, key, context)``.
    """
    opt = optimizer or optax.adam(learning_rate)
    bins, costs = jnp.asarray(bins), jnp.asarray(costs, jnp.float32)

    @jax.jit
    def step(logits, state, realisations, keys, tangent_key, context):
        fn = solve_loss if context is None else (
            lambda p, r, k: solve_loss(p, r, k, context))
        grad, info = objective_gradient(fn, logits, bins, costs, lam, cost_scale,
                                        realisations, keys, tangent_key, p_min=p_min,
                                        num_levels=num_levels, num_tangents=num_tangents)
        updates, state = opt.update(grad, state, logits)
        return optax.apply_updates(logits, updates), state, info

    logits = jnp.asarray(logits, jnp.float32)
    state, trace = opt.init(logits), []
    for i in range(steps):
        realisations, keys = batches(i)
        logits, state, info = step(logits, state, realisations, keys, jax.random.fold_in(key, i),
                                   context)
        trace.append({k: float(v) for k, v in info.items()})
    return logits, trace
