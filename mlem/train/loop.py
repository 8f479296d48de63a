"""The loop behind ``python -m train``: :func:`train_and_evaluate` trains one ladder level in
a workdir, resuming from its newest readable checkpoint (:func:`resume_state`).

Batch ``s`` is a pure function of ``(seed, s)`` and the randomness of step ``s`` is
``fold_in(key, s)`` (:mod:`mlem.train.objective`), so a resumed run computes exactly what an
uninterrupted one would; :mod:`mlem.train.records` keeps its records equal too. At the steps
due, the loop logs, evaluates the held-out loss of the EMA parameters, writes a sample grid
and saves a checkpoint; a NaN/inf loss or parameter stops it before anything bad is saved.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from mlem import data, parallel, sampling
from mlem.files import save_grid
from mlem.models import registry
from mlem.sde import VPSDE
from mlem.train import checkpoint, distill, gaussian_fit, objective
from mlem.train.objective import TrainState
from mlem.train.records import (
    METRICS_FILE,
    WINDOW_FILE,
    MetricsWriter,
    NonFiniteLossError,
    Progress,
    load_window,
    save_window,
    wandb_mode,
)

__all__ = ["SAMPLE_SEED", "SAMPLE_STEPS", "heldout_loss", "make_sampler", "resume_state",
           "train_and_evaluate", "validate"]

SAMPLE_SEED = 1  # fixed initial noise and Brownian path of the sample grids
SAMPLE_STEPS = 100  # Euler–Maruyama steps of the (quick, visual-only) sample grids


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` naming the first field whose value cannot make a run."""
    t, o, e = config.training, config.optim, config.eval
    positive = {"training.num_steps": t.num_steps, "training.batch_size": t.batch_size,
                "training.log_every": t.log_every, "training.eval_every": t.eval_every,
                "training.checkpoint_every": t.checkpoint_every,
                "training.sample_every": t.sample_every,
                "training.keep_checkpoints": t.keep_checkpoints,
                "optim.learning_rate": o.learning_rate, "optim.grad_clip": o.grad_clip,
                "eval.batch_size": e.batch_size, "eval.num_batches": e.num_batches}
    non_negative = {"optim.warmup_steps": o.warmup_steps, "optim.weight_decay": o.weight_decay,
                    "training.num_sample_images": t.num_sample_images}
    for name, value in positive.items():
        if not (np.isfinite(value) and value > 0):
            raise ValueError(f"{name}: must be a positive number, got {value}; set "
                             f"--config.{name}=...")
    for name, value in non_negative.items():
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"{name}: must be >= 0, got {value}; set --config.{name}=...")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ValueError(f"training.ema_decay: must be in [0, 1), got {t.ema_decay}")
    distill.validate(config)


def make_sampler(model: Any, sde: VPSDE, num_steps: int = SAMPLE_STEPS
                 ) -> Callable[[Any, jax.Array, tuple[int, ...]], jax.Array]:
    """``(params, key, shape) → images`` by :func:`mlem.sampling.euler_maruyama` on the
    reverse SDE, then one denoising step ``x₀ ≈ (x − σ ε̂)/α`` at ``t_min``. For sample grids
    only. ``model``: anything with ``apply({"params": p}, x, t: (B,), train=False) → ε̂``."""
    ts = sde.time_grid(num_steps)

    def sample(params: Any, key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
        eps_fn = lambda x, t: model.apply(
            {"params": params}, x, jnp.full((x.shape[0],), t), train=False).astype(jnp.float32)
        init_key, path_key = jax.random.split(key)
        x, _ = sampling.euler_maruyama(sde.drift_from_eps(eps_fn), sde.diffusion,
                                       jax.random.normal(init_key, shape), ts, path_key)
        t = sde.t_min
        return (x - sde.sigma(t) * eps_fn(x, t)) / sde.alpha(t)

    return jax.jit(sample, static_argnums=2)


def _kept(manager) -> str:
    """What a failed run leaves behind, in words."""
    step = manager.latest_step()
    return ("no checkpoint had been written yet" if step is None
            else f"the last good checkpoint (step {step}) is kept")


_all_finite = jax.jit(lambda tree: jnp.all(jnp.stack(
    [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])))


# --- the training loop --------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Run:
    """Everything the loop needs, built once from the config."""

    config: ml_collections.ConfigDict
    workdir: Path
    mesh: Mesh
    init: TrainState  # fresh state (replicated); also the restore target
    train_step: Callable
    heldout_fn: Callable
    sampler: Callable
    pipeline: data.TrainPipeline
    heldout: np.ndarray  # (num_batches, B, H, W, C)
    gap_fn: Callable | None = None  # held-out distillation gap (params → float), if distilled


def _build(config: ml_collections.ConfigDict, workdir: Path, mesh: Mesh,
           teacher: distill.Teacher | None = None) -> _Run:
    """Data, model, optimizer and jitted functions; raises before anything is written."""
    train_source = data.get_source(config.data, "train")
    heldout = data.heldout_batches(data.get_source(config.data, "heldout"),
                                   config.eval.batch_size, config.eval.num_batches)
    pipeline = data.TrainPipeline(train_source, config.training.batch_size, config.seed,
                                  config.data.random_flip)
    sde = VPSDE(**config.sde)
    model, tx = objective.build_model(config), objective.make_optimizer(config.optim)
    shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    init = jax.jit(lambda k: objective.init_state(model, tx, k, shape),
                   out_shardings=parallel.replicated(mesh))(init_key)
    pair = None if teacher is None else (teacher.model, teacher.params)
    train_step = objective.make_train_step(model, tx, sde, config.training.ema_decay, train_key,
                                          mesh, pair, float(config.distill.weight))
    gap_fn = None
    if teacher is not None:
        gap_sum = objective.make_heldout_distill_gap(model, teacher.model, sde, mesh)
        teacher_params = jax.device_put(teacher.params, parallel.replicated(mesh))
        gap_fn = lambda params: objective.mean_heldout_loss(
            lambda p, x0, i: gap_sum(p, teacher_params, x0, i), params, heldout, mesh)
    return _Run(
        config=config, workdir=workdir, mesh=mesh, init=init, train_step=train_step,
        heldout_fn=objective.make_heldout_loss(model, sde, mesh),
        sampler=make_sampler(model, sde), pipeline=pipeline, heldout=heldout, gap_fn=gap_fn)


def heldout_loss(run: _Run, params: Any) -> float:
    """Mean held-out denoising loss of ``params`` over ``config.eval.num_batches`` batches."""
    return objective.mean_heldout_loss(run.heldout_fn, params, run.heldout, run.mesh)


def _on_step(run: _Run, state: TrainState, step: int, progress: Progress, manager,
             writer: MetricsWriter, bar: tqdm, final: bool) -> None:
    """Log / evaluate / sample / checkpoint when ``step`` is due (all of them when ``final``)."""
    cfg = run.config.training
    due = lambda every: final or step % every == 0
    if not any(due(e) for e in (cfg.log_every, cfg.eval_every, cfg.sample_every,
                                cfg.checkpoint_every)):
        return
    progress.sync(step, _kept(manager))
    if not bool(_all_finite(state)):
        raise NonFiniteLossError(f"parameters became non-finite by step {step}; "
                                 f"{_kept(manager)}; lower config.optim.learning_rate")
    if due(cfg.log_every) and progress.window:
        summary = progress.summary()
        writer.write(step, **summary)
        bar.set_postfix(loss=f"{summary['train_loss']:.4f}",
                        steps_per_s=f"{summary['steps_per_sec']:.2f}")
    if due(cfg.eval_every) and writer.latest("heldout_loss", step) is None:
        loss = heldout_loss(run, state.ema_params)
        gap = {} if run.gap_fn is None else {"heldout_distill_gap": run.gap_fn(state.ema_params)}
        writer.write(step, heldout_loss=loss, **gap)
        bar.write(f"step {step}: held-out loss {loss:.5f}")
    if due(cfg.sample_every) and cfg.num_sample_images > 0:
        _write_samples(run, state, step, writer)
    if due(cfg.checkpoint_every) and manager.latest_step() != step:
        save_window(run.workdir, step, progress.window, cfg.keep_checkpoints + 1)
        checkpoint.save(manager, step, state)
    progress.resumed_at = time.perf_counter()


def _write_samples(run: _Run, state: TrainState, step: int, writer: MetricsWriter) -> None:
    path = run.workdir / "samples" / f"step_{step:07d}.png"
    if path.exists():  # a resumed run that is already done
        return
    d = run.config.data
    shape = (run.config.training.num_sample_images, d.image_size, d.image_size, d.num_channels)
    images = np.asarray(run.sampler(state.ema_params, jax.random.key(SAMPLE_SEED), shape))
    if jax.process_index() == 0:
        save_grid(images, path)
        writer.image(step, path)


def _loop(run: _Run, state: TrainState, manager, writer: MetricsWriter) -> int:
    """Train from ``state.step`` to ``config.training.num_steps``; returns the final step."""
    start, num_steps = int(state.step), run.config.training.num_steps
    step = start
    progress = Progress(load_window(run.workdir, start) if start else None)
    sharding = parallel.batch_sharded(run.mesh)
    bar = tqdm(total=num_steps, initial=min(step, num_steps), unit="step", dynamic_ncols=True,
               desc=run.workdir.name, disable=jax.process_index() != 0)
    with bar, run.pipeline.iterate(step, max(step, num_steps)) as batches:
        for x0 in batches:
            state, metrics = run.train_step(state, parallel.shard_batch(x0, sharding))
            progress.pending.append(metrics)
            step += 1
            bar.update(1)
            _on_step(run, state, step, progress, manager, writer, bar, final=step == num_steps)
        if step == start:  # resumed a finished run: evaluate (once) and stop
            _on_step(run, state, step, progress, manager, writer, bar, final=True)
    return step


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path,
                       restart: bool = False) -> dict:
    """Train ``config`` in ``workdir``, resuming from its newest readable checkpoint.

    ``restart``: train from step 0 in a workdir whose checkpoints are all unreadable, after
    setting its history aside (:func:`resume_state`). Returns the final metrics: ``step``,
    ``heldout_loss`` and, when steps ran in this call, ``train_loss``, ``grad_norm`` and
    ``steps_per_sec`` of the last logging window.
    """
    workdir = Path(workdir)
    validate(config)
    if registry.gaussian_rank(config.model.level) is not None:
        return gaussian_fit.fit_and_save(config, workdir)  # the analytic bottom level
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.training.batch_size, mesh.size, "training.batch_size")
    parallel.check_batch_size(config.eval.batch_size, mesh.size, "eval.batch_size")
    teacher = distill.load_teacher(config, workdir) if distill.enabled(config) else None
    if teacher is not None:
        config = distill.with_record(config, teacher)  # its step and digest define the weights
    checkpoint.check_workdir(workdir, config)
    wandb_mode(config)
    run = _build(config, workdir, mesh, teacher)
    manager = checkpoint.make_manager(workdir, config.training.keep_checkpoints)
    writer = None
    try:
        state = resume_state(run, manager, restart)
        checkpoint.record_config(workdir, config, int(state.step))
        reached = max([int(state.step), *checkpoint.quarantined_steps(workdir)])
        writer = MetricsWriter(workdir, config, keep_through=reached)
        step = _loop(run, state, manager, writer)
    finally:
        manager.wait_until_finished()
        manager.close()
        if writer is not None:
            writer.close()
    last = {k: v for r in writer.records for k, v in r.items()}
    return {"step": step, **{k: v for k, v in last.items() if k != "step"}}


def resume_state(run: _Run, manager, restart: bool) -> TrainState:
    """The state to train from: the newest readable checkpoint (unreadable newer ones are
    moved to ``corrupt_checkpoints/``), or a fresh state.

    A workdir whose checkpoints are all unreadable is not silently restarted: that needs
    ``restart``, which first moves its metrics, unreadable checkpoints and sample grids to
    ``previous_runs/<n>/``. ``restart`` is refused while a checkpoint is readable.
    """
    workdir = run.workdir
    try:
        restored = checkpoint.restore_latest(manager, run.init, quarantine=True)
    except checkpoint.CheckpointNotFoundError:
        if not restart:
            raise
        restored = None
    primary = jax.process_index() == 0
    if restored is not None:
        if restart:
            raise ValueError(f"--restart: {workdir} has a readable checkpoint (step "
                             f"{restored[0]}); rerun without --restart to resume it, or use "
                             f"another --workdir to start afresh")
        if primary:
            print(f"resuming from step {restored[0]} ({workdir})", flush=True)
        return restored[1]
    quarantined = checkpoint.quarantined_steps(workdir)
    if quarantined and not restart:
        raise checkpoint.CheckpointNotFoundError(
            f"{workdir} has no readable checkpoint, but its run reached step {max(quarantined)} "
            f"(unreadable checkpoints {quarantined} in {workdir / checkpoint.CORRUPT_DIR}); "
            f"rerun with --restart to train from step 0 (the earlier metrics and checkpoints "
            f"are kept in {workdir / checkpoint.PREVIOUS_DIR}), or use another --workdir")
    history = (METRICS_FILE, checkpoint.CORRUPT_DIR, "samples", WINDOW_FILE)
    if restart and any((workdir / name).exists() for name in history):
        kept = checkpoint.set_aside_for_restart(workdir, history)
        if primary:
            print(f"restarting from step 0 (--restart); the earlier metrics, unreadable "
                  f"checkpoints and sample grids are kept in {kept}", flush=True)
    return run.init
