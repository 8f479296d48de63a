"""Data parallelism with ``jax.sharding`` (docs/design.md §7).

One process per host; all devices form a 1-D :class:`~jax.sharding.Mesh` with axis
``'data'``. Parameters and optimizer state are replicated, batches are split along their
first axis. The same code runs on one CPU, on 8 fake CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=8``) and on a multi-host GPU cluster or
TPU pod, where :func:`maybe_initialize_distributed` must run before any other JAX call.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_AXIS", "SOLVE_THREADS", "batch_sharded", "check_batch_size", "make_mesh",
           "map_concurrently", "maybe_initialize_distributed", "multihost_requested",
           "replicated", "shard_batch"]

DATA_AXIS = "data"
# Independent solves in flight at once (map_concurrently). On a CPU one XLA computation does
# not keep every core busy, so two threads finish sooner; on an accelerator they overlap
# dispatch. MLEM_SOLVE_THREADS=1 runs them one at a time. Nothing that is *timed* goes
# through here (docs/design.md §3, §7).
SOLVE_THREADS = max(1, int(os.environ.get("MLEM_SOLVE_THREADS", "2")))


def multihost_requested(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the environment describes a job of several processes.

    Recognised (the same variables ``jax.distributed.initialize`` reads):

    - ``JAX_COORDINATOR_ADDRESS`` (with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``): explicit;
    - Slurm: ``SLURM_JOB_ID`` and ``SLURM_STEP_NODELIST`` with ``SLURM_NTASKS > 1`` (``srun``);
    - Open MPI: ``OMPI_MCA_orte_hnp_uri`` with ``OMPI_COMM_WORLD_SIZE > 1`` (``mpirun``);
    - Cloud TPU pods: ``TPU_PROCESS_ADDRESSES`` or ``TPU_WORKER_HOSTNAMES`` naming > 1 host;
    - ``MLEM_DISTRIBUTED=1``: force ``jax.distributed.initialize()`` and let JAX detect the
      cluster itself (e.g. a TPU pod that only exposes its topology through GCE metadata).
    """
    env = os.environ if environ is None else environ
    if env.get("MLEM_DISTRIBUTED") == "1" or env.get("JAX_COORDINATOR_ADDRESS"):
        return True
    if "SLURM_JOB_ID" in env and "SLURM_STEP_NODELIST" in env:
        if int(env.get("SLURM_NTASKS", "1")) > 1:
            return True
    if "OMPI_MCA_orte_hnp_uri" in env and int(env.get("OMPI_COMM_WORLD_SIZE", "1")) > 1:
        return True
    tpu_hosts = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
    return len([h for h in tpu_hosts.split(",") if h]) > 1


def maybe_initialize_distributed(environ: Mapping[str, str] | None = None) -> bool:
    """Call ``jax.distributed.initialize()`` iff :func:`multihost_requested`; say if it did.

    Must run before any JAX computation. ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` are
    passed on when set (JAX reads ``JAX_COORDINATOR_ADDRESS`` itself); otherwise JAX
    auto-detects them from the cluster environment.
    """
    env = os.environ if environ is None else environ
    if not multihost_requested(env) or jax.distributed.is_initialized():
        return False
    kwargs = {}
    if "JAX_NUM_PROCESSES" in env:
        kwargs["num_processes"] = int(env["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in env:
        kwargs["process_id"] = int(env["JAX_PROCESS_ID"])
    jax.distributed.initialize(**kwargs)
    return True


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: all devices of all processes), axis ``'data'``."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimizer state, scalars)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading (batch) axis is split over the ``'data'`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, num_devices: int, name: str = "training.batch_size") -> None:
    """Raise ``ValueError`` unless ``batch_size`` splits evenly over ``num_devices``."""
    if batch_size < 1 or batch_size % num_devices:
        fix = max(num_devices, batch_size - batch_size % num_devices)
        raise ValueError(
            f"{name}={batch_size} is not divisible by the device count {num_devices}; "
            f"use a multiple of {num_devices}, e.g. --config.{name}={fix}")


def shard_batch(batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """Place a host batch ``(B, ...)`` on the mesh, split along ``B``.

    Every process holds the same global batch (the pipeline is a pure function of
    ``(seed, step)``) and each device receives only its own slice of it.
    """
    return jax.make_array_from_callback(batch.shape, sharding, lambda index: batch[index])


def map_concurrently(fn: Callable, items: Iterable, workers: int | None = None,
                     first_alone: bool = True) -> Iterator:
    """``fn(x)`` for each of ``items``, in order, with up to ``workers`` (default
    :data:`SOLVE_THREADS`) calls running at once on threads (JAX releases the GIL while a
    computation runs). Each result is what the call alone gives: the computations are the
    same, only their overlap changes. With ``first_alone`` the first item runs by itself
    (it compiles what the others reuse, once). A multi-host job runs one call at a time
    (its collectives must come in the same order on every host). Yields lazily (wrap it in
    ``tqdm``)."""
    if workers is None:
        workers = SOLVE_THREADS if jax.process_count() == 1 else 1
    items = iter(items)
    if workers <= 1:
        yield from map(fn, items)
        return
    if first_alone:
        for x in items:
            yield fn(x)
            break
    with ThreadPoolExecutor(workers) as pool:
        yield from pool.map(fn, items)
