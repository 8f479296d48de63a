"""Training throughput per ladder level on the current device(s): steps/s and FLOP/s.

    python -m benchmarks.train                        # MNIST ladder on CPU, CelebA on GPU/TPU
    python -m benchmarks.train --config configs/celeba64_level3.py --dtype bfloat16 --steps 50

Times the jitted training step of :mod:`mlem.train.objective` (forward, backward, AdamW, EMA) on a
fixed random batch already on the devices, so data loading is excluded. FLOPs per step are
XLA's count for the compiled step (``cost_analysis``), summed over devices; achieved
FLOP/s = FLOPs per step × steps/s. A benchmark, not a test.
"""

from __future__ import annotations

import glob
import json
import time
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from mlem import parallel
from mlem.config_files import load_config
from mlem.sde import VPSDE
from mlem.train import objective

_CONFIGS = flags.DEFINE_multi_string("config", None, "Config files (default: a whole ladder).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per level.")
_WARMUP = flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "Override model.dtype.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Override training.batch_size.")
_JSON = flags.DEFINE_string("json", None, "Also write the rows to this JSON file.")


def default_configs() -> list[str]:
    prefix = "mnist_level" if jax.default_backend() == "cpu" else "celeba64_level"
    return sorted(glob.glob(f"configs/{prefix}[0-9]*.py"))


def bench_level(config, steps: int, warmup: int) -> dict:
    """Compile, warm up and time ``steps`` training steps of one config."""
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.training.batch_size, mesh.size)
    model, tx = objective.build_model(config), objective.make_optimizer(config.optim)
    shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    key = jax.random.key(config.seed)
    state = jax.jit(lambda k: objective.init_state(model, tx, k, shape),
                    out_shardings=parallel.replicated(mesh))(key)
    batch = np.random.default_rng(0).uniform(-1, 1, (config.training.batch_size, *shape))
    batch = parallel.shard_batch(batch.astype(np.float32), parallel.batch_sharded(mesh))
    step_fn = objective.make_train_step(model, tx, VPSDE(**config.sde),
                                       config.training.ema_decay, key, mesh)
    compiled = step_fn.lower(state, batch).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    flops = float(cost.get("flops", float("nan"))) * mesh.size
    for _ in range(warmup):
        state, _ = compiled(state, batch)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    rate = steps / (time.perf_counter() - start)
    return {"level": config.model.level, "dtype": config.model.dtype,
            "batch_size": config.training.batch_size, "devices": mesh.size,
            "steps_per_sec": rate, "images_per_sec": rate * config.training.batch_size,
            "gflops_per_step": flops / 1e9, "achieved_tflops": flops * rate / 1e12}


def main(argv: list[str]) -> None:
    del argv
    paths = _CONFIGS.value or default_configs()
    if not paths:
        raise app.UsageError("no config files found; pass --config configs/....py")
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}")
    print("| level | dtype | batch | steps/s | images/s | GFLOP/step | achieved TFLOP/s |")
    print("|---|---|---:|---:|---:|---:|---:|")
    rows = []
    for path in paths:
        config = load_config(path)
        if _DTYPE.value:
            config.model.dtype = _DTYPE.value
        if _BATCH.value:
            config.training.batch_size = _BATCH.value
        row = bench_level(config, _STEPS.value, _WARMUP.value)
        rows.append({**row, "device": device.device_kind})
        print(f"| {row['level']} | {row['dtype']} | {row['batch_size']} | "
              f"{row['steps_per_sec']:.2f} | {row['images_per_sec']:.1f} | "
              f"{row['gflops_per_step']:.2f} | {row['achieved_tflops']:.4f} |", flush=True)
    if _JSON.value:
        Path(_JSON.value).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    app.run(main)
