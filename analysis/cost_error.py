"""The coupled cost-vs-error sweep of EM and ML-EM, and the speedup (docs/design.md §3).

    python -m analysis.cost_error --config configs/mnist_sample.py --workdir runs/mnist \\
        --out results/mnist_cpu [--recompute]

**Realisations.** The sweep is measured on ``R = config.analysis.realisations`` evaluation
realisations and ``S = config.analysis.selection_realisations`` selection realisations:
realisation ``r`` is batch ``r`` (``config.analysis.batch_size`` samples) of seed
``config.sampling.seed``, with its own initial noise, per-sample Brownian paths and Bernoulli
draws, exactly as ``python -m sample`` would generate that batch
(:func:`mlem.generation.batch_inputs`). Every configuration runs on every realisation from
the same noise and paths (coupled). Realisations ``0…R−1`` are the units of every standard
error and bootstrap (:mod:`mlem.eval.speedup`), never the samples inside one; realisations
``R…R+S−1`` are used only to choose (the best ML-EM variant that the headline reports), so
nothing is selected on the realisations it is judged on (:mod:`analysis.comparison`).
**Solver**: ``config.analysis.solver`` (``sde``: EM / ML-EM on the reverse SDE; ``ode``,
``ddim``, ``ancestral``: docs/solvers.md) and ``config.analysis.grid`` (``uniform``,
``quadratic``, ``logsnr``) apply to every solve, the reference included; both are recorded in
the stage settings and the reference key when they are not the defaults.
**Reference**: the same solver with the top level on the finest grid ``ref_steps`` (at least
4× the finest swept grid), per realisation, stored in ``reference.npy`` beside
``reference.json``, the key of everything it depends on (ladder steps and parameter
digests, SDE, grid, seed, realisations, batch size); a different key recomputes it.
**Sweep**: EM at every level over ``em_steps``; ML-EM over ``schedules × cost_models ×
mlem_steps × top_evals``, where ``top_evals`` is the expected number of top-level evaluations
per solve (converted to the schedule constant ``c`` for each grid and cost model), for those
pairs whose mean top-level probability ``top_evals / steps`` lies in ``top_prob_range``.
**Error** = MSE over the samples and pixels of a realisation against the reference.
**Cost**: FLOPs per sample (EM exact; ML-EM at the expected cost of its schedule, realised
FLOPs recorded beside) and seconds per solve *as deployed* (:func:`time_deployed`): a batch of
``config.analysis.timing_batch_size`` samples whose Brownian increments are drawn on the
solve's own grid (no fine-grid coupling), the median of ``timing_repeats`` calls after a
warm-up (compilation excluded), each call with its own draws; the spread, batch and device
are recorded in ``timings.json``. The coupled solves measure the error only. Timed are the
configurations a seconds path can use (:func:`timed_configurations`: each curve's envelope of
the selection MSE against seconds predicted from the levels' seconds per call, and the
operating point); the others keep ``seconds`` NaN and are on no seconds path.

Outputs in ``DIR/cost_error/``: ``points.csv`` (one row per configuration and realisation,
written group by group: an interrupted sweep resumes), ``timings.json``, ``envelopes.json``,
``speedup.json``
(every comparison, in FLOPs and in seconds, with 95% intervals) and the figures.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from analysis import common, comparison, plots, quality, variance
from analysis.comparison import config_key, curve_name, schedule_names
from mlem import brownian, cost, files, generation, parallel, patterns, schedules, solvers
from mlem import ladder as ladders
from mlem import sde as sde_lib
from mlem.eval import speedup

STAGE = "cost_error"
COLUMNS = ("curve", "method", "schedule", "cost_model", "level", "top", "top_evals", "switch_at",
           "c", "steps", "realisation", "mse", "expected_flops", "flops", "seconds", "evals")
PATH_CONVENTION = "per-sample keys fold_in(fold_in(key(seed), 0), i), SamplePaths"
PATTERNS = "patterns.json"  # the pattern search's selection reports, one per searched point
TIMINGS = "timings.json"  # each configuration's deployed timing: median, spread, batch, device
PATTERN_STREAM = 2  # patterns of a point: fold_in(fold_in(key(seed), 2), steps), top_evals


# --- configurations ------------------------------------------------------------------------------

def configurations(config: Any, num_levels: int) -> list[dict]:
    """Every configuration of the sweep (realisations not expanded). ``top`` is the highest
    level a configuration uses: EM's level; for ML-EM and switching, the top of the ladder
    ``1…top`` they run on (:func:`ladder_tops`: the whole ladder, and the prefixes of
    ``config.analysis.prefix_tops``). ML-EM's ``level`` is its top too; switching's is the
    level it runs before ``switch_at``."""
    a = config.analysis
    check_grids(config)
    tops = ladder_tops(config, num_levels)
    em = [{"curve": "em", "method": "em", "schedule": "", "cost_model": "", "level": k,
           "top": k, "top_evals": 0.0, "switch_at": 0.0, "steps": int(n)}
          for k in range(1, num_levels + 1) for n in a.em_steps]
    ml = [{"curve": curve_name(s, m), "method": "mlem", "schedule": s, "cost_model": m,
           "level": top, "top": top, "top_evals": float(t), "switch_at": 0.0, "steps": int(n)}
          for top in tops for s in schedule_names(config) for m in cost_model_names(config)
          for n in a.mlem_steps for t in a.top_evals if _swept(config, t, n)]
    switch = [{"curve": "switch", "method": "switch", "schedule": "", "cost_model": "",
               "level": k, "top": top, "top_evals": 0.0, "switch_at": float(s),
               "steps": int(n)}
              for top in tops for k in range(1, top) for s in a.switch_times
              for n in a.em_steps]
    pattern = [{"curve": "mlem-pattern", "method": "pattern", "schedule": schedule_names(config)[0],
                "cost_model": "flops", "level": num_levels, "top": num_levels,
                "top_evals": float(t), "switch_at": 0.0, "steps": int(n)}
               for n in pattern_steps(config) for t in a.top_evals if _swept(config, t, n)]
    return em + ml + switch + pattern


def ladder_tops(config: Any, num_levels: int) -> tuple[int, ...]:
    """The tops of the ladders ML-EM and switching run on: ``config.analysis.prefix_tops``
    (prefixes ``1…k``, each ``2 <= k < K``: the oracle framing of docs/design.md §3) and the
    whole ladder ``K``."""
    prefixes = tuple(int(k) for k in config.analysis.prefix_tops)
    if any(not 2 <= k < num_levels for k in prefixes):
        raise ValueError(f"config.analysis.prefix_tops: prefix ladders 1..k need 2 <= k < "
                         f"{num_levels} (the number of levels), got {prefixes}")
    if prefixes and "learned" in schedule_names(config):
        raise ValueError("config.analysis.prefix_tops: a learned schedule is learned for the "
                         "whole ladder; drop 'learned' from config.analysis.schedules or the "
                         "prefixes")
    return tuple(sorted({*prefixes, num_levels}))


def pattern_steps(config: Any) -> tuple[int, ...]:
    """The grids of the pattern search: ``config.analysis.pattern_steps`` (each one of
    ``mlem_steps``), or none when ``pattern_search`` (patterns drawn per point) is 0."""
    a = config.analysis
    if int(a.pattern_search) <= 0:
        return ()
    if int(a.selection_realisations) < 1:
        raise ValueError("config.analysis.pattern_search: a pattern is chosen on the selection "
                         "realisations; set config.analysis.selection_realisations >= 1")
    steps = tuple(int(n) for n in a.pattern_steps)
    if not steps or set(steps) - {int(n) for n in a.mlem_steps}:
        raise ValueError(f"config.analysis.pattern_steps: list grids of mlem_steps "
                         f"({tuple(a.mlem_steps)}) to search patterns on, got {steps}")
    return steps


def switch_levels(point: dict, ts: np.ndarray, num_levels: int) -> np.ndarray:
    """``(N,)`` levels of a switching point: level ``point["level"]`` on the steps that start
    before ``switch_at`` of the solver time (high noise), the top level after it
    (:func:`mlem.generation.switch_levels`)."""
    return generation.switch_levels(point["level"], point["switch_at"], ts, num_levels)


def _swept(config: Any, top_evals: float, steps: int) -> bool:
    """Whether ML-EM with ``top_evals`` expected top-level evaluations on ``steps`` steps is
    swept: its mean top-level probability ``top_evals / steps`` lies in
    ``config.analysis.top_prob_range`` (and below 1, where every step runs the top level)."""
    lo, hi = config.analysis.top_prob_range
    return 0 < top_evals <= steps and lo <= top_evals / steps <= min(hi, 1.0)


def check_grids(config: Any) -> None:
    """Every swept grid divides ``ref_steps``, which is at least 4× the finest of them."""
    a = config.analysis
    steps = [int(n) for n in (*a.em_steps, *a.mlem_steps)]
    if not steps:
        raise ValueError("config.analysis.em_steps/mlem_steps: need at least one step count")
    for n in steps:
        if n < 1 or int(a.ref_steps) % n:
            raise ValueError(f"config.analysis.em_steps/mlem_steps: {n} must divide "
                             f"ref_steps={a.ref_steps}")
    if int(a.ref_steps) < 4 * max(steps):
        raise ValueError(f"config.analysis.ref_steps={a.ref_steps}: the reference grid must be "
                         f"at least 4x finer than the finest swept grid ({max(steps)} steps); "
                         f"set it to {4 * max(steps)} or more")


def cost_model_names(config: Any) -> tuple[str, ...]:
    names = tuple(config.analysis.cost_models)
    if not names or set(names) - set(generation.COST_MODELS):
        raise ValueError(f"config.analysis.cost_models: choose from "
                         f"{', '.join(generation.COST_MODELS)}; got {names}")
    return names


def make_probs(schedule: str, level_costs: np.ndarray, ts: np.ndarray, variances: dict | None,
               gamma: float | None, top_evals: float, learned: str = ""
               ) -> tuple[float, np.ndarray]:
    """``(c, probs (N, K))``: ``schedule`` on the grid ``ts``, priced by ``level_costs``, with
    the knob ``c`` that evaluates the top level ``top_evals`` times per solve on average.

    ``variance``: ``p_k(τ) = min(1, c·sqrt(V_k(τ)/C_k))`` per time bin; ``constant``: the same
    with ``V_k`` averaged over time; ``dyadic``: ``min(1, c·2^{−(1+γ/2)(k−1)})``; ``learned``:
    ``min(1, c·p_k(τ))`` with ``p`` the schedule file ``learned`` (``analysis.learn_probs``).
    """
    if schedule == "learned" and (not learned or not Path(learned).is_file()):
        raise FileNotFoundError(f"config.analysis.learned_schedule: schedule file "
                                f"{learned!r} not found; write one with python -m "
                                f"analysis.learn_probs")
    if schedule == "dyadic" and gamma is None:
        raise ValueError("schedule 'dyadic' needs gamma: run python -m analysis.fit_gamma "
                         "first (or drop 'dyadic' from config.analysis.schedules)")
    v = None if variances is None else np.asarray(variances["variances"])
    if schedule == "constant" and v is not None:
        v = v.mean(0)  # constant in time: schedules.build's 'variance' on time-averaged V_k
    return schedules.build({"learned": "file", "constant": "variance"}.get(schedule, schedule),
                           ts, level_costs, top_evals=top_evals, gamma=gamma,
                           file=learned or None, variances=v,
                           bin_edges=None if variances is None else variances["bin_edges"])


# --- coupling and the reference ------------------------------------------------------------------

class Coupling:
    """Initial noise, Brownian paths and Bernoulli keys of the realisations of a sweep."""

    def __init__(self, seed: int, path_ts: np.ndarray, batch_size: int,
                 image_shape: tuple[int, ...], mesh: Any):
        self.seed, self.path_ts, self.batch_size = seed, path_ts, batch_size
        self.image_shape, self.mesh = tuple(image_shape), mesh

    def inputs(self, realisation: int) -> tuple[jax.Array, brownian.SamplePaths, jax.Array]:
        """``x0 (B, H, W, C)``, the samples' paths and the draw key of ``realisation``."""
        return generation.batch_inputs(self.seed, realisation, self.batch_size,
                                       self.image_shape, self.path_ts, self.mesh)

    def grid(self, num_steps: int) -> np.ndarray:
        return np.asarray(brownian.coarse_grid(self.path_ts, num_steps))


def solver_settings(config: Any) -> tuple[str, str, dict]:
    """``(solver, grid, record)`` of ``config.analysis``; ``record`` names them only when they
    are not the defaults ``sde``/``uniform`` (so references stored before they existed stay
    valid)."""
    a = config.analysis
    solver = solvers.check_solver(a.solver)
    grid = sde_lib.check_grid(a.grid)
    record = {k: v for k, v, d in (("solver", solver, "sde"), ("grid", grid, "uniform"))
              if v != d}
    return solver, grid, record


def reference_key(ctx: common.Context, coupling: Coupling, realisations: int) -> dict:
    """Everything the reference depends on."""
    ladder = ctx.ladder
    return {"levels": list(ladder.names), "steps": list(ladder.steps),
            "param_sha256": list(ladder.digests), "sde": dict(vars(ladder.sde)),
            "ref_steps": len(coupling.path_ts) - 1, "seed": coupling.seed,
            "realisations": realisations, "batch_size": coupling.batch_size,
            "paths": PATH_CONVENTION, "backend": jax.default_backend(),
            **solver_settings(ctx.config)[2]}


def reference(ctx: common.Context, ladder: ladders.Ladder, coupling: Coupling,
              realisations: int) -> np.ndarray:
    """``(R, B, H, W, C)`` EM with the top level on the finest grid for each realisation.

    Stored in ``reference.npy`` with its key in ``reference.json``; reused only when the key
    matches exactly (and not with ``--recompute``).
    """
    stage = ctx.out / STAGE
    key = common.jsonable(reference_key(ctx, coupling, realisations))
    key_file, array_file = stage / "reference.json", stage / "reference.npy"
    if not ctx.recompute and key_file.exists() and array_file.exists():
        if json.loads(key_file.read_text()) == key:
            return np.load(array_file)
        print(f"[cost_error] the stored reference in {stage} was computed for another "
              f"ladder, grid or set of realisations: recomputing it", flush=True)
    n_ref, solver = len(coupling.path_ts) - 1, solver_settings(ctx.config)[0]

    def solve(r):
        x0, path, key_r = coupling.inputs(r)
        x, _ = ladders.em(ladder, -1, x0, coupling.path_ts, key_r, path=path, solver=solver)
        return np.asarray(x, np.float32)

    ref = np.stack(list(tqdm(parallel.map_concurrently(solve, range(realisations)),
                             total=realisations, desc=f"reference ({n_ref} steps)")))
    stage.mkdir(parents=True, exist_ok=True)
    key_file.unlink(missing_ok=True)  # never leave a key beside an array it does not describe
    np.save(array_file, ref)
    key_file.write_text(json.dumps(key, indent=1) + "\n")
    return ref


# --- running the sweep ---------------------------------------------------------------------------

def _solve_fn(ladder: ladders.Ladder, ts: np.ndarray, solver: str):
    """``solve(point, p, (x0, path, key))`` for every kind of configuration on the grid ``ts``
    (``path`` ``None``: increments drawn from the key on the solve's own grid); ML-EM and
    switching run on the ladder ``1…point["top"]``."""
    def solve(point, p, inputs):
        x0, path, key = inputs
        if point["method"] == "em":
            return ladders.em(ladder, point["level"], x0, ts, key, path=path, solver=solver)
        sub = ladders.prefix(ladder, point["top"])
        if point["method"] == "switch":
            return ladders.switching(sub, p, x0, ts, key, path=path, solver=solver)
        if point["method"] == "pattern":
            return ladders.mlem(sub, p[0], x0, ts, key, path=path, draws=p[1], solver=solver)
        return ladders.mlem(sub, p, x0, ts, key, path=path, solver=solver)

    return solve


def run_group(ladder: ladders.Ladder, flops: np.ndarray, coupling: Coupling, ref: np.ndarray,
              points: Sequence[dict], probs: Sequence[np.ndarray | None], steps: int,
              solver: str = "sde", feats: quality.Features | None = None,
              store: dict | None = None) -> list[dict]:
    """Every point with ``steps`` steps on every realisation, coupled; one row per (point,
    realisation), each solve with the update rule ``solver`` (docs/solvers.md).

    The coupled solves measure the error; a row's ``seconds`` is NaN until its configuration
    is timed as deployed (:func:`time_paths`). With ``feats``, the features of each solve's
    samples go into ``store`` under :func:`analysis.quality.row_id`.
    """
    ts = coupling.grid(steps)
    solve = _solve_fn(ladder, ts, solver)
    calls = solvers.calls_per_step(solvers.for_vpsde(ladder.sde, solver, [])[1], ts)

    def run(r, indices):  # the points ``indices`` on realisation r: rows and features
        inputs, out = coupling.inputs(r), []
        for i in indices:
            x, stats = solve(points[i], probs[i], inputs)
            evals = np.asarray(stats["evals"], np.float64)
            row = _row(flops, points[i], r, np.asarray(x, np.float64), ref[r], np.nan, evals,
                       probs[i], calls)
            out.append((row, None if feats is None else feats.fn(np.asarray(x))))
        return out

    # Realisation 0 compiles every solve: one group per compiled solve, the groups at once
    # (a compilation keeps one core busy); then the other realisations at once.
    groups: dict[tuple, list[int]] = {}
    for i, point in enumerate(points):
        groups.setdefault(compiled_solve(point), []).append(i)
    bar = tqdm(total=ref.shape[0], desc=f"{steps} steps x {len(points)} runs", leave=False)
    first = {}
    for indices, out in zip(groups.values(), parallel.map_concurrently(
            lambda ix: run(0, ix), list(groups.values()), first_alone=False)):
        first.update(zip(indices, out))
    by_realisation = [[first[i] for i in range(len(points))]]
    bar.update()
    for out in parallel.map_concurrently(lambda r: run(r, range(len(points))),
                                         range(1, ref.shape[0]), first_alone=False):
        by_realisation.append(out)
        bar.update()
    bar.close()
    rows = []
    for out in by_realisation:
        for row, features in out:
            rows.append(row)
            if feats is not None:
                store[quality.row_id(row)] = features
    return rows


def predicted_seconds(rows: Sequence[dict], level_seconds: np.ndarray
                      ) -> tuple[list[dict], np.ndarray, speedup.Sweep]:
    """``(configs, predicted, sweep)`` of ``rows``: each configuration's seconds predicted as
    its mean realised evaluations per level times each level's seconds per call at the timing
    batch (what a step that evaluates it pays), and the sweep of the rows."""
    configs, sweep_ = comparison.table(rows)
    evals: dict[tuple, list[np.ndarray]] = {}
    for r in rows:
        evals.setdefault(config_key(r), []).append(
            np.array([float(e) for e in str(r["evals"]).split(";")]))
    predicted = []
    for c in configs:
        costs = level_seconds[:c["top"]] if c["method"] != "em" else \
            level_seconds[c["level"] - 1:c["level"]]
        predicted.append(float(np.mean(evals[config_key(c)], axis=0) @ costs))
    return configs, np.asarray(predicted), sweep_


def timed_configurations(rows: Sequence[dict], config: Any, level_seconds: np.ndarray,
                         num_levels: int) -> list[dict]:
    """The configurations :func:`time_paths` times as deployed, chosen on the *selection*
    realisations only: in each framing (own ladder; the oracle one when ``oracle_targets``
    are declared) and on each curve, the lower envelope of the selection mean MSE against
    the predicted seconds (:func:`predicted_seconds`), and the operating point's
    configuration (its seconds are the budget of the error ratio). The analysis chooses each
    method's seconds path among them, on the same realisations, with the measured seconds;
    a configuration off every such envelope is not on any seconds path a user would run."""
    selection = comparison.split_rows(rows, config)[1]
    framings = [comparison.own_ladder_rows(selection, num_levels)]
    if comparison.oracle_enabled(config):
        framings.append(comparison.oracle_rows(selection, num_levels))
    chosen: dict[tuple, dict] = {}
    for own, framing in zip((True, False), framings):
        configs, predicted, sweep_ = predicted_seconds(framing, level_seconds)
        error = sweep_.error.mean(1)
        index = {comparison.operating_point(config, configs, sweep_, num_levels)[0]} \
            if own else set()
        for curve in sorted(set(sweep_.curve)):
            index |= set(sweep_.envelope(curve, error, predicted).index)
        chosen.update({config_key(configs[i]): configs[i] for i in index})
    return [chosen[k] for k in sorted(chosen)]


def time_paths(ctx: common.Context, ladder: ladders.Ladder, coupling: Coupling,
               rows: Sequence[dict], timing: Timing, probs_of: Callable[[dict], Any],
               save: Callable[[], None]) -> None:
    """Time as deployed (:func:`time_deployed`) every configuration of
    :func:`timed_configurations` that ``timing.records`` lacks, one compilation per solver and
    grid; ``save()`` after each grid (an interrupted run resumes)."""
    wanted = timed_configurations(rows, ctx.config, ctx.seconds, ctx.ladder.num_levels)
    todo = [c for c in wanted if "|".join(config_key(c)) not in timing.records]
    solver = solver_settings(ctx.config)[0]
    for steps in tqdm(sorted({c["steps"] for c in todo}), desc="timing as deployed"):
        solve = _solve_fn(ladder, coupling.grid(steps), solver)
        points = [c for c in todo if c["steps"] == steps]
        probs = {config_key(c): probs_of(c) for c in points}
        # warm-up calls (untimed), one per compiled solve, two at once; then each
        # configuration timed alone
        first = {compiled_solve(c): c for c in reversed(points)}

        def warm_up(c, solve=solve, probs=probs):
            inputs = deployed_inputs(coupling, timing, 0)
            return jax.block_until_ready(solve(c, probs[config_key(c)], inputs)[1])

        list(parallel.map_concurrently(warm_up, list(first.values()), first_alone=False))
        for point in points:
            p = probs[config_key(point)]
            timing.records["|".join(config_key(point))] = time_deployed(
                lambda inputs, f=solve, point=point, p=p: f(point, p, inputs), coupling, timing,
                warm_up=False)
        save()


def compiled_solve(point: dict) -> tuple:
    """What a configuration's compiled solve depends on besides its grid: one per EM level,
    per prefix ladder for switching and ML-EM (a fixed pattern is its own trace); the
    probabilities and switching levels are arguments."""
    return point["method"], point["level"] if point["method"] == "em" else 0, point["top"]


@dataclasses.dataclass
class Timing:
    """How configurations are timed as deployed (docs/design.md §3): ``batch_size`` samples a
    call, the median of ``repeats`` calls after one warm-up call, each call with its own key
    (its own noise, Brownian increments drawn on the solve's own grid and Bernoulli draws).
    ``records`` collects one record per configuration."""

    batch_size: int = 64
    repeats: int = 3
    seed: int = 0
    records: dict = dataclasses.field(default_factory=dict)

    def settings(self) -> dict:
        return {"batch_size": self.batch_size, "repeats": self.repeats, "seed": self.seed,
                "device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
                "increments": "drawn from a key on the solve's own grid"}


def deployed_inputs(coupling: Coupling, timing: Timing, i: int
                    ) -> tuple[jax.Array, None, jax.Array]:
    """Call ``i`` of a configuration timed as deployed (0: its warm-up): ``x0`` of
    ``timing.batch_size`` samples and the key its increments and draws come from."""
    key = jax.random.fold_in(jax.random.key(timing.seed), i)
    x0 = jax.random.normal(jax.random.fold_in(key, 0), (timing.batch_size, *coupling.image_shape))
    return (jax.device_put(x0, parallel.batch_sharded(coupling.mesh)), None,
            jax.random.fold_in(key, 1))


def time_deployed(solve, coupling: Coupling, timing: Timing, warm_up: bool = True) -> dict:
    """Seconds of ``solve((x0, None, key))`` as a user runs it: ``x0`` of ``timing.batch_size``
    samples, no fine-grid path (the increments come from the key, on the solve's own grid),
    the median of ``timing.repeats`` calls after a warm-up call (compilation excluded; skip
    it with ``warm_up=False`` when the same compiled solver, e.g. ML-EM with other
    probabilities, has just been warmed up); each call draws its own noise, increments and
    Bernoulli draws. Returns the median, the spread and the realised evaluations per level
    of each timed call."""
    if warm_up:
        jax.block_until_ready(solve(deployed_inputs(coupling, timing, 0)))
    seconds, evals = [], []
    for i in range(1, timing.repeats + 1):
        args = deployed_inputs(coupling, timing, i)
        jax.block_until_ready(args)
        start = time.perf_counter()
        _, stats = jax.block_until_ready(solve(args))
        seconds.append(time.perf_counter() - start)
        evals.append(np.asarray(stats["evals"], np.float64).tolist())
    return {"seconds": float(np.median(seconds)), "seconds_min": float(np.min(seconds)),
            "seconds_max": float(np.max(seconds)), "calls": seconds, "evals": evals,
            **timing.settings()}


def _row(flops, point, realisation, x, ref, seconds, evals, probs, calls) -> dict:
    """One row of ``points.csv``; ``probs``: ML-EM's ``(N, K)`` probabilities, a switching
    point's ``(N,)`` levels, a searched pattern's ``(probs, pattern)``, or ``None`` (EM);
    ``calls``: the update rule's level calls per step (:func:`mlem.solvers.calls_per_step`,
    two for Heun's corrector steps)."""
    costs = flops[:point["top"]] if point["method"] != "em" else \
        flops[point["level"] - 1:point["level"]]
    if point["method"] == "em":
        expected = float(np.sum(calls)) * costs[0]
    elif point["method"] in ("switch", "pattern"):  # deterministic: what it evaluates
        expected = float(evals @ costs)
    else:
        expected = cost.expected_cost(probs, costs, calls=calls)
    return {**{k: point[k] for k in COLUMNS if k in point}, "realisation": realisation,
            "mse": float(np.mean((x - ref) ** 2)), "expected_flops": float(expected),
            "flops": float(evals @ costs), "seconds": float(seconds),
            "evals": ";".join(f"{e:g}" for e in evals)}


def prefix_variances(variances: dict | None, top: int) -> dict | None:
    """The variances record of the ladder ``1…top``: ``V_k`` of its levels (``V_k`` depends
    only on levels ``k−1`` and ``k``)."""
    if variances is None:
        return None
    return {**variances, "variances": np.asarray(variances["variances"])[:, :top].tolist()}


def level_costs(ctx: common.Context, cost_model: str) -> np.ndarray:
    """Per-level costs the schedules are priced in: FLOPs per sample, or seconds per call at
    the deployed batch ``config.analysis.timing_batch_size`` on this device (``ctx.seconds``)."""
    return ctx.flops if cost_model == "flops" else ctx.seconds


def variances_for(ctx: common.Context) -> dict:
    """The configured variances file, else this results dir's (reused or measured now)."""
    given = ctx.config.sampling.variance_file
    if not given:
        return variance.write_variances(ctx)
    edges, v = generation.load_variances(given, ctx.config.levels)
    return {"bin_edges": edges.tolist(), "variances": v.tolist()}


def timing_of(config: Any) -> Timing:
    """The deployed timing of ``config.analysis`` (``timing_batch_size``, ``timing_repeats``)."""
    a = config.analysis
    timing = Timing(int(a.timing_batch_size), int(a.timing_repeats),
                    int(config.sampling.seed))
    if timing.batch_size < 1 or timing.repeats < 3:
        raise ValueError(f"config.analysis.timing_batch_size ({timing.batch_size}) must be >= 1 "
                         f"and timing_repeats ({timing.repeats}) >= 3 (a median of >= 3 calls)")
    return timing


def fitted_gamma(out: Path) -> float | None:
    """``gamma`` of ``out/summary.json`` (written by ``analysis.fit_gamma``), if any."""
    path = out / common.SUMMARY
    return json.loads(path.read_text()).get("gamma") if path.exists() else None


def sweep(ctx: common.Context, feats: quality.Features | None = None
          ) -> tuple[list[dict], int]:
    """Run (or resume) the sweep; returns every row of ``points.csv`` and how many of them
    this call computed. With ``feats``, the features of every solve are kept in
    ``features.npz`` (:mod:`analysis.quality`); a row without them is computed again."""
    a, mesh = ctx.config.analysis, parallel.make_mesh()
    evaluation, batch = int(a.realisations), int(a.batch_size)
    selection = int(a.selection_realisations)
    if evaluation < 3 or batch < 1 or selection < 0:
        raise ValueError(f"config.analysis.realisations ({evaluation}) must be >= 3 (the "
                         f"bootstrap's units), selection_realisations ({selection}) >= 0 and "
                         f"batch_size ({batch}) >= 1")
    realisations = evaluation + selection
    parallel.check_batch_size(batch, mesh.size, "analysis.batch_size")
    timing = timing_of(ctx.config)
    parallel.check_batch_size(timing.batch_size, mesh.size, "analysis.timing_batch_size")
    points = configurations(ctx.config, ctx.ladder.num_levels)
    names = schedule_names(ctx.config)
    v = variances_for(ctx) if {"variance", "constant"} & set(names) else None
    gamma = fitted_gamma(ctx.out) if "dyadic" in names else None
    prices = {m: level_costs(ctx, m) for m in cost_model_names(ctx.config)}
    settings = {"realisations": evaluation, "selection_realisations": selection,
                "batch_size": batch, "ref_steps": int(a.ref_steps),
                "seed": int(ctx.config.sampling.seed), "level_flops": ctx.flops.tolist(),
                "level_prices": {m: common.digest(c.tolist()) for m, c in prices.items()},
                "variances": common.digest(v) if v else None, "gamma": gamma,
                "paths": PATH_CONVENTION, "pattern_search": int(a.pattern_search),
                "ladder_tops": list(ladder_tops(ctx.config, ctx.ladder.num_levels)),
                "timing": timing.settings(),
                "learned_schedule": _file_digest(a.learned_schedule)
                if "learned" in names else None,
                **solver_settings(ctx.config)[2]}
    if feats is not None:  # rows computed with other features (or none) are stale
        settings["quality"] = common.digest(feats.record)
    path, features_path = ctx.out / STAGE / "points.csv", ctx.out / STAGE / quality.FEATURES_FILE
    fresh = common.load_stage(ctx.out, STAGE, settings, ctx.recompute) is None
    wanted = {config_key(p) for p in points}  # rows of configurations no longer swept are dropped
    rows = [] if fresh or not path.exists() else [r for r in read_points(path)
                                                  if config_key(r) in wanted]
    store = {} if fresh or feats is None else quality.load_row_features(features_path)
    timings_path = ctx.out / STAGE / TIMINGS
    if not fresh and timings_path.exists():
        timing.records.update(json.loads(timings_path.read_text()))
    if feats is not None:
        rows = [r for r in rows if quality.row_id(r) in store]
    done = {config_key(r) for r in rows if r["realisation"] == realisations - 1}
    rows = [r for r in rows if config_key(r) in done]  # a group cut short is run again whole
    todo = [p for p in points if config_key(p) not in done]
    common.save_stage(ctx.out, STAGE, settings, {"points": "points.csv"})
    write_points(path, rows)
    ladder = ladders.on_mesh(ctx.ladder, mesh)
    coupling = Coupling(int(ctx.config.sampling.seed),
                        np.asarray(ctx.ladder.sde.time_grid(int(a.ref_steps),
                                                            solver_settings(ctx.config)[1]),
                                   np.float32),
                        batch, ctx.ladder.image_shape, mesh)
    ref = reference(ctx, ladder, coupling, realisations)
    pattern_path = ctx.out / STAGE / PATTERNS
    searched = json.loads(pattern_path.read_text()) if pattern_path.exists() and rows else {}

    def probs_of(p: dict, search: bool = False):
        """The probabilities of a configuration (ML-EM), its levels (switching), its
        pattern (searched now with ``search``, else the stored one) or ``None`` (EM)."""
        ts = coupling.grid(p["steps"])
        if p["method"] in ("em", "switch"):
            return probabilities(ctx, p, ts, prices, v, gamma)[1]
        p["c"], prob = probabilities(ctx, p, ts, prices, v, gamma)
        if p["method"] != "pattern":
            return prob
        if search or "pattern" not in searched.get(_pattern_id(p), {}):
            searched[_pattern_id(p)] = search_pattern(ctx, ladder, coupling, ref, p, prob, ts)
            write_json(pattern_path, searched)
        return prob, np.asarray(searched[_pattern_id(p)]["pattern"], bool)

    for steps in tqdm(sorted({p["steps"] for p in todo}), desc="cost-error sweep"):
        group = [p for p in todo if p["steps"] == steps]
        for p in group:
            p["c"] = float("nan")
        probs = [probs_of(p, search=True) for p in group]
        rows += run_group(ladder, ctx.flops, coupling, ref, group, probs, steps,
                          solver_settings(ctx.config)[0], feats, store)
        if feats is not None:  # features first: a row is kept only with its features
            quality.save_row_features(features_path, rows, store)
        write_points(path, rows)
    time_paths(ctx, ladder, coupling, rows, timing, probs_of,
               lambda: write_json(timings_path, timing.records))
    for r in rows:  # seconds as deployed where timed; NaN off every seconds path
        record = timing.records.get("|".join(config_key(r)))
        r["seconds"] = record["seconds"] if record else float("nan")
    write_points(path, rows)
    return rows, len(todo) * realisations


def probabilities(ctx: common.Context, point: dict, ts: np.ndarray,
                  prices: dict[str, np.ndarray], variances: dict | None, gamma: float | None
                  ) -> tuple[float, Any]:
    """``(c, arg)`` of a configuration on the grid ``ts``: ML-EM's (and a pattern's) knob and
    ``(N, K)`` probabilities (:func:`make_probs`), a switching point's ``(N,)`` levels, or
    ``None`` for EM (``c`` NaN for both)."""
    if point["method"] == "em":
        return float("nan"), None
    if point["method"] == "switch":
        return float("nan"), switch_levels(point, ts, point["top"])
    return make_probs(point["schedule"], prices[point["cost_model"]][:point["top"]], ts,
                      prefix_variances(variances, point["top"]), gamma, point["top_evals"],
                      ctx.config.analysis.learned_schedule)


def search_pattern(ctx: common.Context, ladder: ladders.Ladder, coupling: Coupling,
                   ref: np.ndarray, point: dict, probs: np.ndarray, ts: np.ndarray
                   ) -> dict:
    """The paper's pattern search, honestly (docs/patterns.md): draw
    ``config.analysis.pattern_search`` fixed patterns from ``probs``, keep the one with the
    lowest mean MSE on the *selection* realisations, and measure on the *evaluation*
    realisations its MSE and its bias against EM at the top level on the same grid (a fixed
    pattern is deterministic, so it is biased). Returns the report, the chosen pattern
    (``(N, K)`` 0/1) under ``pattern``."""
    a = ctx.config.analysis
    evaluation = int(a.realisations)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(int(ctx.config.sampling.seed)),
                                                PATTERN_STREAM), len(ts) - 1)
    key = jax.random.fold_in(key, int(round(1000 * point["top_evals"])))
    candidates = patterns.draw(probs, int(a.pattern_search), key)
    solver = solver_settings(ctx.config)[0]
    selection = range(evaluation, ref.shape[0])
    errors = np.zeros((len(candidates), len(selection)))
    for j, r in enumerate(selection):
        x0, path, key_r = coupling.inputs(r)
        for m, pattern in enumerate(candidates):
            x, _ = ladders.mlem(ladder, probs, x0, ts, key_r, path=path, draws=pattern,
                                solver=solver)
            errors[m, j] = np.mean((np.asarray(x, np.float64) - ref[r]) ** 2)
    index, _ = patterns.select(errors)
    chosen, evaluated, differences = candidates[index], [], []
    for r in range(evaluation):
        x0, path, key_r = coupling.inputs(r)
        x, _ = ladders.mlem(ladder, probs, x0, ts, key_r, path=path, draws=chosen,
                            solver=solver)
        top, _ = ladders.em(ladder, -1, x0, ts, key_r, path=path, solver=solver)
        evaluated.append(np.mean((np.asarray(x, np.float64) - ref[r]) ** 2))
        differences.append(np.asarray(x, np.float64) - np.asarray(top, np.float64))
    report = patterns.selection_report(errors, np.array(evaluated))
    report["bias_against_top_level_em"] = patterns.bias(np.concatenate(differences))
    report["expected_flops"] = float(patterns.cost(chosen, probs, ctx.flops))
    report["point"] = {k: point[k] for k in ("schedule", "top_evals", "steps")}
    report["pattern"] = np.asarray(chosen, int).tolist()  # (N, K) 0/1: what timing re-runs
    return report


def _file_digest(path: str) -> str | None:
    """sha256 of a file's bytes (a learned schedule: rows computed with another are stale)."""
    return files.file_sha256(path) if path and Path(path).is_file() \
        else None


def _pattern_id(point: dict) -> str:
    return f"steps={point['steps']},top_evals={point['top_evals']:g}"


def write_json(path: Path, record: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(common.jsonable(record), indent=1) + "\n")


def write_points(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def read_points(path: Path) -> list[dict]:
    """Rows of ``points.csv`` with numeric fields parsed."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("level", "top", "steps", "realisation"):
            r[k] = int(r[k])
        r["switch_at"] = r.get("switch_at") or 0.0  # files written before switching existed
        for k in ("top_evals", "switch_at", "c", "mse", "expected_flops", "flops", "seconds"):
            r[k] = float(r[k])
    return rows


def run(config: Any, workdir: str | Path, out: str | Path, recompute: bool = False) -> dict:
    """``python -m analysis.cost_error``: :func:`stage` on a freshly prepared context."""
    return stage(common.prepare(config, workdir, out, recompute))


def stage(ctx: common.Context) -> dict:
    """Sweep (resuming), then the statistics and figures (with KID and FD when
    ``config.analysis.quality`` names features); merge the summary and return it."""
    feats = quality.features_for(ctx)
    all_rows, computed = sweep(ctx, feats)
    rows = comparison.own_ladder_rows(all_rows, ctx.ladder.num_levels)
    result = common.jsonable(comparison.analyse(rows, ctx.config, ctx.ladder.num_levels))
    stage_dir, envs = ctx.out / STAGE, result.pop("envelopes")
    (stage_dir / "envelopes.json").write_text(json.dumps(envs, indent=1) + "\n")
    (stage_dir / "speedup.json").write_text(json.dumps(result, indent=1) + "\n")
    plots.cost_error(*comparison.table(comparison.split_rows(rows, ctx.config)[0]), envs,
                     result, stage_dir)
    summary = {k: v for k, v in result.items() if k not in ("curves", "comparisons")}
    oracle = comparison.analyse_oracle(all_rows, ctx.config, ctx.ladder.num_levels)
    if oracle is not None:  # the paper's framing: prefix ladders against the oracle
        (stage_dir / "oracle.json").write_text(json.dumps(common.jsonable(oracle), indent=1)
                                               + "\n")
        summary["oracle"] = common.jsonable(oracle_summary(oracle))
        plots.oracle(common.jsonable(oracle), stage_dir)
    if (stage_dir / PATTERNS).exists():  # selection vs evaluation MSE, bias of the chosen
        summary["pattern_search"] = json.loads((stage_dir / PATTERNS).read_text())
    summary["cost_error_runs_computed_last_call"] = computed
    t = timing_of(ctx.config).settings()
    summary["timing_record"] = (f"batch {t['batch_size']}, median of {t['repeats']} calls after "
                                f"a warm-up, increments on each solve's own grid, "
                                f"{t['backend']} ({t['device']}); the configurations on each "
                                f"curve's selection envelope in predicted seconds")
    if feats is not None:
        summary.update(quality_stage(ctx, rows, feats, result["best_method"]))
    return common.merge_summary(ctx.out, summary)


def oracle_summary(oracle: dict) -> dict:
    """The summary fields of the oracle framing: per comparison and ruler, each target's
    costs and speedup, and the exponents (``oracle.json`` keeps the paths)."""
    out = {k: oracle[k] for k in ("framing", "levels", "targets", "num_realisations",
                                  "num_selection_realisations")}
    out["comparisons"] = {
        name: {ruler: {"targets": c["targets"], "exponents": c.get("exponents")}
               for ruler, c in by_ruler.items()}
        for name, by_ruler in oracle["comparisons"].items()}
    return out


def quality_stage(ctx: common.Context, rows: Sequence[dict], feats: quality.Features,
                  best_method: str) -> dict:
    """KID and FD of the sweep (:func:`analysis.quality.analyse`) into ``quality.json`` and
    the quality figures; returns the summary fields."""
    stage_dir = ctx.out / STAGE
    ref = np.load(stage_dir / "reference.npy", mmap_mode="r")
    ref_features = [feats.fn(np.asarray(ref[r]))
                    for r in range(int(ctx.config.analysis.realisations))]
    result = common.jsonable(quality.analyse(
        rows, quality.load_row_features(stage_dir / quality.FEATURES_FILE), ref_features, feats,
        ctx.config, ctx.ladder.num_levels, best_method))
    (stage_dir / "quality.json").write_text(json.dumps(result, indent=1) + "\n")
    plots.quality(result, stage_dir)
    return quality.summary_fields(result)


if __name__ == "__main__":
    from analysis import cli

    cli.stage_main(run)
