"""Sampler timings of the CelebA ladder on an accelerator (run by ``benchmarks/gpu_check.sh``).

    python -m benchmarks.gpu [--batch_size 128] [--dtype bfloat16] [--steps 64] [--json F]
    python -m benchmarks.gpu --smoke          # tiny levels, a few steps: runs on a CPU

Random initial parameters (timing does not depend on training). Prints and returns:

* per level: milliseconds per forward call at ``batch_size`` (median of 5 after a warm-up)
  against its FLOPs, and the achieved TFLOP/s;
* EM at the top level against ML-EM at the same step count, for two schedules (dyadic with
  ``γ = 2.5`` at two knobs), each wall-clock (median of 3 after a warm-up) beside its
  realised FLOPs, so the realised wall-clock speedup can be set against the FLOP speedup.

XLA command buffers (CUDA graphs over the whole scan, ``CONDITIONAL`` and ``WHILE``
included) are switched by ``XLA_FLAGS`` before JAX starts, so ``gpu_check.sh`` runs this
module once with and once without them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from mlem import brownian, cost, sampling, schedules
from mlem.models import registry
from mlem.sde import VPSDE

_BATCH = flags.DEFINE_integer("batch_size", 128, "Samples per solve.")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["float32", "bfloat16"], "Compute dtype.")
_STEPS = flags.DEFINE_integer("steps", 64, "Solver steps of EM and ML-EM.")
_SMOKE = flags.DEFINE_bool("smoke", False, "Tiny levels at 8x8, 4 steps (a CPU check).")
_JSON = flags.DEFINE_string("json", None, "Also write the results to this JSON file.")


def _ladder(smoke: bool, dtype: str):
    names = ([f"smoke_level{k}" for k in range(1, 4)] if smoke
             else [f"celeba64_level{k}" for k in range(1, 6)])
    size = 8 if smoke else 64
    models = [registry.get_model(n, dtype=dtype) for n in names]
    x, t = jnp.zeros((1, size, size, 3)), jnp.full((1,), 0.5)
    params = [jax.jit(m.init)(jax.random.key(k), x, t)["params"] for k, m in enumerate(models)]
    return names, models, params, (size, size, 3)


def level_table(models, params, shape, batch: int) -> list[dict]:
    x = jax.random.normal(jax.random.key(0), (batch, *shape))
    t = jnp.full((batch,), 0.5)
    rows = []
    for m, p in zip(models, params):
        fn = lambda p, x, t, m=m: m.apply({"params": p}, x, t, train=False)
        flops = cost.flops_per_sample(fn, p, x, t, batch_size=batch)
        seconds = cost.seconds_per_call(fn, p, x, t)
        rows.append({"gflops_per_sample": flops / 1e9, "ms_per_call": seconds * 1e3,
                     "achieved_tflops": flops * batch / seconds / 1e12})
    return rows


def solver_table(models, params, shape, batch: int, steps: int, flops) -> list[dict]:
    sde = VPSDE()
    ts = sde.time_grid(steps)
    x0 = jax.random.normal(jax.random.key(1), (batch, *shape))
    paths = brownian.SamplePaths(brownian.sample_keys(jax.random.key(2), 0, batch), ts)

    def drifts(params):
        def eps(m, p):
            return lambda x, t: m.apply({"params": p}, x, jnp.broadcast_to(t, x.shape[:1]),
                                        train=False).astype(x.dtype)
        return [sde.drift_from_eps(eps(m, p)) for m, p in zip(models, params)]

    em = jax.jit(lambda params, x0: sampling.euler_maruyama(
        drifts(params)[-1], sde.diffusion, x0, ts, None, path=paths)[0])
    mlem = jax.jit(lambda params, probs, x0, key: sampling.multilevel_euler_maruyama(
        drifts(params), probs, sde.diffusion, x0, ts, key, path=paths))
    t_em = cost.median_seconds(lambda: em(params, x0), repeats=3)
    rows = [{"method": "EM, top level", "seconds": t_em, "gflops": steps * flops[-1] / 1e9,
             "evals": [0] * (len(models) - 1) + [steps]}]
    for c in (1.0, 4.0):
        probs = jnp.asarray(schedules.dyadic(len(models), 2.5, c))
        key = jax.random.key(3)
        _, stats = mlem(params, probs, x0, key)
        seconds = cost.median_seconds(lambda p=probs, k=key: mlem(params, p, x0, k)[0], 3)
        evals = np.asarray(stats["evals"])
        rows.append({"method": f"ML-EM, dyadic γ=2.5, C={c:g}", "seconds": seconds,
                     "gflops": float(evals @ np.asarray(flops)) / 1e9, "evals": evals.tolist(),
                     "probs": np.asarray(probs).round(5).tolist()})
    for row in rows:
        row["wallclock_speedup"] = t_em / row["seconds"]
        row["flops_speedup"] = rows[0]["gflops"] / row["gflops"]
    return rows


def run(smoke: bool, batch: int, dtype: str, steps: int) -> dict:
    if smoke:
        batch, steps, dtype = 4, 4, "float32"
    names, models, params, shape = _ladder(smoke, dtype)
    device = jax.devices()[0]
    levels = level_table(models, params, shape, batch)
    flops = [r["gflops_per_sample"] * 1e9 for r in levels]
    solvers = solver_table(models, params, shape, batch, steps, flops)
    result = {"device": f"{device.platform} {device.device_kind}", "batch_size": batch,
              "dtype": dtype, "steps": steps, "xla_flags": os.environ.get("XLA_FLAGS", ""),
              "levels": [{"level": n, **r} for n, r in zip(names, levels)], "solvers": solvers}
    print(f"device: {result['device']}  batch {batch}  {dtype}  steps {steps}  "
          f"XLA_FLAGS={result['xla_flags']!r}")
    print("| level | GFLOP/sample | ms/call | achieved TFLOP/s |\n|---|---:|---:|---:|")
    for r in result["levels"]:
        print(f"| {r['level']} | {r['gflops_per_sample']:.4g} | {r['ms_per_call']:.3f} | "
              f"{r['achieved_tflops']:.3g} |")
    print("| solver | evaluations per level | s/solve | GFLOP/sample | wall-clock speedup | "
          "FLOP speedup |\n|---|---|---:|---:|---:|---:|")
    for r in solvers:
        print(f"| {r['method']} | {r['evals']} | {r['seconds']:.4f} | {r['gflops']:.4g} | "
              f"{r['wallclock_speedup']:.2f} | {r['flops_speedup']:.2f} |")
    return result


def main(argv: list[str]) -> None:
    del argv
    result = run(_SMOKE.value, _BATCH.value, _DTYPE.value, _STEPS.value)
    if _JSON.value:
        Path(_JSON.value).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    app.run(main)
