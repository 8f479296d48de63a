"""Cost of drift levels and of ML-EM schedules (docs/design.md §1, §3).

Cost is FLOPs per sample of one forward pass, read from XLA's cost analysis at the batch
size used for sampling, and seconds per call measured on the device (:func:`seconds_per_call`).
A step of ML-EM evaluates level ``j`` iff its coefficient ``a_j = B_j/p_j − B_{j+1}/p_{j+1}``
is non-zero: ``B_j ∨ B_{j+1}``, except that two drawn levels with equal probabilities cancel.
So level ``j`` runs with probability
``1 − (1 − p_j)(1 − p_{j+1}) − 1[p_j = p_{j+1}] p_j p_{j+1}`` (``p_{K+1} = 0``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import jax
import jax.numpy as jnp
import numpy as np

from mlem import sampling

__all__ = ["compile_timer", "evaluation_probs", "expected_cost", "expected_evals",
           "flops_and_seconds", "flops_per_sample", "median_seconds", "realised_cost",
           "seconds_per_call"]

Array = jax.Array


def flops_per_sample(fn: Callable[..., Array], *args, batch_size: int) -> float:
    """FLOPs of one call ``fn(*args)`` compiled by XLA, divided by ``batch_size``."""
    return _flops(jax.jit(fn).lower(*args).compile(), batch_size)


def flops_and_seconds(fn: Callable[..., Array], *args, batch_size: int,
                      repeats: int = 5) -> tuple[float, float]:
    """``(FLOPs per sample, median seconds per call)`` of ``fn(*args)`` from one compilation."""
    compiled = jax.jit(fn).lower(*args).compile()
    return _flops(compiled, batch_size), median_seconds(lambda: compiled(*args), repeats)


def _flops(compiled, batch_size: int) -> float:
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax returned one dict per device
        analysis = analysis[0]
    flops = (analysis or {}).get("flops", 0.0)
    if not flops > 0:
        raise RuntimeError("XLA's cost analysis reported no FLOPs for this function on "
                           f"{jax.default_backend()}; pass costs explicitly instead")
    return float(flops) / batch_size


def median_seconds(fn: Callable[[], object], repeats: int = 5) -> float:
    """Median wall-clock seconds of ``fn()`` (blocked until ready) after one warm-up call,
    which compiles; compilation is therefore not counted."""
    if repeats < 1:
        raise ValueError(f"repeats: need >= 1, got {repeats}")
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def seconds_per_call(fn: Callable[..., Array], *args, repeats: int = 5) -> float:
    """Median seconds of one call ``jit(fn)(*args)`` on the arrays' device (docs/design.md §3)."""
    jitted = jax.jit(fn)
    return median_seconds(lambda: jitted(*args), repeats)


def evaluation_probs(probs: Array, num_steps: int | None = None) -> Array:
    """``(N, K)`` probability that each level is evaluated at each step (``a_j ≠ 0``).

    ``probs`` is ``(K,)`` (then ``num_steps`` is required) or ``(N, K)``. Equal
    probabilities are compared as the sampler compares its weights, in float32.
    """
    probs = jnp.asarray(probs)
    num_levels = probs.shape[-1]
    num_steps = probs.shape[0] if probs.ndim == 2 else num_steps
    if num_steps is None:
        raise ValueError("num_steps: required when probs has shape (K,)")
    probs = sampling.check_probs(probs, num_levels, num_steps)
    above = jnp.concatenate([probs[:, 1:], jnp.zeros((num_steps, 1), probs.dtype)], axis=1)
    weight = lambda p: 1.0 / p.astype(jnp.float32)
    cancel = jnp.where(weight(probs) == weight(above), probs * above, 0.0)
    return 1.0 - (1.0 - probs) * (1.0 - above) - cancel


def expected_evals(probs: Array, num_steps: int | None = None,
                   calls: Sequence[int] | None = None) -> Array:
    """``(K,)`` expected evaluations per level over a whole solve; ``calls``: the ``(N,)``
    level calls of each step (:func:`mlem.solvers.calls_per_step`; default one), each call
    with its own Bernoulli draws."""
    if calls is not None and num_steps is None:
        num_steps = len(calls)
    p = evaluation_probs(probs, num_steps)
    if calls is None:
        return p.sum(0)
    calls = jnp.asarray(calls, p.dtype)
    if calls.shape != p.shape[:1]:
        raise ValueError(f"calls: expected one count per step ({p.shape[0]}), got "
                         f"{calls.shape}")
    return calls @ p


def expected_cost(probs: Array, costs: Sequence[float], num_steps: int | None = None,
                  calls: Sequence[int] | None = None) -> float:
    """Expected cost per sample of a solve: ``Σ_n m_n Σ_j c_j · P(a_{n,j} ≠ 0)``, with ``m_n``
    the level calls of step ``n`` (``calls``; default one: :func:`expected_evals`)."""
    evals = np.asarray(expected_evals(probs, num_steps, calls))
    costs = np.asarray(costs, np.float64)
    if costs.shape != evals.shape:
        raise ValueError(f"costs: expected {evals.shape[0]} per-level costs, got {costs.shape}")
    return float(evals @ costs)


def realised_cost(stats: dict[str, Array], costs: Sequence[float]) -> float:
    """Cost per sample of a solve actually made: ``Σ_j evals_j · c_j``."""
    evals = np.asarray(stats["evals"], np.float64)
    costs = np.asarray(costs, np.float64)
    if costs.shape != evals.shape:
        raise ValueError(f"costs: expected {evals.shape[0]} per-level costs, got {costs.shape}")
    return float(evals @ costs)


_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


@contextmanager
def compile_timer() -> Iterator:
    """Yields a callable giving the seconds spent tracing, lowering and compiling (union)."""
    spans: list[tuple[float, float]] = []

    def listener(event, start, end, **_):
        if event in _COMPILE_EVENTS:
            spans.append((start, end))

    def total() -> float:
        seconds, reach = 0.0, -np.inf
        for start, end in sorted(spans):  # union of possibly nested intervals
            seconds += max(0.0, end - max(start, reach))
            reach = max(reach, end)
        return seconds

    jax.monitoring.register_event_time_span_listener(listener)
    try:
        yield total
    finally:
        jax.monitoring.unregister_event_time_span_listener(listener)
