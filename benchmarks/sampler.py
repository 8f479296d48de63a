"""Wall-clock benchmark of the ML-EM sampler on the real-compute synthetic ladder.

    python -m benchmarks.sampler [--gamma 3] [--batch_size 512] [--steps 64] [--c 8] [--repeats 5]
        [--levels 4] [--base_features 16]

Uses :func:`mlem.testbed.fourier_hierarchy` (level ``k`` = the first ``M_k`` random Fourier
features, ``M_k`` growing by ``2^γ``), with parameters passed to ``jit`` as arguments. Prints:

* per level: features, FLOPs per sample (hand count and XLA), time per evaluation;
* (a) overhead = ML-EM solve ÷ the same level evaluations performed alone (a jitted loop that
  evaluates each level as many times as the solve's Bernoulli draws required); goal ≤ 1.10;
* (b) realised wall-clock speedup of ML-EM over EM at level K, same steps, ÷ the speedup
  predicted by XLA FLOPs of the evaluations actually made; goal ≥ 0.85;
* (c) levels that a step does not need are not computed: ML-EM with ``p = (1, …, 1, 1e-6)``
  against EM at level ``K − 1``. Levels ``1 … K − 2`` have weight ``1 − 1 = 0`` and level
  ``K`` is never drawn, so only level ``K − 1`` runs: FLOP ratio 1;
* (d) the path-by-key form: ML-EM with per-sample Brownian paths drawn inside the scan
  (:class:`mlem.brownian.SamplePaths`, memory independent of the step count) ÷ the same
  solve reading materialised increments.

Every timing is the median of ``repeats`` runs after a compile-and-warm-up run; a solve with a
fixed key repeats the same Bernoulli draws, so the evaluation counts are the same each time.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mlem import brownian, cli, cost, sampling, schedules, testbed

_GAMMA = flags.DEFINE_float("gamma", 3.0, "Cost growth exponent: M_k grows by 2^gamma.")
_BATCH = flags.DEFINE_integer("batch_size", 512, "Samples per solve.")
_STEPS = flags.DEFINE_integer("steps", 64, "Solver steps of EM and ML-EM.")
_C = flags.DEFINE_float("c", 8.0, "Dyadic schedule knob C.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed runs per measurement (median).")
_LEVELS = flags.DEFINE_integer("levels", 4, "Levels of the synthetic ladder.")
_BASE_FEATURES = flags.DEFINE_integer("base_features", 16, "Fourier features of level 1.")


def build_solvers(hierarchy: testbed.Hierarchy):
    """Jitted EM-at-level, ML-EM and evaluations-alone functions taking parameters as arguments."""
    diffusion = hierarchy.diffusion

    @jax.jit
    def mlem(params, probs, x0, ts, key, increments):
        return sampling.multilevel_euler_maruyama(hierarchy.drifts_from(params), probs,
                                                  diffusion, x0, ts, key, increments=increments)

    @jax.jit
    def mlem_paths(params, probs, x0, ts, key, paths):
        return sampling.multilevel_euler_maruyama(hierarchy.drifts_from(params), probs,
                                                  diffusion, x0, ts, key, path=paths)

    def em(level: int):
        @jax.jit
        def solve(params, x0, ts, increments):
            drift = hierarchy.drifts_from([params])[0]
            return sampling.euler_maruyama(drift, diffusion, x0, ts, None,
                                           increments=increments)[0]
        return lambda params, *args: solve(params[level], *args)

    @jax.jit
    def evaluations_alone(params, x0, counts):
        """Evaluate level ``k`` ``counts[k]`` times, threading the state so nothing is hoisted."""
        x = x0
        for k, drift in enumerate(hierarchy.drifts_from(params)):
            x = jax.lax.fori_loop(0, counts[k], lambda i, x, f=drift: x + 1e-3 * f(x, 0.0), x)
        return x

    return mlem, mlem_paths, em, evaluations_alone


def level_table(hierarchy, evaluations_alone, x0, flops, repeats: int) -> list[str]:
    """One line per level: features, FLOPs, seconds per evaluation (from a 32-call loop)."""
    lines = [f"{'level':>5} {'features':>9} {'FLOPs/sample':>13} {'XLA FLOPs':>11} "
             f"{'ms/eval':>9} {'GFLOP/s':>8}"]
    for k, params in enumerate(hierarchy.level_params):
        counts = jnp.zeros(hierarchy.num_levels, jnp.int32).at[k].set(32)
        seconds = cost.median_seconds(
            lambda c=counts: evaluations_alone(hierarchy.level_params, x0, c), repeats) / 32
        gflops = flops[k] * x0.shape[0] / seconds / 1e9
        lines.append(f"{k + 1:>5} {params['omega'].shape[1]:>9} {hierarchy.costs[k]:>13.4g} "
                     f"{flops[k]:>11.4g} {seconds * 1e3:>9.3f} {gflops:>8.2f}")
    return lines


def run(gamma: float = 3.0, batch: int = 512, steps: int = 64, c: float = 8.0, repeats: int = 5,
        *, num_levels: int = 4, base_features: int = 16, seed: int = 0) -> dict:
    """All measurements of the module docstring; prints the table and returns the numbers."""
    hierarchy = testbed.fourier_hierarchy(gamma, num_levels, base_features=base_features,
                                            exact_factor=2, seed=seed)
    params = hierarchy.level_params
    num_levels = hierarchy.num_levels
    x0 = hierarchy.sample_x0(jax.random.key(seed), batch)
    ts = jnp.linspace(0.0, 1.0, steps + 1)
    increments = brownian.increments(jax.random.key(seed + 1), ts, x0.shape)
    key = jax.random.key(seed + 2)
    flops = testbed.xla_costs(hierarchy, batch)
    mlem, mlem_paths, em, evaluations_alone = build_solvers(hierarchy)

    print(f"devices: {jax.devices()}  platform: {jax.default_backend()}  "
          f"machine: {platform.machine()} {platform.processor() or ''} cpus={os.cpu_count()}")
    print(f"ladder: fourier, gamma={gamma:g}, K={num_levels}, d={hierarchy.dim}, batch={batch}, "
          f"steps={steps}, dyadic C={c:g}, repeats={repeats} (median)")
    print("\n".join(level_table(hierarchy, evaluations_alone, x0, flops, repeats)))

    probs = jnp.asarray(schedules.dyadic(num_levels, gamma, c), jnp.float32)
    _, stats = mlem(params, probs, x0, ts, key, increments)
    evals = np.asarray(stats["evals"])
    t_mlem = cost.median_seconds(lambda: mlem(params, probs, x0, ts, key, increments)[0], repeats)
    t_alone = cost.median_seconds(lambda: evaluations_alone(params, x0, jnp.asarray(evals)),
                                  repeats)
    em_top, em_below = em(num_levels - 1), em(num_levels - 2)
    t_em = cost.median_seconds(lambda: em_top(params, x0, ts, increments), repeats)
    predicted = steps * flops[-1] / cost.realised_cost(stats, flops)
    expected = steps * flops[-1] / cost.expected_cost(probs, flops, steps)

    tiny = jnp.ones(num_levels).at[-1].set(1e-6)
    _, tiny_stats = mlem(params, tiny, x0, ts, key, increments)
    t_tiny = cost.median_seconds(lambda: mlem(params, tiny, x0, ts, key, increments)[0], repeats)
    t_below = cost.median_seconds(lambda: em_below(params, x0, ts, increments), repeats)
    flop_ratio_tiny = cost.realised_cost(tiny_stats, flops) / (steps * flops[-2])

    paths = brownian.SamplePaths(brownian.sample_keys(jax.random.key(seed + 1), 0, batch), ts)
    path_increments = paths.increments(x0.shape[1:], steps)
    t_paths = cost.median_seconds(lambda: mlem_paths(params, probs, x0, ts, key, paths)[0],
                                  repeats)
    t_given = cost.median_seconds(lambda: mlem(params, probs, x0, ts, key, path_increments)[0],
                                  repeats)

    result = {
        "evals": evals.tolist(), "probs": np.asarray(probs).tolist(),
        "overhead": t_mlem / t_alone, "t_mlem": t_mlem, "t_alone": t_alone, "t_em": t_em,
        "speedup_realised": t_em / t_mlem, "speedup_flops": predicted,
        "speedup_flops_expected": expected, "speedup_ratio": t_em / t_mlem / predicted,
        "tiny_evals": np.asarray(tiny_stats["evals"]).tolist(), "t_tiny": t_tiny,
        "t_em_below": t_below, "tiny_time_ratio": t_tiny / t_below,
        "tiny_flop_ratio": flop_ratio_tiny, "t_paths": t_paths, "t_given": t_given,
        "path_time_ratio": t_paths / t_given,
    }
    _print_summary(result, num_levels)
    return result


def _print_summary(r: dict, num_levels: int) -> None:
    rows = [
        ("ML-EM evaluations per level", " ".join(str(e) for e in r["evals"]), ""),
        ("(a) ML-EM solve [ms]", f"{r['t_mlem'] * 1e3:.2f}", ""),
        ("    same evaluations alone [ms]", f"{r['t_alone'] * 1e3:.2f}", ""),
        ("    overhead = ratio", f"{r['overhead']:.3f}", "goal <= 1.10"),
        (f"(b) EM at level {num_levels} [ms]", f"{r['t_em'] * 1e3:.2f}", ""),
        ("    realised wall-clock speedup", f"{r['speedup_realised']:.2f}x", ""),
        ("    FLOP-predicted speedup (these draws)", f"{r['speedup_flops']:.2f}x",
         f"expected over draws {r['speedup_flops_expected']:.2f}x"),
        ("    realised / predicted", f"{r['speedup_ratio']:.3f}", "goal >= 0.85"),
        (f"(c) ML-EM, p_{num_levels} = 1e-6, others 1 [ms]", f"{r['t_tiny'] * 1e3:.2f}",
         "evals " + " ".join(str(e) for e in r["tiny_evals"])),
        (f"    EM at level {num_levels - 1} [ms]", f"{r['t_em_below'] * 1e3:.2f}", ""),
        ("    time ratio (FLOP ratio)", f"{r['tiny_time_ratio']:.3f}",
         f"({r['tiny_flop_ratio']:.3f}; computing level {num_levels} would cost "
         f"~{r['t_em'] / r['t_em_below']:.1f}x)"),
        ("(d) ML-EM, per-sample paths in the scan [ms]", f"{r['t_paths'] * 1e3:.2f}", ""),
        ("    same, materialised increments [ms]", f"{r['t_given'] * 1e3:.2f}", ""),
        ("    time ratio", f"{r['path_time_ratio']:.3f}", "the price of O(1) memory in N"),
    ]
    width = max(len(a) for a, _, _ in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>12}  {note}")


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {list(argv[1:])}")
    run(_GAMMA.value, _BATCH.value, _STEPS.value, _C.value, _REPEATS.value,
        num_levels=_LEVELS.value, base_features=_BASE_FEATURES.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
