"""The two problems :mod:`analysis.learn_probs` learns on: the synthetic testbed and a trained
ladder. Each gives a :class:`Problem`: grids, costs, variances, the
training solve and the evaluation on realisations that training never sees.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from analysis import common, cost_error
from mlem import brownian, learn, parallel, sampling, testbed
from mlem import ladder as ladders


@dataclasses.dataclass(frozen=True)
class LearnConfig:
    """What :func:`run` trains and evaluates (one set for both problems; sizes per problem
    come from :func:`synthetic_config` and :func:`mnist_config`)."""

    # One run per (anchor, λ): the initial schedule is the variance-optimal one with `anchor`
    # expected top-level evaluations, and λ is in units of its MSE per its expected cost, so
    # λ = 1 keeps a variance-dominated MSE near the anchor: anchors spread the runs along the
    # cost axis, λ moves each along it (raw λ = λ · mse_scale / cost_scale, recorded).
    anchors: tuple[float, ...] = (1.0, 4.0, 16.0)
    lams: tuple[float, ...] = (1.0,)
    sgd_steps: int = 300
    learning_rate: float = 0.05
    train_realisations: int = 8  # realisations per SGD step
    draws: int = 2  # Bernoulli draws per realisation (leave-one-out baseline)
    num_tangents: int = 0  # 0: every basis direction (exact forward-mode pathwise term)
    bins: int = 8
    top_evals: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    train_seed_offset: int = 1000
    resamples: int = 1000
    p_min: float = learn.P_MIN


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """A ladder with its grids, costs, variances and three callables.

    ``solve_loss(probs, realisation, key, context) -> (MSE, draws)`` (pure JAX);
    ``train_batch(step, R) -> (realisations, keys (R, M))`` from training realisations;
    ``evaluate(probs (N, K)) -> (R_eval + R_sel,)`` MSE on each evaluation realisation, then
    on each of the ``num_selection`` selection realisations (the last columns), on which
    :func:`analysis.learn_probs.statistics` chooses and never judges.
    """

    name: str
    costs: np.ndarray  # (K,) per-level cost of one evaluation (FLOPs or declared)
    ts: np.ndarray  # (N + 1,) the operating grid
    variances: dict  # {"bin_edges", "variances" (bins, K)}: V_k(τ) for the baselines
    solve_loss: Callable[..., tuple[jax.Array, jax.Array]]
    train_batch: Callable[[int, int], tuple[Any, jax.Array]]
    evaluate: Callable[[np.ndarray], np.ndarray]
    context: Any = None
    meta: dict = dataclasses.field(default_factory=dict)
    num_selection: int = 0

    @property
    def num_levels(self) -> int:
        return len(self.costs)



def _mse(x: jax.Array, ref: jax.Array) -> jax.Array:
    return jnp.mean((x - ref) ** 2)


# --- the synthetic testbed ---------------------------------------------------------------------

def synthetic_problem(cfg: LearnConfig, gamma: float, *, num_levels: int = 6, steps: int = 64,
                      ref_steps: int = 256, batch_size: int = 32, eval_realisations: int = 16,
                      selection_realisations: int = 16,
                      variance_bins: int = 8, seed: int = 0) -> Problem:
    """The dyadic ladder (:func:`mlem.testbed.dyadic_hierarchy`, declared costs
    ``c_k = 2^{γk}``) on ``steps`` steps; reference: EM with the top level on ``ref_steps``.

    Realisation ``i`` (``batch_size`` samples, its own ``X_0``, Brownian path and Bernoulli
    key) comes from ``fold_in(key(seed), i)`` for evaluation and from
    ``fold_in(key(seed + train_seed_offset), i)`` for training.
    """
    h = testbed.dyadic_hierarchy(gamma, num_levels, seed=seed)
    ts_ref = np.linspace(0.0, 1.0, ref_steps + 1, dtype=np.float32)
    ts = np.asarray(brownian.coarse_grid(ts_ref, steps))

    def realisation(root, index):
        k_x0, k_path, k_bern = jax.random.split(jax.random.fold_in(root, index), 3)
        x0 = h.sample_x0(k_x0, batch_size)
        path = brownian.BatchPath(k_path, jnp.asarray(ts_ref))
        ref, _ = sampling.euler_maruyama(h.drifts[-1], h.diffusion, x0, ts_ref, None, path=path)
        return {"x0": x0, "path": k_path, "ref": ref}, k_bern

    make = jax.jit(jax.vmap(realisation, in_axes=(None, 0)))

    def solve_loss(probs, real, key, context=None):
        path = brownian.BatchPath(real["path"], jnp.asarray(ts_ref))
        x, stats = sampling.multilevel_euler_maruyama(h.drifts, probs, h.diffusion, real["x0"],
                                                      ts, key, path=path)
        return _mse(x, real["ref"]), stats["draws"]

    train_root = jax.random.key(seed + cfg.train_seed_offset)

    def train_batch(step, num):
        reals, k_bern = make(train_root, jnp.arange(num) + (step + 1) * num)
        return reals, jax.vmap(lambda k: jax.random.split(k, cfg.draws))(k_bern)

    total = eval_realisations + selection_realisations
    eval_reals, eval_keys = make(jax.random.key(seed), jnp.arange(total))

    @jax.jit
    def evaluate(probs):
        return jax.lax.map(lambda a: solve_loss(probs, *a)[0], (eval_reals, eval_keys))

    variances = _synthetic_variances(h, train_root, variance_bins)
    meta = {"gamma": gamma, "num_levels": num_levels, "steps": steps, "ref_steps": ref_steps,
            "batch_size": batch_size,
            "evaluation_seeds": f"fold_in(key({seed}), 0..{eval_realisations - 1})",
            "selection_seeds": f"fold_in(key({seed}), {eval_realisations}..{total - 1})",
            "training_seeds": f"fold_in(key({seed + cfg.train_seed_offset}), i)",
            "level_costs": h.costs.tolist(), "reference": f"EM, top level, {ref_steps} steps"}
    return Problem(f"synthetic dyadic ladder, gamma={gamma:g}", h.costs, ts, variances,
                   solve_loss, train_batch, lambda p: np.asarray(evaluate(jnp.asarray(p))),
                   meta=meta, num_selection=selection_realisations)


def _synthetic_variances(h: testbed.Hierarchy, root: jax.Array, bins: int,
                         samples: int = 256, per_bin: int = 4) -> dict:
    """``V_k`` per time bin from states of top-level EM trajectories (training keys)."""
    n = bins * per_bin
    k_x0, k_w = jax.random.split(jax.random.fold_in(root, 2**30))
    x0 = h.sample_x0(k_x0, samples)
    dw = jax.random.normal(k_w, (n, *x0.shape)) * np.sqrt(1.0 / n)

    def step(x, inputs):
        t, w = inputs
        return x + h.drifts[-1](x, t) / n + h.noise * w, x

    _, xs = jax.lax.scan(step, x0, (jnp.arange(n) / n, dw))
    xs = np.asarray(xs).reshape(bins, per_bin * samples, h.dim)
    v = np.stack([testbed.level_variances(h, jnp.asarray(x)) for x in xs])
    return {"bin_edges": np.linspace(0.0, 1.0, bins + 1).tolist(), "variances": v.tolist()}


# --- a trained ladder ---------------------------------------------------------------------------

def ladder_problem(config: Any, workdir: str | Path, out: str | Path, recompute: bool,
                   cfg: LearnConfig, *, train_pool: int = 16, train_batch_size: int = 4
                   ) -> Problem:
    """The ladder of ``config`` on ``sampling.steps`` steps, priced in FLOPs.

    Evaluation: the realisations of ``analysis.cost_error`` (seed ``sampling.seed``,
    ``analysis.realisations`` batches of ``analysis.batch_size``) against its reference (EM,
    top level, ``analysis.ref_steps``; stored under ``DIR/cost_error``). Training: a pool of
    ``train_pool`` realisations of ``train_batch_size`` samples from seed
    ``sampling.seed + train_seed_offset``, each with its own top-level reference; every SGD
    step takes ``train_realisations`` of them with fresh Bernoulli keys.
    """
    ctx = common.prepare(config, workdir, out, recompute)
    a, mesh = config.analysis, parallel.make_mesh()
    ladder = ladders.on_mesh(ctx.ladder, mesh)
    path_ts = np.asarray(ctx.ladder.sde.time_grid(int(a.ref_steps)), np.float32)
    seed = int(config.sampling.seed)
    coupling = cost_error.Coupling(seed, path_ts, int(a.batch_size), ladder.image_shape, mesh)
    ts = coupling.grid(int(config.sampling.steps))
    selection = int(a.selection_realisations)
    ref = cost_error.reference(ctx, ladder, coupling, int(a.realisations) + selection)
    inputs = [coupling.inputs(r) for r in range(ref.shape[0])]

    def evaluate(probs):
        return np.array([float(jnp.mean((ladders.mlem(ladder, probs, x0, ts, key, path=path)[0]
                                         - ref[r]) ** 2))
                         for r, (x0, path, key) in enumerate(inputs)])

    train = cost_error.Coupling(seed + cfg.train_seed_offset, path_ts, train_batch_size,
                                ladder.image_shape, mesh)
    pool = [train.inputs(i) for i in range(train_pool)]
    refs = [ladders.em(ladder, -1, x0, path_ts, key, path=path)[0] for x0, path, key in pool]
    stacked = {"x0": jnp.stack([p[0] for p in pool]), "keys": jnp.stack([p[1].keys for p in pool]),
               "ref": jnp.stack(refs)}
    draw_keys = jnp.stack([p[2] for p in pool])

    def train_batch(step, num):
        idx = np.random.default_rng(step + 1).choice(train_pool, num, replace=False)
        keys = jax.vmap(lambda k: jax.random.split(jax.random.fold_in(k, step + 1), cfg.draws))
        return jax.tree_util.tree_map(lambda x: x[idx], stacked), keys(draw_keys[idx])

    solve_loss = functools.partial(_ladder_solve_loss, ladder, ts, path_ts)
    meta = {"levels": list(config.levels), "steps": int(config.sampling.steps),
            "ref_steps": int(a.ref_steps), "level_costs": ctx.flops.tolist(),
            "cost": "FLOPs per sample (XLA)", "evaluation_seed": seed,
            "evaluation_realisations": int(a.realisations),
            "selection_realisations": selection,
            "evaluation_batch_size": int(a.batch_size),
            "training_seed": seed + cfg.train_seed_offset, "training_pool": train_pool,
            "training_batch_size": train_batch_size,
            "checkpoint_steps": list(ctx.ladder.steps), "param_sha256": list(ctx.ladder.digests)}
    return Problem(f"ladder {','.join(config.levels)}", ctx.flops, ts,
                   cost_error.variances_for(ctx), solve_loss, train_batch, evaluate,
                   context=ladder.params, meta=meta, num_selection=selection)


def _ladder_solve_loss(ladder, ts, path_ts, probs, real, key, params):
    path = brownian.SamplePaths(real["keys"], jnp.asarray(path_ts))
    x, stats = sampling.multilevel_euler_maruyama(ladders.drifts(ladder, params), probs,
                                                  ladder.sde.diffusion, real["x0"], ts, key,
                                                  path=path)
    return _mse(x, real["ref"]), stats["draws"]
