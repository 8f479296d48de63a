"""Training one ladder level: ε-prediction on the VP-SDE, AdamW, EMA, held-out loss.

Closure factories build the jitted functions once (``make_train_step``,
``make_heldout_loss``, ``make_sampler``); :func:`train_and_evaluate` is the loop behind
``python -m train``. Randomness of step ``s`` is ``fold_in(key, s)`` and batch ``s`` is a
pure function of ``(seed, s)``, so a resumed run computes exactly what an uninterrupted one
would. The held-out loss uses the EMA parameters on fixed data, noise and times (the same
for every level), so the γ fit can compare levels.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh
from PIL import Image
from tqdm import tqdm

from mlem import checkpoint, data, parallel
from mlem.models import registry
from mlem.sde import VPSDE

Array = jax.Array
HELDOUT_SEED = 0  # fixed noise and t draws of the held-out loss, shared by every level
SAMPLE_SEED = 1  # fixed initial noise and Brownian path of the sample grids
SAMPLE_STEPS = 100  # Euler–Maruyama steps of the (quick, visual-only) sample grids
METRICS_FILE = "metrics.jsonl"
WINDOW_FILE = "log_window.json"  # per-step metrics not yet logged, at each checkpoint


class NonFiniteLossError(FloatingPointError):
    """The training loss or gradient became NaN/inf."""


@struct.dataclass
class TrainState:
    """``step``: int32 scalar, optimizer steps taken; ``params``/``ema_params``: float32 pytrees."""

    step: Array
    params: Any
    ema_params: Any
    opt_state: optax.OptState


# --- pieces -------------------------------------------------------------------------------

def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The ladder level ``config.model.level`` with the config's dropout and compute dtype."""
    return registry.get_model(config.model.level, dropout=config.model.dropout,
                            dtype=config.model.dtype)


def make_optimizer(optim: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """Global-norm clipping, then AdamW whose rate rises linearly from 0 over warm-up."""
    lr = optim.learning_rate
    if optim.warmup_steps > 0:
        lr = optax.linear_schedule(0.0, optim.learning_rate, optim.warmup_steps)
    return optax.chain(
        optax.clip_by_global_norm(optim.grad_clip),
        optax.adamw(lr, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay))


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: Array,
               image_shape: tuple[int, int, int]) -> TrainState:
    """Fresh state for images ``(H, W, C)``; EMA starts at the initial parameters."""
    x, t = jnp.zeros((1, *image_shape), jnp.float32), jnp.ones((1,), jnp.float32)
    params = model.init({"params": key, "dropout": key}, x, t, train=False)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params,
                      opt_state=tx.init(params))


def per_example_loss(model: nn.Module, sde: VPSDE, params: Any, x0: Array, t: Array,
                     noise: Array, train: bool, dropout_key: Array | None = None) -> Array:
    """``mean_pixels (ε̂(x_t, t) − ε)²`` with ``x_t = α(t) x₀ + σ(t) ε``.

    ``x0, noise: (B, H, W, C)``, ``t: (B,)`` → float32 ``(B,)``.
    """
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    x_t = sde.marginal(x0, t, noise)
    eps_hat = model.apply({"params": params}, x_t, t, train=train, rngs=rngs)
    return jnp.mean(jnp.square(eps_hat.astype(jnp.float32) - noise), axis=(1, 2, 3))


def ema_update(ema: Any, params: Any, step: Array, decay: float) -> Any:
    """``ema ← d·ema + (1−d)·params`` with ``d = min(decay, (1+step)/(10+step))`` (warm-up)."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


# --- jitted functions ---------------------------------------------------------------------

def make_train_step(model: nn.Module, tx: optax.GradientTransformation, sde: VPSDE,
                    ema_decay: float, key: Array, mesh: Mesh
                    ) -> Callable[[TrainState, Array], tuple[TrainState, dict]]:
    """``(state, x0: (B, H, W, C)) → (state, {'loss', 'grad_norm'})``, jitted on ``mesh``.

    ``t ~ U(t_min, 1)``, ``ε ~ N(0, I)`` and dropout are drawn from ``fold_in(key, step)``.
    """

    def train_step(state: TrainState, x0: Array) -> tuple[TrainState, dict]:
        t_key, noise_key, dropout_key = jax.random.split(jax.random.fold_in(key, state.step), 3)
        t = jax.random.uniform(t_key, (x0.shape[0],), minval=sde.t_min, maxval=1.0)
        noise = jax.random.normal(noise_key, x0.shape)
        loss_fn = lambda p: jnp.mean(
            per_example_loss(model, sde, p, x0, t, noise, True, dropout_key))
        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, state.step, ema_decay)
        new = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads)}

    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(train_step, in_shardings=(rep, shard), out_shardings=(rep, rep))


def heldout_draws(sde: VPSDE, index: Array | int, shape: tuple[int, ...]
                  ) -> tuple[Array, Array]:
    """The fixed ``(t: (B,), noise: shape)`` of held-out batch ``index``, ``shape = (B, ...)``.

    From ``fold_in(key(HELDOUT_SEED), index)``, identical for every level; times are
    stratified, ``t_j = t_min + (1 − t_min)(j + u_j)/B``, so every batch covers ``[t_min, 1]``.
    """
    t_key, noise_key = jax.random.split(jax.random.fold_in(jax.random.key(HELDOUT_SEED), index))
    b = shape[0]
    t = sde.t_min + (1.0 - sde.t_min) * (jnp.arange(b) + jax.random.uniform(t_key, (b,))) / b
    return t, jax.random.normal(noise_key, shape)


def make_heldout_loss(model: nn.Module, sde: VPSDE, mesh: Mesh
                      ) -> Callable[[Any, Array, int], Array]:
    """``(params, x0: (B, H, W, C), batch_index) → summed per-example loss`` (float32 scalar)
    on the draws of :func:`heldout_draws`, without dropout."""

    def loss_sum(params: Any, x0: Array, index: Array) -> Array:
        t, noise = heldout_draws(sde, index, x0.shape)
        return jnp.sum(per_example_loss(model, sde, params, x0, t, noise, False))

    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(loss_sum, in_shardings=(rep, shard, rep), out_shardings=rep)


def make_sampler(model: nn.Module, sde: VPSDE, num_steps: int = SAMPLE_STEPS
                 ) -> Callable[[Any, Array, tuple[int, ...]], Array]:
    """``(params, key, shape) → images`` by Euler–Maruyama on the reverse SDE, then one
    denoising step ``x₀ ≈ (x − σ ε̂)/α`` at ``t_min``. For sample grids only."""
    ts = sde.time_grid(num_steps)

    def sample(params: Any, key: Array, shape: tuple[int, ...]) -> Array:
        eps_fn = lambda x, t: model.apply(
            {"params": params}, x, jnp.full((x.shape[0],), t), train=False).astype(jnp.float32)
        drift = sde.drift_from_eps(eps_fn)
        init_key, path_key = jax.random.split(key)

        def em_step(x, inputs):
            tau, dt, k = inputs
            dw = jnp.sqrt(dt) * jax.random.normal(k, x.shape)
            return x + drift(x, tau) * dt + sde.diffusion(tau) * dw, None

        x0 = jax.random.normal(init_key, shape)
        inputs = (ts[:-1], jnp.diff(ts), jax.random.split(path_key, num_steps))
        x, _ = jax.lax.scan(em_step, x0, inputs)
        t = sde.t_min
        return (x - sde.sigma(t) * eps_fn(x, t)) / sde.alpha(t)

    return jax.jit(sample, static_argnums=2)


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


def _assert_finite(metrics: list[dict], first_step: int, kept: str) -> None:
    """Raise :class:`NonFiniteLossError` naming the first step with a NaN/inf loss or grad;
    ``kept`` says which checkpoint survives."""
    for i, m in enumerate(metrics):
        if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
            raise NonFiniteLossError(
                f"non-finite training loss {m['loss']} (gradient norm {m['grad_norm']}) at step "
                f"{first_step + i + 1}; {kept}; lower config.optim.learning_rate or check the "
                f"data")


def _kept(manager) -> str:
    """What a failed run leaves behind, in words."""
    step = manager.latest_step()
    return ("no checkpoint had been written yet" if step is None
            else f"the last good checkpoint (step {step}) is kept")


_all_finite = jax.jit(lambda tree: jnp.all(jnp.stack(
    [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)])))


# --- logging ------------------------------------------------------------------------------

class MetricsWriter:
    """Appends ``{"step": ..., <name>: value}`` lines to ``metrics.jsonl`` and logs to wandb.

    Only process 0 writes. On resume, records up to ``keep_through`` (the newest step that a
    checkpoint of the run reached, readable or moved aside) are kept and later ones dropped
    (the resumed run recomputes them identically). A record whose step and names are already
    in the file is not written again, so every (step, name) appears once and no history a
    checkpoint reached is ever cut.
    """

    def __init__(self, workdir: Path, config: ml_collections.ConfigDict, keep_through: int):
        self.path, self.primary = workdir / METRICS_FILE, jax.process_index() == 0
        self.records = self._truncate(keep_through)
        self.seen = {(r["step"], frozenset(r)) for r in self.records}
        self.wandb = _init_wandb(config, workdir) if self.primary else None

    def _truncate(self, keep_through: int) -> list[dict]:
        if not self.path.exists():
            return []
        records = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        kept = [r for r in records if r["step"] <= keep_through]
        if self.primary and len(kept) < len(records):
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def write(self, step: int, **values: float) -> None:
        record = {"step": step, **{k: float(v) for k, v in values.items()}}
        if (step, frozenset(record)) in self.seen:  # recomputed after a fallback: kept as is
            return
        self.seen.add((step, frozenset(record)))
        self.records.append(record)
        if self.primary:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def latest(self, name: str, step: int) -> float | None:
        values = [r[name] for r in self.records if r["step"] == step and name in r]
        return values[-1] if values else None

    def image(self, step: int, path: Path) -> None:
        if self.wandb is not None:
            import wandb
            self.wandb.log({"samples": wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def wandb_mode(config: ml_collections.ConfigDict) -> str:
    """``$WANDB_MODE`` if set, else ``config.wandb.mode`` (``'offline'`` by default)."""
    mode = os.environ.get("WANDB_MODE") or config.get("wandb", {}).get("mode", "offline")
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"config.wandb.mode: 'online', 'offline' or 'disabled', got {mode!r}")
    return mode


def _init_wandb(config: ml_collections.ConfigDict, workdir: Path):
    mode = wandb_mode(config)
    if mode == "disabled":
        return None
    try:
        import wandb
        return wandb.init(mode=mode, dir=str(workdir), name=workdir.name,
                          project=config.wandb.get("project") or "mlem",
                          entity=config.wandb.get("entity") or None, config=config.to_dict())
    except Exception as err:  # wandb is optional: any failure must not stop training
        warnings.warn(f"wandb.init(mode={mode!r}) failed, continuing without wandb: {err}",
                      stacklevel=2)
        return None


def save_grid(images: np.ndarray, path: Path) -> None:
    """Write ``(n, H, W, C)`` images in ``[-1, 1]`` as one PNG grid of ``ceil(√n)`` columns."""
    n, h, w, c = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * h, cols * w, c), np.uint8)
    pixels = np.round((np.clip(images, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        grid[r * h:(r + 1) * h, q * w:(q + 1) * w] = pixels[i]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if c == 1 else grid).save(path)


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


def _build(config: ml_collections.ConfigDict, workdir: Path, mesh: Mesh) -> _Run:
    """Data, model, optimizer and jitted functions; raises before anything is written."""
    train_source = data.get_source(config.data, "train")
    heldout = data.heldout_batches(data.get_source(config.data, "heldout"),
                                   config.eval.batch_size, config.eval.num_batches)
    pipeline = data.TrainPipeline(train_source, config.training.batch_size, config.seed,
                                  config.data.random_flip)
    sde, model, tx = VPSDE(**config.sde), build_model(config), make_optimizer(config.optim)
    shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    init_key, train_key = jax.random.split(jax.random.key(config.seed))
    init = jax.jit(lambda k: init_state(model, tx, k, shape),
                   out_shardings=parallel.replicated(mesh))(init_key)
    return _Run(
        config=config, workdir=workdir, mesh=mesh, init=init,
        train_step=make_train_step(model, tx, sde, config.training.ema_decay, train_key, mesh),
        heldout_fn=make_heldout_loss(model, sde, mesh), sampler=make_sampler(model, sde),
        pipeline=pipeline, heldout=heldout)


class _Progress:
    """Device metrics of recent steps; synced, checked and averaged on the host at events.

    ``window`` holds ``{"loss", "grad_norm"}`` of every step since the last log line; it is
    saved with each checkpoint (:func:`save_window`) so that the first line logged after a
    resume averages the same steps as an uninterrupted run's.
    """

    def __init__(self, window: list[dict] | None = None):
        self.pending: list[dict] = []
        self.window: list[dict] = list(window or [])
        self.timed_steps, self.train_seconds = 0, 0.0
        self.resumed_at = time.perf_counter()

    def sync(self, step: int, kept: str) -> None:
        values = [{k: float(v) for k, v in m.items()} for m in jax.device_get(self.pending)]
        _assert_finite(values, step - len(values), kept)
        self.window += values
        self.timed_steps += len(values)
        self.pending = []
        self.train_seconds += time.perf_counter() - self.resumed_at

    def summary(self) -> dict[str, float]:
        out = {"train_loss": float(np.mean([m["loss"] for m in self.window])),
               "grad_norm": float(np.mean([m["grad_norm"] for m in self.window])),
               "steps_per_sec": self.timed_steps / max(self.train_seconds, 1e-9)}
        self.window, self.timed_steps, self.train_seconds = [], 0, 0.0
        return out


def save_window(workdir: Path, step: int, window: list[dict], keep: int) -> None:
    """Record the unlogged per-step metrics at checkpoint ``step`` (the newest ``keep``)."""
    if jax.process_index() != 0:
        return
    path = workdir / WINDOW_FILE
    windows = json.loads(path.read_text()) if path.exists() else {}
    windows[str(step)] = window
    newest = sorted(windows, key=int)[-keep:]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: windows[k] for k in newest}))
    tmp.replace(path)


def load_window(workdir: Path, step: int) -> list[dict]:
    """The unlogged per-step metrics saved with checkpoint ``step`` (empty if none)."""
    path = workdir / WINDOW_FILE
    return json.loads(path.read_text()).get(str(step), []) if path.exists() else []


def heldout_loss(run: _Run, params: Any) -> float:
    """Mean held-out denoising loss of ``params`` over ``config.eval.num_batches`` batches."""
    sharding = parallel.batch_sharded(run.mesh)
    total = sum(run.heldout_fn(params, parallel.shard_batch(x0, sharding), index)
                for index, x0 in enumerate(run.heldout))
    return float(total) / (run.heldout.shape[0] * run.heldout.shape[1])


def _on_step(run: _Run, state: TrainState, step: int, progress: _Progress, manager,
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
        writer.write(step, heldout_loss=loss)
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
    progress = _Progress(load_window(run.workdir, start) if start else None)
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
    mesh = parallel.make_mesh()
    parallel.check_batch_size(config.training.batch_size, mesh.size, "training.batch_size")
    parallel.check_batch_size(config.eval.batch_size, mesh.size, "eval.batch_size")
    checkpoint.check_workdir(workdir, config)
    wandb_mode(config)
    run = _build(config, workdir, mesh)
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
