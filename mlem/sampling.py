"""Euler–Maruyama and multilevel Euler–Maruyama (ML-EM) solvers (docs/design.md §1, §5).

ML-EM step, with independent ``B_k ~ Bernoulli(p_k)`` shared across the batch and ``B_1 = 1``::

    X_{n+1} = X_n + η_n Σ_k (B_k / p_k)(fᵏ − fᵏ⁻¹)(X_n, τ_n) + g(τ_n) ΔW_n,   f⁰ = 0.

Written per level, the drift term is ``Σ_j a_j fʲ`` with ``a_j = w_j − w_{j+1}``,
``w_k = B_k / p_k`` and ``w_{K+1} = 0``: level ``j`` is evaluated iff ``a_j ≠ 0``, once,
inside a ``lax.cond``, so a level the step does not need costs nothing. That is
``B_j ∨ B_{j+1}`` except when both are drawn with equal probabilities (``p_j = p_{j+1} = 1``
in particular), where the two uses of ``fʲ`` cancel. The Poisson limit
(:func:`poisson_multilevel_euler_maruyama`) is the same step with ``w_k = M_k / (λ_k η)``,
``M_k ~ Poisson(λ_k η)``.

The Brownian increments come from one of three sources, all coupled across nested grids
(:mod:`mlem.brownian`): ``increments=`` (an explicit ``(N, *x0.shape)`` array), ``path=`` (a
:class:`~mlem.brownian.SamplePaths` or :class:`~mlem.brownian.BatchPath` queried inside the
scan: memory independent of ``N``) or, by default, the batch path of ``split(key)[0]`` on
``ts``, also drawn inside the scan. ``key`` is split once into that Brownian key and a
Bernoulli key, so the same key gives the same draws whatever the source of the increments.
ML-EM may instead be given its draws, a fixed ``(N, K)`` evaluation pattern (``draws=``,
docs/patterns.md): the same scan, with weights ``B/p`` from those ``B``.

The step itself is an *update rule* (:mod:`mlem.solvers`) fed the combined level output
``Σ_j a_j uʲ``: EM on the reverse SDE (the functions above, whose levels are drifts), Euler on
the probability-flow ODE, DDIM and DDPM ancestral sampling (levels ε̂). Every such rule is
affine in ``u``, so the one multilevel scan is unbiased for the top level with any of them
(:func:`multilevel_solve`, :func:`solve`, :func:`switching_solve`; docs/solvers.md).
A *multistep rule* (DPM-Solver++(2M), Heun) carries a state in the scan and asks for its
outputs through ``evaluate(i, y, s)``: every call is a telescope with its own draws and the
same skipping, so the estimator replaces the level output at every call.

The solvers are pure: arrays and callables in, arrays out.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from mlem import brownian
from mlem.solvers import EulerMaruyama, MultistepRule, UpdateRule, is_multistep

__all__ = ["Diffusion", "Drift", "Level", "Path", "check_draws", "check_probs", "check_rates",
           "check_ts", "euler_maruyama", "level_coefficients", "multilevel_euler_maruyama",
           "multilevel_solve", "poisson_multilevel_euler_maruyama", "solve",
           "switching_euler_maruyama", "switching_solve"]

Array = jax.Array
Drift = Callable[[Array, Array], Array]
Level = Callable[[Array, Array], Array]  # a drift f(x, τ) or an ε-predictor ε̂(x, t)
Diffusion = Callable[[Array], Array]
Path = brownian.Path  # BatchPath, SamplePaths, or any object with ts and step (a protocol)


def euler_maruyama(
    drift: Drift, diffusion: Diffusion, x0: Array, ts: Array, key: Array | None, *,
    increments: Array | None = None, path: Path | None = None, cost: float | None = None,
) -> tuple[Array, dict[str, Array]]:
    """EM: ``X_{n+1} = X_n + η_n f(X_n, τ_n) + g(τ_n) ΔW_n``.

    Args:
      drift: ``f(x, τ)``, batch-first ``x``, scalar ``τ``.
      diffusion: ``g(τ)``, a scalar.
      x0: ``(B, ...)`` initial state.
      ts: ``(N + 1,)`` increasing solver times.
      key: ``jax.random.key``; drives the Brownian path unless ``increments`` or ``path`` is
        given (then it may be ``None``).
      increments: optional ``(N, *x0.shape)`` Brownian increments (for coupling).
      path: optional :class:`~mlem.brownian.SamplePaths` or :class:`~mlem.brownian.BatchPath`
        whose fine grid has ``ts`` as a nested grid; increments are drawn inside the scan.
      cost: optional cost of one evaluation per sample; adds ``stats["cost_flops"]``.

    Returns:
      ``x_N`` of shape ``x0.shape`` and ``stats`` with ``evals`` of shape ``(1,)``.
    """
    return solve(drift, EulerMaruyama(diffusion), x0, ts, key, increments=increments,
                 path=path, cost=cost)


def solve(
    level: Level, update: UpdateRule | MultistepRule, x0: Array, ts: Array, key: Array | None, *,
    increments: Array | None = None, path: Path | None = None, cost: float | None = None,
) -> tuple[Array, dict[str, Array]]:
    """One level with any update rule: ``X_{n+1} = update(X_n, u(X_n, ·), τ_n, τ_{n+1}, ΔW_n)``.

    Args:
      level: ``u(x, s)`` called at ``s = update.level_time(τ_n)`` (a drift for EM and Euler,
        an ε-predictor for DDIM and ancestral; :func:`mlem.solvers.for_vpsde`).
      update: an update rule of :mod:`mlem.solvers` (a multistep rule calls ``level`` where and
        as often as its ``step`` asks).
      x0, ts, key, increments, path, cost: as in :func:`euler_maruyama`; a deterministic rule
        (``update.stochastic`` false) draws no increments and ignores ``increments``/``path``.

    Returns:
      ``x_N`` and ``stats`` with ``evals`` of shape ``(1,)``: the calls of ``level`` made
      (``N`` for a one-call rule).
    """
    ts = check_ts(ts)
    x, made = _em_scan(level, update, x0, ts, _noise(key, ts, x0, increments, path, update))
    stats = {"evals": made.sum(dtype=jnp.int32).reshape(1)}
    return x, _with_cost(stats, None if cost is None else [cost])


def multilevel_euler_maruyama(
    drifts: Sequence[Drift], probs: Array, diffusion: Diffusion, x0: Array, ts: Array,
    key: Array | None, *, increments: Array | None = None, path: Path | None = None,
    costs: Sequence[float] | None = None, draws: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """ML-EM with the drift hierarchy ``drifts`` (cheapest first; the last is the target).

    Args:
      drifts: ``K`` callables ``fᵏ(x, τ)``, batch-first ``x``, scalar ``τ``.
      probs: ``(K,)`` or ``(N, K)`` probabilities in (0, 1]; column 0 is forced to 1.
        May be traced (under ``jit`` or when learning the probabilities).
      diffusion, x0, ts, key, increments, path: as in :func:`euler_maruyama`; ``key`` also
        drives the Bernoulli draws (one draw per level and step, shared by the batch).
      costs: optional ``K`` per-sample costs of one evaluation; adds ``stats["cost_flops"]``.
      draws: optional ``(N, K)`` boolean Bernoulli outcomes ``B`` to use instead of drawing
        them (a fixed evaluation pattern, docs/patterns.md); column 0 is forced true. The
        weights are then ``B / p`` with these ``B``, and ``key`` drives only the Brownian path
        (it may be ``None`` when ``increments`` or ``path`` is given). Given the draws that a
        key produces (``stats["draws"]``), the solve with that key is reproduced exactly.

    Returns:
      ``x_N`` and ``stats`` with ``evals`` ``(K,)`` (evaluations made per level: steps with
      ``a_j ≠ 0``) and ``draws`` ``(N, K)`` (the Bernoulli draws ``B``, column 0 all true).

    A level skipped because ``a_j = 0`` contributes nothing to the solve, nor to its
    pathwise derivative in ``probs`` at that step (``∂a_j/∂p`` times an unevaluated ``fʲ``).
    """
    return multilevel_solve(drifts, probs, EulerMaruyama(diffusion), x0, ts, key,
                            increments=increments, path=path, costs=costs, draws=draws)


def multilevel_solve(
    levels: Sequence[Level], probs: Array, update: UpdateRule | MultistepRule, x0: Array, ts: Array,
    key: Array | None, *, increments: Array | None = None, path: Path | None = None,
    costs: Sequence[float] | None = None, draws: Array | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The multilevel estimator for any update rule that is affine in the level output.

    Step ``n`` feeds ``update`` the randomised telescope ``Σ_k (B_k/p_k)(uᵏ − uᵏ⁻¹) =
    Σ_j a_j uʲ`` of the levels at ``update.level_time(τ_n)`` in place of ``uᴷ``; given
    ``X_n`` its mean is ``uᴷ``, so an affine step is unbiased for the top level's. Draws,
    skipping (level ``j`` evaluated iff ``a_j ≠ 0``) and statistics are those of
    :func:`multilevel_euler_maruyama`, which is this function with
    ``update = EulerMaruyama(diffusion)``.

    A multistep rule (:class:`mlem.solvers.MultistepRule`) gets the telescope at every call
    it makes (``evaluate(i, y, s)``), each call ``i`` with its own draws (from
    ``fold_in(fold_in(key_draws, n), i)`` for ``i ≥ 1``; call 0 draws as a one-call rule does)
    and the same probabilities ``probs[n]``, and the same skipping; a call the rule does not
    make (``calls``) computes no level.

    Args:
      levels: ``K`` callables ``uᵏ(x, s)``, cheapest first (drifts or ε-predictors).
      update: an update rule of :mod:`mlem.solvers`.
      probs, x0, ts, key, increments, path, costs, draws: as in
        :func:`multilevel_euler_maruyama`; a deterministic rule ignores ``increments``/``path``.
        For a rule with ``E = update.evaluations > 1`` calls per step, ``draws`` is
        ``(N, E, K)``.

    Returns:
      ``x_N`` and ``stats`` with ``evals`` ``(K,)`` (evaluations made per level, all calls
      counted) and ``draws`` ``(N, K)`` (``(N, E, K)`` when ``E > 1``), as in
      :func:`multilevel_euler_maruyama`.
    """
    if draws is None:
        return _multilevel(levels, probs, check_probs, _bernoulli_weights, update, x0, ts,
                           key, increments, path, costs)
    calls = _evaluations(update)
    check = lambda p, k, n: (check_probs(p, k, n), check_draws(draws, k, n, calls))
    return _multilevel(levels, probs, check, _fixed_weights, update, x0, ts, key,
                       increments, path, costs)


def poisson_multilevel_euler_maruyama(
    drifts: Sequence[Drift], rates: Array, diffusion: Diffusion, x0: Array, ts: Array,
    key: Array, *, increments: Array | None = None, path: Path | None = None,
    costs: Sequence[float] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """The Poisson limit of ML-EM: level ``k ≥ 2`` corrects at the events of a Poisson process.

    ML-EM with ``p_k = η λ_k`` becomes, as ``η → 0``, a process in which the correction
    ``(fᵏ − fᵏ⁻¹)/λ_k`` arrives at the events of a Poisson process of rate ``λ_k(τ)``. Here
    each step draws the number of events ``M_{n,k} ~ Poisson(λ_{n,k} η_n)`` (shared by the
    batch) and uses the weights ``w_1 = 1``, ``w_k = M_{n,k} / (λ_{n,k} η_n)``: unbiased for
    ``fᴷ`` given ``X_n``, whatever the step. Level ``k`` then runs on about ``∫ λ_k dτ``
    steps in expectation, a cost that does not grow with the number of steps.

    Args:
      rates: ``(K,)`` or ``(N, K)`` event rates ``λ_k(τ) > 0`` per unit solver time; column 0
        (the base level, evaluated on every step) is ignored.
      drifts, diffusion, x0, ts, key, increments, path, costs: as in
        :func:`multilevel_euler_maruyama`.

    Returns:
      ``x_N`` and ``stats`` with ``evals`` ``(K,)`` and ``draws`` ``(N, K)``: the event counts.
    """
    return _multilevel(drifts, rates, check_rates, _poisson_weights, EulerMaruyama(diffusion),
                       x0, ts, key, increments, path, costs)


def _multilevel(drifts, params, check, sample_weights, update, x0, ts, key, increments, path,
                costs):
    """Validate, then run :func:`_mlem_scan` with ``sample_weights``; ``params`` are the
    probabilities or rates (checked by ``check``), or the pair (probabilities, fixed draws).
    The draws use ``split(key)[1]``."""
    drifts = tuple(drifts)
    if not drifts:
        raise ValueError("drifts: need at least one drift level")
    ts = check_ts(ts)
    params = check(params, len(drifts), ts.shape[0] - 1)
    noise = _noise(key, ts, x0, increments, path, update)
    if key is None and sample_weights is not _fixed_weights:
        raise ValueError("key: needed for the level draws (give a key, or fixed draws=)")
    # Fixed draws (_fixed_weights) ignore the draw key; any key then stands in for it.
    draw_key = jax.random.split(key)[1] if key is not None else jax.random.key(0)
    x, draws, needed = _mlem_scan(drifts, update, x0, ts, params, draw_key, noise,
                                  sample_weights)
    evals = needed.reshape(-1, needed.shape[-1]).sum(0, dtype=jnp.int32)
    stats = {"evals": evals, "draws": draws}
    return x, _with_cost(stats, costs)


def switching_euler_maruyama(
    drifts: Sequence[Drift], levels: Array, diffusion: Diffusion, x0: Array, ts: Array,
    key: Array | None, *, increments: Array | None = None, path: Path | None = None,
    costs: Sequence[float] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """EM whose drift switches between levels over time: step ``n`` uses ``f^{levels[n]}``.

    The baseline a user would pick instead of ML-EM ("the small network at high noise, the
    large one near the data"): deterministic, biased for the top level, no randomisation.
    Only the chosen level is computed at each step (``lax.switch``).

    Args:
      levels: ``(N,)`` integer levels ``1…K`` (may be traced).
      drifts, diffusion, x0, ts, key, increments, path, costs: as in :func:`euler_maruyama`
        and :func:`multilevel_euler_maruyama`.

    Returns:
      ``x_N`` and ``stats`` with ``evals`` ``(K,)``: steps spent at each level.
    """
    return switching_solve(drifts, levels, EulerMaruyama(diffusion), x0, ts, key,
                           increments=increments, path=path, costs=costs)


def switching_solve(
    level_fns: Sequence[Level], levels: Array, update: UpdateRule | MultistepRule,
    x0: Array, ts: Array,
    key: Array | None, *, increments: Array | None = None, path: Path | None = None,
    costs: Sequence[float] | None = None,
) -> tuple[Array, dict[str, Array]]:
    """:func:`switching_euler_maruyama` with any update rule (levels as in :func:`solve`)."""
    drifts = tuple(level_fns)
    ts = check_ts(ts)
    levels = jnp.asarray(levels)
    if levels.shape != (ts.shape[0] - 1,):
        raise ValueError(f"levels: expected shape ({ts.shape[0] - 1},), one level per step, "
                         f"got {levels.shape}")
    if not isinstance(levels, jax.core.Tracer) and not np.all(
            (np.asarray(levels) >= 1) & (np.asarray(levels) <= len(drifts))):
        raise ValueError(f"levels: every level must lie in 1..{len(drifts)}")
    noise = _noise(key, ts, x0, increments, path, update)
    index = levels.astype(jnp.int32) - 1
    x, made = _switch_scan(drifts, update, x0, ts, index, noise)
    evals = jnp.zeros(len(drifts), jnp.int32).at[index].add(made.sum(1, dtype=jnp.int32))
    return x, _with_cost({"evals": evals}, costs)


def _increment(noise, update, n: Array, num_steps: int, like: Array) -> Array | None:
    """``ΔW_n`` for a stochastic rule, ``None`` for a deterministic one."""
    return noise.step(n, num_steps, like) if update.stochastic else None


def _evaluations(update) -> int:
    """Level calls per step: ``update.evaluations`` of a multistep rule, else 1."""
    return int(update.evaluations) if is_multistep(update) else 1


def _init(update, x0: Array, ts: Array):
    """The rule's carried state (``None`` for a one-call rule)."""
    return update.init(x0, ts) if is_multistep(update) else None


def _calls(update, t0: Array, t1: Array, state) -> Array:
    """``(E,)`` booleans: the calls the step makes (always the one call of a plain rule)."""
    return update.calls(t0, t1, state) if is_multistep(update) else jnp.ones((1,), bool)


def _advance(update, evaluate, x: Array, state, t0: Array, t1: Array, dw: Array | None):
    """One step of either kind of rule; ``evaluate(i, y, s)`` is its ``i``-th level output.
    A one-call rule gets ``evaluate(0, x, level_time(τ0))``, exactly as before."""
    if is_multistep(update):
        return update.step(x, evaluate, t0, t1, dw, state)
    return update(x, evaluate(0, x, update.level_time(t0)), t0, t1, dw), state


def _unless_skipped(update, made: Array, f):
    """``evaluate(i, y, s)`` of one level ``f``: for a multistep rule inside a ``lax.cond`` on
    ``made[i]`` (a call not made computes nothing and gives zeros); a plain rule calls ``f``."""
    if not is_multistep(update):
        return lambda i, y, s: f(y, s)
    return lambda i, y, s: jax.lax.cond(made[i], f, lambda y, s: jnp.zeros_like(y), y, s)


@functools.partial(jax.jit, static_argnames=("drifts", "update"))
def _switch_scan(drifts, update, x0, ts, index, noise):
    """Returns ``x_N`` and the ``(N, E)`` calls made."""
    num_steps = ts.shape[0] - 1
    branches = [lambda x, t, f=f: f(x, t) for f in drifts]

    def step(carry, inputs):
        x, state = carry
        n, t0, t1, i = inputs
        made = _calls(update, t0, t1, state)
        evaluate = _unless_skipped(update, made,
                                   lambda y, s: jax.lax.switch(i, branches, y, s))
        dw = _increment(noise, update, n, num_steps, x)
        return _advance(update, evaluate, x, state, t0, t1, dw), made

    (x, _), made = jax.lax.scan(step, (x0, _init(update, x0, ts)),
                                (jnp.arange(num_steps), ts[:-1], ts[1:], index))
    return x, made


def _bernoulli_weights(key: Array, p: Array, eta: Array) -> tuple[Array, Array]:
    """``w_k = B_k / p_k`` with ``B_k ~ Bernoulli(p_k)``, ``B_1 = 1``; returns ``(w, B)``."""
    draws = (jax.random.uniform(key, p.shape) < p).at[0].set(True)
    return jnp.where(draws, 1.0 / p, 0.0), draws


def _fixed_weights(key: Array, probs_and_draws: tuple[Array, Array], eta: Array
                   ) -> tuple[Array, Array]:
    """``w_k = B_k / p_k`` with the given ``B`` (a fixed pattern; ``key`` unused)."""
    p, draws = probs_and_draws
    return jnp.where(draws, 1.0 / p, 0.0), draws


def level_coefficients(weights: Array) -> Array:
    """``a_j = w_j − w_{j+1}`` (``w_{K+1} = 0``) along the last axis: the coefficient of
    ``fʲ`` in the step's drift; level ``j`` is evaluated iff ``a_j ≠ 0``."""
    above = jnp.concatenate([weights[..., 1:], jnp.zeros_like(weights[..., :1])], axis=-1)
    return weights - above


def _poisson_weights(key: Array, rate: Array, eta: Array) -> tuple[Array, Array]:
    """``w_k = M_k / (λ_k η)`` with ``M_k ~ Poisson(λ_k η)``, ``w_1 = 1``; returns ``(w, M)``."""
    mean = rate * eta
    counts = jax.random.poisson(key, mean, rate.shape).at[0].set(1)
    return (counts / mean).at[0].set(1.0).astype(rate.dtype), counts


@functools.partial(jax.jit, static_argnames=("drift", "update"))
def _em_scan(drift, update, x0, ts, noise):
    """Returns ``x_N`` and the ``(N, E)`` calls made."""
    num_steps = ts.shape[0] - 1

    def step(carry, inputs):
        x, state = carry
        n, t0, t1 = inputs
        made = _calls(update, t0, t1, state)
        dw = _increment(noise, update, n, num_steps, x)
        return _advance(update, _unless_skipped(update, made, drift), x, state, t0, t1,
                        dw), made

    (x, _), made = jax.lax.scan(step, (x0, _init(update, x0, ts)),
                                (jnp.arange(num_steps), ts[:-1], ts[1:]))
    return x, made


@functools.partial(jax.jit, static_argnames=("drifts", "update", "sample_weights"))
def _mlem_scan(drifts, update, x0, ts, probs, key, noise, sample_weights):
    """The multilevel scan; ``sample_weights(key, probs[n], η_n) → (w, draws)`` with
    ``E[w_k] = 1`` (Bernoulli: ``B/p``; Poisson: ``M/(λη)``; fixed draws: ``probs`` is the
    pair ``(p, B)`` of ``(N, K)`` arrays and ``w = B/p``). The combination ``Σ_j a_j uʲ`` of
    the levels ``drifts`` (drifts or ε-predictors) goes to the update rule ``update``, once
    per call of the step, each call ``i`` with its own weights; returns ``x_N`` and the
    ``(N, E, K)`` draws and evaluations made (``(N, K)`` when ``E = 1``)."""
    num_steps, num_calls = ts.shape[0] - 1, _evaluations(update)

    def step(carry, inputs):
        x, state = carry
        n, t0, t1, p = inputs
        key_n = jax.random.fold_in(key, n)
        made = _calls(update, t0, t1, state)
        weights, draws = zip(*(  # call 0 draws as before multistep rules existed
            sample_weights(key_n if i == 0 else jax.random.fold_in(key_n, i),
                           _for_call(p, i), t1 - t0) for i in range(num_calls)))
        coefs = level_coefficients(jnp.stack(weights))  # (E, K): a_j = w_j − w_{j+1}
        needed = (coefs != 0) & made[:, None]  # B_j ∨ B_{j+1}, unless the uses of fʲ cancel

        def evaluate(i, y, s):
            out = jnp.zeros_like(y)
            for level, f in enumerate(drifts):
                out = jax.lax.cond(
                    needed[i, level], functools.partial(_add_level, f, s),
                    lambda acc, y, coef: acc, out, y, coefs[i, level])
            return out

        dw = _increment(noise, update, n, num_steps, x)
        carry = _advance(update, evaluate, x, state, t0, t1, dw)
        return carry, (jnp.stack(draws), needed)

    n = jnp.arange(num_steps)
    probs = jax.tree.map(lambda a: a.astype(x0.dtype) if jnp.issubdtype(a.dtype, jnp.floating)
                         else a, probs)
    (x, _), (draws, needed) = jax.lax.scan(step, (x0, _init(update, x0, ts)),
                                           (n, ts[:-1], ts[1:], probs))
    if num_calls == 1:
        draws, needed = draws[:, 0], needed[:, 0]
    return x, draws, needed


def _for_call(params, i: int):
    """The step's parameters for call ``i``: fixed draws ``(E, K)`` give their row ``i``;
    probabilities, rates and ``(K,)`` draws are shared by the calls."""
    return jax.tree.map(lambda a: a[i] if a.ndim == 2 else a, params)


def _add_level(f: Drift, t: Array, acc: Array, x: Array, coef: Array) -> Array:
    return acc + coef * f(x, t)


def check_ts(ts: Array) -> Array:
    """``ts`` as a 1-D array of at least two strictly increasing times."""
    ts = jnp.asarray(ts)
    if ts.ndim != 1 or ts.shape[0] < 2:
        raise ValueError(f"ts: need a 1-D array of N + 1 >= 2 times, got shape {ts.shape}")
    if not isinstance(ts, jax.core.Tracer) and not np.all(np.diff(np.asarray(ts)) > 0):
        raise ValueError("ts: solver times must be strictly increasing")
    return ts


def check_rates(rates: Array, num_levels: int, num_steps: int) -> Array:
    """Validate Poisson ``rates`` (``(K,)`` or ``(N, K)``, columns 2…K positive); return
    ``(N, K)`` with column 0 set to 1 (unused: the base level runs on every step)."""
    rates = jnp.asarray(rates)
    if rates.shape not in ((num_levels,), (num_steps, num_levels)):
        raise ValueError(f"rates: expected shape ({num_levels},) or ({num_steps}, {num_levels}) "
                         f"for {num_levels} drift levels and {num_steps} steps, got "
                         f"{rates.shape}")
    if not isinstance(rates, jax.core.Tracer):
        values = np.asarray(rates)[..., 1:]
        if not np.all(np.isfinite(values) & (values > 0)):
            raise ValueError("rates: every rate of levels 2..K must be positive and finite")
    return jnp.broadcast_to(rates, (num_steps, num_levels)).at[:, 0].set(1.0)


def check_probs(probs: Array, num_levels: int, num_steps: int) -> Array:
    """Validate ``probs`` against ``K`` levels and ``N`` steps; return ``(N, K)``, column 0 = 1.

    Range checks apply to concrete values only, so traced probabilities pass through.
    """
    probs = jnp.asarray(probs)
    if probs.shape not in ((num_levels,), (num_steps, num_levels)):
        raise ValueError(
            f"probs: expected shape ({num_levels},) or ({num_steps}, {num_levels}) for "
            f"{num_levels} drift levels and {num_steps} steps, got {probs.shape}")
    if not isinstance(probs, jax.core.Tracer):
        values = np.asarray(probs)
        if not np.all((values > 0) & (values <= 1)):
            raise ValueError(f"probs: every probability must lie in (0, 1]; got min "
                             f"{values.min()}, max {values.max()}")
    probs = jnp.broadcast_to(probs, (num_steps, num_levels))
    return probs.at[:, 0].set(1.0)


def check_draws(draws: Array, num_levels: int, num_steps: int,
                evaluations: int | None = 1) -> Array:
    """Validate fixed Bernoulli outcomes: a boolean ``(N, K)`` array, or ``(N, E, K)`` for a
    rule with ``E = evaluations > 1`` level calls per step (``None``: either form); return it
    with the base level's column set to true (the base level is always drawn)."""
    draws = jnp.asarray(draws)
    if evaluations is None:
        ok = draws.shape == (num_steps, num_levels) or (
            draws.ndim == 3 and draws.shape[::2] == (num_steps, num_levels))
        expected = f"({num_steps}, {num_levels}) or ({num_steps}, E, {num_levels})"
    else:
        shape = (num_steps, num_levels) if evaluations == 1 else (
            num_steps, evaluations, num_levels)
        ok, expected = draws.shape == shape, str(shape)
    if not ok:
        raise ValueError(f"draws: expected shape {expected}, one Bernoulli outcome per step"
                         f"{'' if evaluations == 1 else ', call'} and level, got {draws.shape}")
    if draws.dtype != jnp.bool_:
        raise ValueError(f"draws: expected a boolean array of Bernoulli outcomes, got dtype "
                         f"{draws.dtype}")
    return draws.at[..., 0].set(True)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class _Given:
    """Explicit increments ``(N, *x0.shape)``, indexed by step."""

    values: Array

    def step(self, n: Array, num_steps: int, like: Array) -> Array:
        return self.values[n].astype(like.dtype)


def _noise(key: Array | None, ts: Array, x0: Array, increments: Array | None,
           path: Path | None, update: UpdateRule) -> _Given | Path | None:
    """The source of the Brownian increments: given, a path, or the batch path of ``key``;
    ``None`` for a deterministic update rule."""
    if not update.stochastic:
        return None
    num_steps = ts.shape[0] - 1
    if increments is not None and path is not None:
        raise ValueError("increments, path: give at most one source of Brownian increments")
    if increments is not None:
        if increments.shape != (num_steps, *x0.shape):
            raise ValueError(f"increments: expected shape {(num_steps, *x0.shape)} for "
                             f"{num_steps} steps and x0 of shape {x0.shape}, got "
                             f"{increments.shape}")
        return _Given(increments)
    if path is not None:
        brownian.check_path(path, ts, x0)
        return path
    if key is None:
        raise ValueError("key: needed to draw the Brownian path when neither increments nor "
                         "path is given")
    return brownian.BatchPath(jax.random.split(key)[0], ts.astype(x0.dtype))


def _with_cost(stats: dict[str, Array], costs: Sequence[float] | None) -> dict[str, Array]:
    if costs is not None:
        costs = jnp.asarray(costs, jnp.float32)
        if costs.shape != stats["evals"].shape:
            raise ValueError(f"costs: expected {stats['evals'].shape[0]} per-level costs, "
                             f"got shape {costs.shape}")
        stats["cost_flops"] = stats["evals"].astype(jnp.float32) @ costs
    return stats
