"""Samples from a trained ladder with EM or ML-EM: the library behind ``python -m sample``.

A run loads the ladder's EMA checkpoints (``config.levels``, subdirectories of a workdir),
measures each level's FLOPs at the sampling batch size, builds the probability schedule and
generates images batch by batch on a :class:`~jax.sharding.Mesh` of all devices.

Coupling (docs/design.md §3): sample ``i`` of seed ``s`` takes its initial noise and its own
Brownian path (:class:`mlem.brownian.SamplePaths`) from ``fold_in(fold_in(key(s), 0), i)``,
so it is the same sample whatever the batch size, the number of batches or the device count.
The path is defined on a fixed fine grid of ``path_steps`` steps and a run with ``steps``
(dividing ``path_steps``) sums consecutive fine increments inside the solver's scan, so runs
with different step counts share their noise and paths, and no run stores its increments.
The Bernoulli draws of ML-EM are shared by a batch: batch ``b`` draws them from
``fold_in(fold_in(key(s), 1), b)``; a batch is one realisation of them.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh
from tqdm import tqdm

from mlem import brownian, cost, parallel, schedules, solvers
from mlem import ladder as ladders
from mlem.files import read_json, save_grid
from mlem.ladder import Ladder
from mlem.sde import check_grid

__all__ = ["COST_MODELS", "GRID_IMAGES", "METHODS", "SCHEDULES", "batch_inputs", "build_schedule",
           "check_request", "default_out", "generate", "level_seconds", "load_variances", "run",
           "sample_stats", "switch_levels", "time_grids", "with_overrides", "write_outputs"]

Array = jax.Array
METHODS = ("mlem", "em", "switch")
SCHEDULES = ("constant", "variance", "file")
COST_MODELS = ("time", "flops")
GRID_IMAGES = 64  # samples shown in samples.png


# --- time grids and schedules -------------------------------------------------------------

def time_grids(ladder: Ladder, steps: int, path_steps: int, grid: str = "uniform",
               stochastic: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(ts, path_ts)``: the ``steps + 1`` solver times, a sub-grid of the path's fine grid
    of kind ``grid`` (``uniform``, ``quadratic``, ``logsnr`` or ``karras``:
    :meth:`VPSDE.time_grid`). A deterministic solver (``stochastic`` false) draws no
    Brownian path, so its ``steps`` need not divide ``path_steps``: then both are its own
    grid."""
    if steps >= 1 and path_steps >= 1 and path_steps % steps and not stochastic:
        ts = np.asarray(ladder.sde.time_grid(steps, check_grid(grid)), np.float32)
        return ts, ts
    if path_steps < 1 or steps < 1 or path_steps % steps:
        raise ValueError(f"steps={steps} must divide sampling.path_steps={path_steps} (the grid "
                         f"of the shared Brownian path); pick a divisor or set "
                         f"--config.sampling.path_steps to a multiple of {steps}")
    path_ts = np.asarray(ladder.sde.time_grid(path_steps, check_grid(grid)), np.float32)
    return np.asarray(brownian.coarse_grid(path_ts, steps)), path_ts


def build_schedule(config: ml_collections.ConfigDict, names: Sequence[str],
                   level_costs: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """``(N, K)`` ML-EM probabilities from ``config.sampling.schedule`` on the grid ``ts``
    (:func:`mlem.schedules.build`).

    ``names`` are ``config.levels`` (as recorded by ``analysis.variance``).
    ``constant``: ``sampling.probs``; ``variance``: ``p_k(τ) = min(1, c·sqrt(V_k(τ)/C_k))``
    from ``sampling.variance_file`` (default ``<results_dir>/variance/variances.json``), with
    increment costs ``C_k`` from ``level_costs`` (seconds or FLOPs per call, see
    ``sampling.cost_model``) and ``c = sampling.c``, or, when ``sampling.top_evals > 0``, the
    ``c`` that evaluates the top level that many times per solve in expectation;
    ``file``: ``sampling.schedule_file``.
    """
    sampling, name = config.sampling, config.sampling.schedule
    if name not in SCHEDULES:
        raise ValueError(f"schedule: must be one of {', '.join(SCHEDULES)}, got {name!r}")
    inputs: dict[str, Any] = {}  # constant and file: the probabilities as given (c = 1)
    if name == "constant":
        inputs["probs"] = tuple(sampling.probs)
        if len(inputs["probs"]) != len(names):
            raise ValueError(f"sampling.probs: has {len(inputs['probs'])} entries but the "
                             f"ladder has {len(names)} levels; give one probability per level")
    elif name == "variance":
        path = sampling.variance_file or Path(config.results_dir) / "variance" / "variances.json"
        inputs["bin_edges"], inputs["variances"] = load_variances(path, names)
        top = float(sampling.top_evals)
        inputs.update({"top_evals": top} if top > 0 else {"c": sampling.c})
    else:
        inputs["file"] = _existing(sampling.schedule_file, "sampling.schedule_file",
                                   "write one with mlem.schedules.save")
    return schedules.build(name, ts, level_costs, **inputs)[1]


def load_variances(path: str | Path, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(bin_edges (bins + 1,), variances (bins, K))`` from ``analysis.variance``'s JSON."""
    path = _existing(path, "sampling.variance_file",
                     "measure V_k with python -m analysis.variance")
    record = read_json(path, "variance file")
    if not isinstance(record, dict) or not {"variances", "bin_edges"} <= set(record):
        raise ValueError(f"variance file {path}: no 'variances'/'bin_edges' entries; rerun "
                         f"python -m analysis.variance")
    variances = np.asarray(record["variances"], np.float64)
    saved = list(record.get("levels", names))
    if variances.ndim != 2 or variances.shape[1] != len(names) or len(saved) != len(names):
        raise ValueError(f"variance file {path}: has {variances.shape[-1]} levels but the ladder "
                         f"has {len(names)}; rerun python -m analysis.variance for this ladder")
    if saved != list(names):
        raise ValueError(f"variance file {path}: measured levels {saved}, but the ladder is "
                         f"{list(names)}; rerun python -m analysis.variance for this ladder")
    return np.asarray(record["bin_edges"], np.float64), variances


def _existing(path: str | Path, name: str, fix: str) -> Path:
    if not path or not Path(path).is_file():
        raise FileNotFoundError(f"{name}: file {str(path)!r} not found; {fix} or set "
                                f"--config.{name}=PATH")
    return Path(path)


# --- generation ---------------------------------------------------------------------------

@functools.cache
def _inputs_fn(mesh: Mesh, batch_size: int, image_shape: tuple[int, ...]):
    batch, replicated = parallel.batch_sharded(mesh), parallel.replicated(mesh)

    def inputs(seed_key, first, batch_index, path_ts):
        sample_root, draw_root = jax.random.fold_in(seed_key, 0), jax.random.fold_in(seed_key, 1)
        keys = jax.vmap(jax.random.split)(brownian.sample_keys(sample_root, first, batch_size))
        x0 = jax.vmap(lambda k: jax.random.normal(k, image_shape, jnp.float32))(keys[:, 0])
        path = brownian.SamplePaths(keys[:, 1], path_ts)
        return x0, path, jax.random.fold_in(draw_root, batch_index)

    shardings = (batch, brownian.SamplePaths(batch, replicated), replicated)
    return jax.jit(inputs, out_shardings=shardings)


def batch_inputs(seed: int, batch_index: int, batch_size: int, image_shape: tuple[int, ...],
                 path_ts: np.ndarray, mesh: Mesh | None = None
                 ) -> tuple[Array, brownian.SamplePaths, Array]:
    """Initial noise, Brownian paths and Bernoulli key of batch ``batch_index``.

    The batch holds samples ``batch_index · batch_size …`` of seed ``seed``; each sample's
    noise and path depend only on ``(seed, its index)`` (see the module docstring).

    Args:
      image_shape: ``(H, W, C)`` of one sample.
      path_ts: ``(path_steps + 1,)`` fine grid on which the Brownian paths are defined.

    Returns:
      ``x0 (B, H, W, C)`` and the paths (keys ``(B,)``), sharded on the batch axis over
      ``mesh``, and the key of the batch's Bernoulli draws.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    fn = _inputs_fn(mesh, int(batch_size), tuple(image_shape))
    return fn(jax.random.key(seed), batch_index * batch_size, batch_index,
              jnp.asarray(path_ts, jnp.float32))


def generate(ladder: Ladder, method: str, probs: np.ndarray | None, ts: np.ndarray, *,
             num_samples: int, batch_size: int, seed: int, em_level: int = -1,
             path_ts: np.ndarray | None = None, mesh: Mesh | None = None,
             progress: bool = False, solver: str = "sde", switch_at: float = 0.5
             ) -> tuple[np.ndarray, dict[str, Any]]:
    """``num_samples`` samples with EM (level ``em_level``, 1-based, -1 = top), ML-EM, or
    deterministic switching (``switch``: level ``em_level`` on the steps that start before
    ``switch_at`` of the solver time, the top level after; :func:`switch_levels`).

    ``solver`` (:data:`mlem.solvers.SOLVERS`) is the update rule: ``sde`` (EM / ML-EM on the
    reverse SDE), ``ode`` (Euler on the PF-ODE), ``ddim``, ``ancestral``, ``dpmpp2m``,
    ``dpmpp2m-sde`` or ``heun``; ``em``, ``mlem`` and ``switch`` then mean the single-level,
    multilevel and switching solves with that rule.

    Args:
      probs: ``(N, K)`` or ``(K,)`` ML-EM probabilities (ignored by EM).
      ts: ``(N + 1,)`` solver times; a sub-grid of ``path_ts`` (default ``ts``).
      batch_size: samples per batch; must divide ``num_samples`` and split over the devices.

    Returns:
      float32 ``(num_samples, H, W, C)`` samples (unclipped) and stats: ``evals_per_batch``
      ``(batches, K)``, ``evals_per_level`` ``(K,)`` (mean per sample), ``wall_seconds``
      (including compilation) and ``compile_seconds``.
    """
    mesh = parallel.make_mesh() if mesh is None else mesh
    level = check_request(method, em_level, ladder.num_levels, num_samples, batch_size, mesh.size)
    solvers.check_solver(solver)
    path_ts = np.asarray(ts if path_ts is None else path_ts, np.float32)
    num_steps = len(ts) - 1
    if not np.allclose(brownian.coarse_grid(path_ts, num_steps), ts, rtol=0, atol=1e-6):
        raise ValueError("ts: must be the sub-grid brownian.coarse_grid(path_ts, N) of path_ts")
    sharded = ladders.on_mesh(ladder, mesh)
    samples, evals = [], []
    with cost.compile_timer() as compile_seconds:
        start = time.perf_counter()
        batches = range(num_samples // batch_size)
        for b in tqdm(batches, desc=f"{method} {solver} {num_steps} steps", disable=not progress):
            x0, path, key = batch_inputs(seed, b, batch_size, ladder.image_shape, path_ts, mesh)
            if level is None:
                x, stats = ladders.mlem(sharded, probs, x0, ts, key, path=path, solver=solver)
                evals.append(np.asarray(stats["evals"]))
            elif method == "switch":
                x, stats = ladders.switching(
                    sharded, switch_levels(level, switch_at, ts, ladder.num_levels), x0, ts, key,
                    path=path, solver=solver)
                evals.append(np.asarray(stats["evals"]))
            else:
                x, stats = ladders.em(sharded, level, x0, ts, key, path=path, solver=solver)
                evals.append(np.eye(ladder.num_levels, dtype=np.int64)[level - 1]
                             * int(stats["evals"][0]))  # N, or 2N − 1 for heun
            samples.append(_to_host(x))
        wall = time.perf_counter() - start
    evals = np.stack(evals).astype(np.int64)
    return np.concatenate(samples), {
        "evals_per_batch": evals, "evals_per_level": evals.mean(0),
        "wall_seconds": wall, "compile_seconds": min(compile_seconds(), wall)}


def _to_host(x: Array) -> np.ndarray:
    """The whole batch on this host (gathered from every process on a multi-host mesh)."""
    if jax.process_count() > 1:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x, np.float32)


def switch_levels(level: int, switch_at: float, ts: np.ndarray, num_levels: int) -> np.ndarray:
    """``(N,)`` per-step levels of switching: ``level`` (1…K) on the steps that start before
    ``switch_at`` of the solver time (high noise), the top level ``K`` after."""
    if not 0.0 <= switch_at <= 1.0:
        raise ValueError(f"switch_at: a fraction of the solver time in [0, 1], got {switch_at}")
    early = np.asarray(ts[:-1]) < switch_at * float(ts[-1])
    return np.where(early, level, num_levels).astype(np.int32)


def check_request(method: str, em_level: int, num_levels: int, num_samples: int,
                  batch_size: int, num_devices: int) -> int | None:
    """Validate a request; return the EM level (1…K; for ``switch`` the early level, named
    ``switch_level`` in errors), or ``None`` for ML-EM."""
    if method not in METHODS:
        raise ValueError(f"method: must be one of {', '.join(METHODS)}, got {method!r}")
    if num_samples < 1 or batch_size < 1 or num_samples % batch_size:
        raise ValueError(f"num_samples={num_samples} must be a positive multiple of "
                         f"batch_size={batch_size}; change --num_samples or --batch_size")
    parallel.check_batch_size(batch_size, num_devices, "sampling.batch_size")
    if method == "mlem":
        return None
    name = "switch_level" if method == "switch" else "em_level"
    return ladders.level_index(em_level, num_levels, name) + 1


# --- the whole run behind python -m sample ------------------------------------------------

def with_overrides(config: ml_collections.ConfigDict, **values: Any) -> ml_collections.ConfigDict:
    """A copy of ``config`` with ``config.sampling.<name> = value`` for every non-None value."""
    config = ml_collections.ConfigDict(config.to_dict())
    for name, value in values.items():
        if value is not None:
            if name not in config.sampling:
                raise ValueError(f"sampling.{name}: not a field of the sample config")
            config.sampling[name] = value
    return config


def default_out(workdir: str | Path, config: ml_collections.ConfigDict) -> Path:
    """``<workdir>/samples/<mlem_<schedule>|em_level<k>>[_<solver>][_<grid>]_<steps>steps_seed<seed>``
    (solver and grid named only when they are not the defaults ``sde`` and ``uniform``)."""
    s = config.sampling
    level = s.em_level if s.em_level > 0 else len(config.levels)
    tag = f"mlem_{s.schedule}" if s.method == "mlem" else f"em_level{level}"
    if s.method == "switch":
        tag = f"switch_level{_early_level(config)}_at{s.get('switch_at', 0.5):g}"
    for name, default in (("solver", "sde"), ("grid", "uniform")):
        if s.get(name, default) != default:
            tag += f"_{s[name]}"
    return Path(workdir) / "samples" / f"{tag}_{s.steps}steps_seed{s.seed}"


def run(config: ml_collections.ConfigDict, workdir: str | Path,
        out: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Load the ladder, build the schedule, generate, write ``out``; return the stats.

    Writes ``samples.png`` (the first 64 samples), ``samples.npz`` (``samples`` clipped to
    [-1, 1] float32, ``ts``, and ``probs`` (N, K) for ML-EM) and ``sample_stats.json``.
    """
    s = config.sampling
    mesh = parallel.make_mesh()
    batch_size = min(s.batch_size, s.num_samples)
    check_request(s.method, _early_level(config) if s.method == "switch" else s.em_level,
                  len(config.levels), s.num_samples, batch_size, mesh.size)
    solver = solvers.check_solver(s.solver)
    grid = check_grid(s.grid)
    ladder = ladders.load_ladder(config, workdir)
    ts, path_ts = time_grids(ladder, s.steps, s.path_steps, grid,
                             solver not in solvers.DETERMINISTIC)
    flops = ladders.measure_flops(ladder, batch_size)
    seconds = level_seconds(config, ladder, batch_size)
    probs = None
    if s.method == "mlem":
        level_costs = flops if seconds is None else seconds
        probs = build_schedule(config, tuple(config.levels), level_costs, ts)
    samples, gen = generate(ladder, s.method, probs, ts, num_samples=s.num_samples,
                            batch_size=batch_size, seed=s.seed,
                            em_level=_early_level(config) if s.method == "switch" else s.em_level,
                            switch_at=float(s.switch_at),
                            path_ts=path_ts, mesh=mesh, progress=progress, solver=solver)
    out = default_out(workdir, config) if out is None else Path(out)
    stats = {**sample_stats(config, ladder, flops, probs, gen, batch_size, mesh, ts),
             "level_seconds_per_call": None if seconds is None else seconds.tolist(),
             "out": str(out)}
    write_outputs(out, samples, ts, probs, stats)
    return stats


def level_seconds(config: ml_collections.ConfigDict, ladder: Ladder,
                  batch_size: int) -> np.ndarray | None:
    """Seconds per call of each level at ``batch_size`` when the schedule is priced in time
    (ML-EM, ``variance`` schedule, ``sampling.cost_model='time'``), else ``None``."""
    s = config.sampling
    model = s.cost_model
    if model not in COST_MODELS:
        raise ValueError(f"sampling.cost_model: must be one of {', '.join(COST_MODELS)}, got "
                         f"{model!r}")
    if s.method != "mlem" or s.schedule != "variance" or model != "time":
        return None
    return ladders.level_seconds(ladder, batch_size)


def sample_stats(config: ml_collections.ConfigDict, ladder: Ladder, flops: np.ndarray,
                 probs: np.ndarray | None, gen: dict[str, Any], batch_size: int,
                 mesh: Mesh, ts: np.ndarray) -> dict[str, Any]:
    """The JSON record of a run: realised FLOPs per sample ``Σ_k evals_k · c_k``, expected ones
    (each step's level calls counted: :func:`mlem.solvers.calls_per_step`) and timings."""
    s = config.sampling
    evals = gen["evals_per_level"]
    calls = solvers.calls_per_step(solvers.for_vpsde(ladder.sde, s.solver, [])[1], ts)
    device = mesh.devices.flat[0]
    return {
        "method": s.method, "solver": s.solver, "grid": s.grid,
        "steps": s.steps, "path_steps": s.path_steps, "seed": s.seed,
        "num_samples": s.num_samples, "batch_size": batch_size,
        "em_level": None if s.method != "em" else (s.em_level if s.em_level > 0
                                                   else ladder.num_levels),
        **({"switch_level": _early_level(config), "switch_at": float(s.switch_at)}
           if s.method == "switch" else {}),
        "schedule": s.schedule if s.method == "mlem" else None,
        "cost_model": s.cost_model if s.method == "mlem" else None,
        "levels": list(ladder.names), "level_flops": flops.tolist(),
        "level_steps_restored": list(ladder.steps),
        "level_param_sha256": list(ladder.digests),
        "allow_older_checkpoints": bool(config.allow_older_checkpoints),
        "evals_per_level": evals.tolist(), "evals_per_batch": gen["evals_per_batch"].tolist(),
        "realised_flops_per_sample": float(evals @ flops),
        "expected_flops_per_sample": (cost.expected_cost(probs, flops, calls=calls)
                                      if probs is not None else float(evals @ flops)),
        "em_top_level_flops_per_sample": float(np.sum(calls) * flops[-1]),
        "wall_seconds_including_compile": gen["wall_seconds"],
        "wall_seconds_excluding_compile": gen["wall_seconds"] - gen["compile_seconds"],
        "compile_seconds": gen["compile_seconds"],
        "device": {"platform": device.platform, "kind": device.device_kind,
                   "count": int(mesh.size)},
    }


def _early_level(config: ml_collections.ConfigDict) -> int:
    """``sampling.switch_level``: the level of ``--method switch`` before ``switch_at``."""
    return int(config.sampling.switch_level)


def write_outputs(out: Path, samples: np.ndarray, ts: np.ndarray, probs: np.ndarray | None,
                  stats: dict[str, Any]) -> None:
    """``samples.png``, ``samples.npz`` and ``sample_stats.json`` in ``out`` (process 0 only)."""
    if jax.process_index() != 0:
        return
    out.mkdir(parents=True, exist_ok=True)
    samples = np.clip(samples, -1.0, 1.0).astype(np.float32)
    arrays = {"samples": samples, "ts": np.asarray(ts, np.float32)}
    if probs is not None:
        arrays["probs"] = np.asarray(probs, np.float32)
    np.savez(out / "samples.npz", **arrays)
    save_grid(samples[:GRID_IMAGES], out / "samples.png")
    (out / "sample_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
