"""What one ladder level is trained to do, and one step of it: ε-prediction on the VP-SDE,
AdamW, EMA, held-out loss.

Closure factories build the jitted functions once (``make_train_step``,
``make_heldout_loss``). Randomness of step ``s`` is ``fold_in(key, s)``, so a resumed run
computes exactly what an uninterrupted one would. The held-out loss uses fixed noise and times
(the same for every level), so the γ fit can compare levels. A distilled level
(:mod:`mlem.train.distill`) also matches a teacher's ``ε̂`` on the same forward-process sample. The
loop behind ``python -m train`` is :mod:`mlem.train.loop`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import struct
from jax.sharding import Mesh

from mlem import parallel
from mlem.models import registry
from mlem.sde import VPSDE

__all__ = ["HELDOUT_SEED", "TrainState", "build_model", "distill_loss", "ema_update",
           "heldout_draws", "init_state", "make_heldout_distill_gap", "make_heldout_loss",
           "make_optimizer", "make_train_step", "mean_heldout_loss", "per_example_loss"]

Array = jax.Array
HELDOUT_SEED = 0  # fixed noise and t draws of the held-out loss, shared by every level


@struct.dataclass
class TrainState:
    """``step``: int32 scalar, optimizer steps taken; ``params``/``ema_params``: float32 pytrees."""

    step: Array
    params: Any
    ema_params: Any
    opt_state: optax.OptState


# --- pieces -------------------------------------------------------------------------------

def build_model(config: ml_collections.ConfigDict) -> nn.Module:
    """The ladder level ``config.model.level`` with the config's dropout and compute dtype
    (:func:`mlem.models.registry.get_level`)."""
    return registry.get_level(config)


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


def distill_loss(model: nn.Module, sde: VPSDE, params: Any, x0: Array, t: Array,
                 noise: Array, train: bool, dropout_key: Array | None, teacher: nn.Module,
                 teacher_params: Any, weight: float) -> tuple[Array, Array, Array]:
    """``(loss, denoise, distill)``, means over the batch: ``denoise = mean (ε̂ − ε)²``,
    ``distill = mean (ε̂ − sg[ε̂_teacher(x_t, t)])²`` on the same ``x_t``, and
    ``loss = (1 − weight)·denoise + weight·distill``. The teacher runs without dropout."""
    rngs = {"dropout": dropout_key} if dropout_key is not None else {}
    x_t = sde.marginal(x0, t, noise)
    eps_hat = model.apply({"params": params}, x_t, t, train=train, rngs=rngs)
    eps_hat = eps_hat.astype(jnp.float32)
    target = jax.lax.stop_gradient(
        teacher.apply({"params": teacher_params}, x_t, t, train=False).astype(jnp.float32))
    denoise = jnp.mean(jnp.square(eps_hat - noise))
    distill = jnp.mean(jnp.square(eps_hat - target))
    return (1.0 - weight) * denoise + weight * distill, denoise, distill


def ema_update(ema: Any, params: Any, step: Array, decay: float) -> Any:
    """``ema ← d·ema + (1−d)·params`` with ``d = min(decay, (1+step)/(10+step))`` (warm-up)."""
    d = jnp.minimum(decay, (1.0 + step) / (10.0 + step)).astype(jnp.float32)
    return jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)


# --- jitted functions ---------------------------------------------------------------------

def make_train_step(model: nn.Module, tx: optax.GradientTransformation, sde: VPSDE,
                    ema_decay: float, key: Array, mesh: Mesh,
                    teacher: tuple[nn.Module, Any] | None = None, weight: float = 0.0
                    ) -> Callable[[TrainState, Array], tuple[TrainState, dict]]:
    """``(state, x0: (B, H, W, C)) → (state, {'loss', 'grad_norm'})``, jitted on ``mesh``.

    ``t ~ U(t_min, 1)``, ``ε ~ N(0, I)`` and dropout are drawn from ``fold_in(key, step)``.
    With ``teacher = (model, ema_params)`` the loss is :func:`distill_loss` with ``weight`` on
    the same draws, and the metrics add ``denoise_loss`` and ``distill_loss``; the teacher's
    parameters are an argument of the jitted step, not a constant baked into it.
    """

    def train_step(state: TrainState, x0: Array, teacher_params: Any
                   ) -> tuple[TrainState, dict]:
        t_key, noise_key, dropout_key = jax.random.split(jax.random.fold_in(key, state.step), 3)
        t = jax.random.uniform(t_key, (x0.shape[0],), minval=sde.t_min, maxval=1.0)
        noise = jax.random.normal(noise_key, x0.shape)
        if teacher is None:
            loss_fn = lambda p: (jnp.mean(
                per_example_loss(model, sde, p, x0, t, noise, True, dropout_key)), {})
        else:
            def loss_fn(p):
                loss, denoise, distill = distill_loss(model, sde, p, x0, t, noise, True,
                                                      dropout_key, teacher[0], teacher_params,
                                                      weight)
                return loss, {"denoise_loss": denoise, "distill_loss": distill}
        (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = ema_update(state.ema_params, params, state.step, ema_decay)
        new = TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)
        return new, {"loss": loss, "grad_norm": optax.global_norm(grads), **parts}

    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    step = jax.jit(train_step, in_shardings=(rep, shard, rep), out_shardings=(rep, rep))
    teacher_params = None if teacher is None else jax.device_put(teacher[1], rep)
    return lambda state, x0: step(state, x0, teacher_params)


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


def mean_heldout_loss(loss_sum: Callable, params: Any, batches: Any, mesh: Mesh) -> float:
    """Mean per-example held-out loss of ``params`` over ``batches (n, B, H, W, C)``, with
    ``loss_sum`` from :func:`make_heldout_loss` (batch ``i`` uses the draws of index ``i``)."""
    sharding = parallel.batch_sharded(mesh)
    total = sum(loss_sum(params, parallel.shard_batch(x0, sharding), index)
                for index, x0 in enumerate(batches))
    return float(total) / (batches.shape[0] * batches.shape[1])


def make_heldout_distill_gap(model: nn.Module, teacher: nn.Module, sde: VPSDE, mesh: Mesh
                             ) -> Callable[[Any, Any, Array, int], Array]:
    """``(params, teacher_params, x0: (B, H, W, C), batch_index) → Σ_b mean_pixels (ε̂ −
    ε̂_teacher)²`` on the draws of :func:`heldout_draws` (no dropout): the distillation gap."""

    def gap_sum(params: Any, teacher_params: Any, x0: Array, index: Array) -> Array:
        t, noise = heldout_draws(sde, index, x0.shape)
        x_t = sde.marginal(x0, t, noise)
        eps = lambda m, p: m.apply({"params": p}, x_t, t, train=False).astype(jnp.float32)
        return jnp.sum(jnp.mean(jnp.square(eps(model, params) - eps(teacher, teacher_params)),
                                axis=(1, 2, 3)))

    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(gap_sum, in_shardings=(rep, rep, shard, rep), out_shardings=rep)


def make_heldout_loss(model: nn.Module, sde: VPSDE, mesh: Mesh
                      ) -> Callable[[Any, Array, int], Array]:
    """``(params, x0: (B, H, W, C), batch_index) → summed per-example loss`` (float32 scalar)
    on the draws of :func:`heldout_draws`, without dropout."""

    def loss_sum(params: Any, x0: Array, index: Array) -> Array:
        t, noise = heldout_draws(sde, index, x0.shape)
        return jnp.sum(per_example_loss(model, sde, params, x0, t, noise, False))

    rep, shard = parallel.replicated(mesh), parallel.batch_sharded(mesh)
    return jax.jit(loss_sum, in_shardings=(rep, shard, rep), out_shardings=rep)
