"""A ladder (docs/design.md §2): loading it, its drifts ``f¹…fᴷ``, FLOPs and timing.

A :class:`Ladder` holds the models and parameters of levels 1…K (cheapest first): Flax
modules with the EMA parameters of a workdir's level subdirectories (:func:`load_ladder`), or
any ε-predicting functions (:meth:`Ladder.from_functions`, wrapped as :class:`FunctionLevel`).
Levels are numbered from 1 at every public interface, ``-1`` meaning the top level.
Parameters are passed to jitted solvers as arguments, never baked in as constants: the
drifts are rebuilt inside the traced function from the ``params`` it receives.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from mlem import brownian, cost, parallel, sampling, solvers
from mlem.models import registry
from mlem.sde import VPSDE
from mlem.train import checkpoint

__all__ = ["FunctionLevel", "Ladder", "LevelModel", "LevelNotTrainedError", "check_ordered",
           "clear_compiled", "drifts", "em", "eps_fn", "level_costs", "level_flops", "level_index",
           "level_seconds", "levels_and_rule", "load_ladder", "measure_flops", "mlem", "on_mesh",
           "param_digest", "prefix", "switching"]

Array = jax.Array
Params = Any


class LevelModel(Protocol):
    """What a level's model must offer: Flax's ``apply({"params": p}, x, t, train=False)``,
    ``x (B, *image_shape)``, ``t (B,)`` data times → ``ε̂`` like ``x``."""

    def apply(self, variables: dict[str, Params], x: Array, t: Array,
              train: bool = False) -> Array: ...


@dataclasses.dataclass(frozen=True, eq=False)
class FunctionLevel:
    """A level given as a plain function ``fn(params, x, t) → ε̂`` (``x (B, *image_shape)``,
    ``t (B,)`` data times), with a Flax module's ``apply`` signature (:class:`LevelModel`)."""

    fn: Callable[[Params, Array, Array], Array]

    def apply(self, variables: dict[str, Params], x: Array, t: Array,
              train: bool = False) -> Array:
        return self.fn(variables["params"], x, t)


@dataclasses.dataclass(frozen=True, eq=False)
class Ladder:
    """Levels 1…K, cheapest first; ``params[k]`` are the parameters of ``models[k]``.

    ``steps`` and ``digests`` (when loaded from checkpoints) are the training step restored
    for each level and the sha256 of its parameters (:func:`param_digest`): the identity of
    the ladder that results record. ``costs``, when given (:meth:`from_functions`), are the
    FLOPs per sample of one call of each level, fixed at construction; otherwise
    :func:`level_flops` measures them.
    """

    names: tuple[str, ...]
    models: tuple[LevelModel, ...]
    params: tuple[Params, ...]
    image_shape: tuple[int, ...]  # (H, W, C) for images; any sample shape
    sde: VPSDE
    steps: tuple[int, ...] = ()
    digests: tuple[str, ...] = ()
    costs: tuple[float, ...] = ()

    @property
    def num_levels(self) -> int:
        return len(self.models)

    @classmethod
    def from_functions(
        cls, eps_fns: Sequence[Callable[[Array, Array], Array]] | None = None, *,
        apply_fns: Sequence[Callable[[Params, Array, Array], Array]] | None = None,
        params: Sequence[Params] | None = None, image_shape: Sequence[int],
        sde: VPSDE | None = None, costs: Sequence[float] | None = None,
        names: Sequence[str] | None = None, batch_size: int = 1,
    ) -> Ladder:
        """A ladder of any ε-predictors, cheapest first, for :func:`em`, :func:`mlem`,
        :func:`switching`, :func:`prefix` and :func:`mlem.variance.increment_variances`.

        Args:
          eps_fns: ``K`` functions ``ε̂(x, t)``, ``x (B, *image_shape)``, ``t (B,)`` data
            times of ``sde``; arrays they close over are compiled in as constants.
          apply_fns, params: instead, ``K`` functions ``apply(params[k], x, t)`` and their
            parameters (any pytrees), passed to the jitted solvers as arguments. A model
            trained on another noise schedule: :mod:`mlem.time_maps`.
          image_shape: the shape of one sample.
          sde: the :class:`~mlem.sde.VPSDE` whose data time ``t`` the functions take
            (default ``VPSDE()``).
          costs: ``K`` positive per-sample costs of one call (FLOPs, or any unit shared by
            the levels); by default XLA's FLOPs of one call at ``batch_size``, divided by it
            (as for trained levels, :func:`level_flops`).
          names: ``K`` level names (default ``level1…levelK``).
        """
        if (eps_fns is None) == (apply_fns is None):
            raise ValueError("eps_fns, apply_fns: give exactly one")
        if eps_fns is not None:
            if params is not None:
                raise ValueError("params: only with apply_fns (eps_fns take none)")
            apply_fns, params = [_without_params(f) for f in eps_fns], [()] * len(eps_fns)
        elif params is None or len(params) != len(apply_fns):
            raise ValueError(f"params: need one parameter pytree per apply function "
                             f"({len(apply_fns)}), got "
                             f"{'none' if params is None else len(params)}")
        num_levels = len(apply_fns)
        if num_levels < 1:
            raise ValueError("eps_fns/apply_fns: need at least one level")
        names = tuple(names) if names is not None else tuple(
            f"level{k}" for k in range(1, num_levels + 1))
        if len(names) != num_levels:
            raise ValueError(f"names: need {num_levels} names, got {len(names)}")
        ladder = cls(names, tuple(FunctionLevel(f) for f in apply_fns), tuple(params),
                     tuple(int(n) for n in image_shape), VPSDE() if sde is None else sde)
        costs = level_flops(ladder, batch_size) if costs is None else np.asarray(costs, float)
        if costs.shape != (num_levels,) or not np.all(np.isfinite(costs) & (costs > 0)):
            raise ValueError(f"costs: need {num_levels} positive per-level costs, got {costs}")
        return dataclasses.replace(ladder, costs=tuple(costs.tolist()))


class LevelNotTrainedError(FileNotFoundError):
    """A level listed in the sample config has no trained checkpoint under the workdir."""


def load_ladder(config: ml_collections.ConfigDict, workdir: str | Path) -> Ladder:
    """The ladder ``config.levels`` (subdirectories of ``workdir``, cheapest first).

    Each level is its newest checkpoint, or an error naming the level, the step and the file
    (:func:`mlem.train.checkpoint.load_level`), unless ``config.allow_older_checkpoints`` (then the
    newest readable step, recorded in ``Ladder.steps``). A level without a checkpoint raises
    :class:`LevelNotTrainedError` naming the workdir expected and the train command
    (``config.train_configs``); levels that disagree on data or SDE raise ``ValueError``.
    """
    names = tuple(config.levels)
    if not names:
        raise ValueError("config.levels: list the ladder's level subdirectories, cheapest first")
    train_configs = tuple(config.train_configs) or ("configs/<level config>.py",)
    workdirs = [Path(workdir) / name for name in names]
    for k, wd in enumerate(workdirs):
        if not ((wd / checkpoint.CONFIG_FILE).is_file()
                and (wd / checkpoint.CHECKPOINT_DIR).is_dir()):
            train = train_configs[k] if k < len(train_configs) else train_configs[-1]
            raise LevelNotTrainedError(
                f"level {k + 1} ({names[k]}): no trained checkpoint in {wd}; train it with "
                f"python -m train --config {train} --workdir {wd}")
    allow_older = bool(config.allow_older_checkpoints)
    models, params, keys, steps = [], [], [], []
    for k, wd in enumerate(workdirs, start=1):
        try:
            level_config, ema_params, step = checkpoint.load_level(wd, allow_older)
        except checkpoint.CheckpointNotFoundError as err:
            raise type(err)(f"level {k} ({wd.name}): {err}") from err
        steps.append(step)
        models.append(registry.get_level(level_config))
        params.append(ema_params)
        d = level_config.data
        keys.append(((d.name, d.image_size, d.num_channels),
                     tuple(sorted(level_config.sde.items()))))
    if len(set(keys)) > 1:
        raise ValueError(f"workdirs: levels were trained on different data or SDEs: {keys}")
    (_, size, channels), sde_items = keys[0]
    return Ladder(names, tuple(models), tuple(params), (size, size, channels),
                  VPSDE(**dict(sde_items)), tuple(steps), tuple(map(param_digest, params)))


def _per_ladder(fn: Callable) -> Callable:
    """``functools.cache`` for a function of a ladder (and hashable arguments) that forgets a
    ladder's entries once the ladder itself is gone: a plain cache would keep every ladder,
    and its parameters, alive. No cached value may refer to its own ladder."""
    entries: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @functools.wraps(fn)
    def cached(ladder, *args):
        mine = entries.setdefault(ladder, {})
        if args not in mine:
            mine[args] = fn(ladder, *args)
        return mine[args]

    cached.cache_clear = entries.clear  # type: ignore[attr-defined]
    return cached


def clear_compiled() -> None:
    """Forget every compiled solver (and JAX's own caches). A run that compiles hundreds of
    configurations calls it between them: each compiled executable holds memory mappings,
    and a process has a limited number (``vm.max_map_count``); past it, compilation aborts."""
    _solver.cache_clear()
    jax.clear_caches()


def prefix(ladder: Ladder, top: int) -> Ladder:
    """The ladder of levels ``1…top`` (the whole ladder itself when ``top`` is ``K``; one
    object per pair while the ladder lives, so compiled solvers are reused)."""
    if not 1 <= top <= ladder.num_levels:
        raise ValueError(f"top: must be in 1..{ladder.num_levels}, got {top}")
    return ladder if top == ladder.num_levels else _prefix(ladder, top)


@_per_ladder
def _prefix(ladder: Ladder, top: int) -> Ladder:
    return dataclasses.replace(
        ladder, names=ladder.names[:top], models=ladder.models[:top],
        params=ladder.params[:top], steps=ladder.steps[:top], digests=ladder.digests[:top],
        costs=ladder.costs[:top])


def on_mesh(ladder: Ladder, mesh: Mesh) -> Ladder:
    """The ladder with its parameters on every device of ``mesh`` (itself on one device;
    one object per pair while the ladder lives, so compiled solvers are reused)."""
    return ladder if mesh.size == 1 else _on_mesh(ladder, mesh)


@_per_ladder
def _on_mesh(ladder: Ladder, mesh: Mesh) -> Ladder:
    return dataclasses.replace(
        ladder, params=jax.device_put(ladder.params, parallel.replicated(mesh)))


def param_digest(params: Params) -> str:
    """sha256 of a parameter pytree: its leaves' paths, dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        leaf = np.asarray(jax.device_get(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}:{leaf.dtype}:{leaf.shape};".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def eps_fn(model: LevelModel, params: Params) -> Callable[[Array, Array], Array]:
    """``ε̂(x, t)`` of one level; ``t`` scalar or ``(B,)``; deterministic (no dropout)."""

    def eps(x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
        return model.apply({"params": params}, x, t, train=False).astype(x.dtype)

    return eps


def drifts(ladder: Ladder, params: Sequence[Params]) -> list[Callable[[Array, Array], Array]]:
    """Reverse-SDE drifts ``f¹…fᴷ`` of the ladder's models with the given ``params``."""
    return [ladder.sde.drift_from_eps(eps_fn(m, p)) for m, p in zip(ladder.models, params)]


def levels_and_rule(ladder: Ladder, params: Sequence[Params], solver: str = "sde"):
    """The level callables and update rule of ``solver`` (:func:`mlem.solvers.for_vpsde`):
    reverse-SDE drifts (``sde``, exactly :func:`drifts`), PF-ODE drifts (``ode``) or the
    ε-predictors themselves (``ddim``, ``ancestral``, ``dpmpp2m``, ``dpmpp2m-sde``, ``heun``)."""
    if solver == "sde":
        return drifts(ladder, params), solvers.EulerMaruyama(ladder.sde.diffusion)
    eps = [eps_fn(m, p) for m, p in zip(ladder.models, params)]
    return solvers.for_vpsde(ladder.sde, solver, eps)


def level_flops(ladder: Ladder, batch_size: int) -> np.ndarray:
    """``(K,)`` FLOPs per sample of one forward pass of each level, from XLA (``ladder.costs``
    when the ladder was given them)."""
    if ladder.costs:
        return np.array(ladder.costs)
    x, t = _probe(ladder, batch_size)
    return np.array([cost.flops_per_sample(_forward(m), p, x, t, batch_size=batch_size)
                     for m, p in zip(ladder.models, ladder.params)])


def measure_flops(ladder: Ladder, batch_size: int) -> np.ndarray:
    """``(K,)`` FLOPs per sample of each level at ``batch_size``; must strictly increase."""
    flops = level_flops(ladder, batch_size)
    check_ordered(flops, ladder.names)
    return flops


def level_costs(ladder: Ladder, batch_size: int, repeats: int = 5
                ) -> tuple[np.ndarray, np.ndarray]:
    """``(flops, seconds)``, each ``(K,)``: XLA's FLOPs per sample of one forward pass of each
    level and the median seconds of one call at ``batch_size`` on the default device (warm-up
    excluded): what a step that evaluates it pays. One compilation per level. The FLOPs are
    ``ladder.costs`` when the ladder was given them."""
    x, t = _probe(ladder, batch_size)
    levels = list(zip(ladder.models, ladder.params))
    if ladder.costs:
        return np.array(ladder.costs), np.array(
            [cost.seconds_per_call(_forward(m), p, x, t, repeats=repeats) for m, p in levels])
    pairs = [cost.flops_and_seconds(_forward(m), p, x, t, batch_size=batch_size,
                                    repeats=repeats) for m, p in levels]
    return np.array([f for f, _ in pairs]), np.array([s for _, s in pairs])


def level_seconds(ladder: Ladder, batch_size: int, repeats: int = 5) -> np.ndarray:
    """``(K,)`` median seconds of one call of each level's forward pass at ``batch_size``."""
    return level_costs(ladder, batch_size, repeats)[1]


def _probe(ladder: Ladder, batch_size: int) -> tuple[Array, Array]:
    x = jax.random.normal(jax.random.key(0), (batch_size, *ladder.image_shape), jnp.float32)
    return x, jnp.full((batch_size,), 0.5, jnp.float32)


def _forward(model: LevelModel) -> Callable:
    return lambda p, x, t: model.apply({"params": p}, x, t, train=False)


def _without_params(eps: Callable[[Array, Array], Array]) -> Callable[[Params, Array, Array],
                                                                     Array]:
    return lambda params, x, t: eps(x, t)


def check_ordered(flops: Sequence[float], names: Sequence[str]) -> None:
    """Levels must be ordered cheapest first, with strictly increasing FLOPs."""
    flops = np.asarray(flops)
    if np.any(np.diff(flops) <= 0):
        listing = ", ".join(f"{n}: {f / 1e9:.3g} GFLOPs" for n, f in zip(names, flops))
        raise ValueError(f"levels: must be listed cheapest first with strictly increasing FLOPs; "
                         f"got {listing}")


@_per_ladder
def _solver(ladder: Ladder, ts: tuple[float, ...], level: int | str | None,
            solver: str = "sde"):
    """The jitted solve with update rule ``solver``: one level at 0-based ``level``, the
    multilevel estimator (``None``; ``arg`` the probabilities) or switching (``"switch"``;
    ``arg`` the per-step levels). ``sde`` is EM / ML-EM on the reverse SDE. It closes over
    the ladder without its parameters (they are arguments), so the cache entry does not
    keep the ladder alive."""
    ts = np.asarray(ts, np.float32)
    ladder = dataclasses.replace(ladder, params=())

    @jax.jit
    def solve(params, arg, x0, key, increments, path, draws=None):
        fs, rule = levels_and_rule(ladder, params, solver)
        if level == "switch":
            return sampling.switching_solve(fs, arg, rule, x0, ts, key, increments=increments,
                                            path=path)
        if level is not None:
            return sampling.solve(fs[level], rule, x0, ts, key, increments=increments,
                                  path=path)
        return sampling.multilevel_solve(fs, arg, rule, x0, ts, key, increments=increments,
                                         path=path, draws=draws)

    return solve


def em(ladder: Ladder, level: int, x0: Array, ts: Array, key: Array,
       increments: Array | None = None, path: sampling.Path | None = None, *,
       solver: str = "sde") -> tuple[Array, dict[str, Array]]:
    """EM with level ``level`` of the ladder (1…K, ``-1`` = the top level); compiled once per
    (ladder, ts, level, solver).

    The Brownian increments come from ``increments``, ``path`` or ``key`` as in
    :func:`mlem.sampling.euler_maruyama`. ``solver`` (:data:`mlem.solvers.SOLVERS`) picks the
    update rule: ``sde`` (EM on the reverse SDE), ``ode`` (Euler on the PF-ODE), ``ddim``,
    ``ancestral``, ``dpmpp2m``, ``dpmpp2m-sde`` or ``heun`` (two calls per step); the
    deterministic ones draw no increments.
    """
    index = level_index(level, ladder.num_levels)
    ts = _checked(ts, x0, path)
    solve = _solver(ladder, tuple(np.asarray(ts).tolist()), index, solvers.check_solver(solver))
    return solve(ladder.params, None, x0, key, increments, path)


def switching(ladder: Ladder, levels: Array, x0: Array, ts: Array, key: Array,
              increments: Array | None = None, path: sampling.Path | None = None, *,
              solver: str = "sde") -> tuple[Array, dict[str, Array]]:
    """EM switching between levels over time: step ``n`` uses level ``levels[n]`` (1…K);
    compiled once per (ladder, ts, solver); ``solver`` as in :func:`em`."""
    ts = _checked(ts, x0, path)
    solve = _solver(ladder, tuple(np.asarray(ts).tolist()), "switch",
                    solvers.check_solver(solver))
    return solve(ladder.params, jnp.asarray(levels, jnp.int32), x0, key, increments, path)


def level_index(level: int, num_levels: int, name: str = "level") -> int:
    """The 0-based index of level ``level`` (1…K, or ``-1`` for the top); otherwise a
    ``ValueError`` naming the argument ``name``."""
    if not (1 <= level <= num_levels or level == -1):
        raise ValueError(f"{name}: must be in 1..{num_levels} (or -1 for the top level), "
                         f"got {level}")
    return level - 1 if level > 0 else num_levels - 1


def mlem(ladder: Ladder, probs: Array, x0: Array, ts: Array, key: Array | None,
         increments: Array | None = None, path: sampling.Path | None = None, *,
         draws: Array | None = None, solver: str = "sde") -> tuple[Array, dict[str, Array]]:
    """ML-EM over the whole ladder; ``probs`` ``(K,)`` or ``(N, K)`` (validated here).

    ``draws``: optional ``(N, K)`` boolean fixed evaluation pattern (``(N, 2, K)`` for
    ``heun``, two calls per step; docs/patterns.md), as in
    :func:`mlem.sampling.multilevel_euler_maruyama`; ``key`` then drives only the Brownian
    path. The same compiled solver serves both (one trace each). ``solver`` as in :func:`em`:
    the multilevel estimator of :func:`mlem.sampling.multilevel_solve` with that update rule.
    """
    ts = _checked(ts, x0, path)
    num_steps = ts.shape[0] - 1
    probs = sampling.check_probs(probs, ladder.num_levels, num_steps)
    if draws is not None:
        draws = sampling.check_draws(draws, ladder.num_levels, num_steps, None)
    solve = _solver(ladder, tuple(np.asarray(ts).tolist()), None, solvers.check_solver(solver))
    return solve(ladder.params, probs, x0, key, increments, path, draws)


def _checked(ts: Array, x0: Array, path: sampling.Path | None) -> Array:
    """Validate ``ts`` (and ``path`` against it) before the jitted solve traces them."""
    ts = sampling.check_ts(ts)
    if path is not None:
        brownian.check_path(path, ts, x0)
    return ts

