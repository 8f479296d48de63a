"""Data parallelism: 8 fake CPU devices reproduce the 1-device run; bad batch sizes; the
multi-host environment detection."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from mlem import parallel
from tests.conftest import XLA_FLAGS
from tests.test_training import run_python

EIGHT_DEVICES = """
import json, sys
import jax, numpy as np
from configs import tiny
from mlem import data, parallel
from mlem.train import loop, objective
from mlem.sde import VPSDE

assert jax.device_count() == 8, jax.devices()
config = tiny.get_config()
config.wandb.mode = "disabled"
out = {}
try:
    config.training.batch_size = 12
    loop.train_and_evaluate(config, sys.argv[1])
except ValueError as err:
    out["error"] = str(err)
config.training.batch_size = 8
model, tx = objective.build_model(config), objective.make_optimizer(config.optim)
pipeline = data.TrainPipeline(data.get_source(config.data, "train"), 8, 0, True)
init = jax.jit(lambda k: objective.init_state(model, tx, k, (8, 8, 3)))(jax.random.key(0))
runs = {}
for n in (1, 8):
    mesh = parallel.make_mesh(jax.devices()[:n])
    state = jax.device_put(init, parallel.replicated(mesh))
    step = objective.make_train_step(model, tx, VPSDE(), 0.9, jax.random.key(1), mesh)
    losses = []
    for i in range(3):
        x0 = parallel.shard_batch(pipeline.batch(i), parallel.batch_sharded(mesh))
        state, m = step(state, x0)
        losses.append(float(m["loss"]))
    runs[n] = (losses, [np.asarray(x) for x in jax.tree.leaves(state)])
out["losses"] = {n: runs[n][0] for n in runs}
params = lambda leaves: jax.tree.leaves(jax.tree.unflatten(jax.tree.structure(init), leaves).params)
diff = lambda a, b: max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in zip(a, b))
out["max_abs_diff"] = diff(runs[1][1], runs[8][1])  # every leaf of the state
out["params_moved"] = diff(params(runs[1][1]), jax.tree.leaves(init.params))
print(json.dumps(out))
"""


@pytest.mark.integration
def test_eight_devices_match_one_device(tmp_path):
    """3 training steps with the batch split over 8 fake CPU devices vs on 1 device.

    Only the summation order of batch reductions differs: losses agree to 1e-6 relative;
    every parameter, EMA and AdamW moment to 1e-5 absolute (seen: ≤ 1.5e-6), while the three
    steps move the parameters by > 1e-3.
    """
    # Low LLVM optimisation only to compile faster; both meshes are built the same way.
    flags = f"--xla_force_host_platform_device_count=8 {XLA_FLAGS}"
    proc = run_python(["-c", EIGHT_DEVICES, str(tmp_path / "bad")], {}, XLA_FLAGS=flags)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "training.batch_size=12" in out["error"] and "device count 8" in out["error"]
    assert not (tmp_path / "bad").exists()
    np.testing.assert_allclose(out["losses"]["8"], out["losses"]["1"], rtol=1e-6)
    assert out["max_abs_diff"] < 1e-5 and out["params_moved"] > 1e-3


def test_batch_not_divisible_by_devices_is_a_clear_error():
    parallel.check_batch_size(16, 8)
    with pytest.raises(ValueError, match=r"training.batch_size=12 .* device count 8.*=8"):
        parallel.check_batch_size(12, 8)
    with pytest.raises(ValueError, match=r"eval.batch_size=30 .* count 4.*=28"):
        parallel.check_batch_size(30, 4, "eval.batch_size")


def test_shard_batch_splits_the_leading_axis():
    mesh = parallel.make_mesh()
    batch = np.arange(2 * mesh.size * 3, dtype=np.float32).reshape(2 * mesh.size, 3)
    x = parallel.shard_batch(batch, parallel.batch_sharded(mesh))
    np.testing.assert_array_equal(np.asarray(x), batch)
    assert x.sharding.spec == jax.sharding.PartitionSpec("data")
    assert {s.data.shape for s in x.addressable_shards} == {(2, 3)}


@pytest.mark.parametrize("env, expected", [
    ({}, False),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2"}, True),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1"}, False),
    ({"OMPI_MCA_orte_hnp_uri": "x", "OMPI_COMM_WORLD_SIZE": "4"}, True),
    ({"TPU_WORKER_HOSTNAMES": "h0,h1,h2,h3"}, True),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
    ({"MLEM_DISTRIBUTED": "1"}, True),
])
def test_multihost_detection(env, expected):
    assert parallel.multihost_requested(env) is expected


def test_single_host_does_not_initialize_distributed():
    assert parallel.maybe_initialize_distributed({}) is False
    assert not jax.distributed.is_initialized()


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_concurrent_solves_give_what_each_gives_alone_in_order(workers):
    """map_concurrently: results in the order of the items, each the very array the call
    alone gives (the same computation; only its overlap with others changes)."""
    step = jax.jit(lambda x, k: jax.numpy.tanh(x) + jax.random.normal(k, x.shape))
    items = list(range(7))

    def solve(i):
        x = jax.random.normal(jax.random.key(i), (16, 8, 8, 3))
        return np.asarray(step(x, jax.random.key(100 + i)))

    alone = [solve(i) for i in items]
    together = list(parallel.map_concurrently(solve, items, workers))
    assert len(together) == len(alone)
    for a, b in zip(alone, together):
        np.testing.assert_array_equal(a, b)
