"""The coupled cost-vs-error sweep of EM and ML-EM, and the speedup (DESIGN.md §3).

    python -m analysis.cost_error --config configs/mnist_sample.py --workdir runs/mnist \\
        --out results/mnist_cpu [--recompute]

**Coupling.** Batch ``b`` (``config.analysis.batch_size`` samples) takes its initial noise
and Brownian path from ``fold_in(key(config.sampling.seed), b)`` exactly as ``python -m
sample`` does (:func:`mlem.generation.batch_inputs`); the path lives on the finest grid
(``config.analysis.ref_steps``) and a grid of ``N`` steps sums consecutive fine increments.
**Reference**: EM with the top level on the finest grid, batch by batch (``ref_steps × batch``
increments in memory at a time), cached in ``reference.npy``.
**Sweep**: EM at every level over ``em_steps``; ML-EM over ``schedules × c_values ×
mlem_steps`` and ``seeds`` seeds of the Bernoulli draws (EM is deterministic given the
coupling: one seed). Draws are shared by a batch, so each batch is one realisation.
**Error** = MSE over samples and pixels against the reference, ``mse_se`` its standard error
over samples; **cost** = realised FLOPs per sample (``Σ evals × level FLOPs``); ``wall_s`` =
wall-clock seconds per sample, compilation excluded (JAX's compile events subtracted).

Outputs in ``DIR/cost_error/``: ``points.csv`` (every point, written group by group: an
interrupted sweep resumes), ``envelopes.json``, ``speedup.json`` and ``cost_error.png/pdf``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from analysis import common, figures, variance
from mlem import brownian, cost, generation, levels, parallel, schedules

STAGE = "cost_error"
COLUMNS = ("method", "schedule", "level", "c", "steps", "seed", "mse", "mse_se", "flops",
           "expected_flops", "wall_s", "evals")
KEY = ("method", "schedule", "level", "c", "steps", "seed")


@dataclasses.dataclass(frozen=True, eq=False)
class Coupling:
    """Initial noise, Brownian path and Bernoulli keys shared by every run of the sweep.

    Batch ``b`` takes them from :func:`mlem.generation.batch_inputs` (``fold_in(key(seed), b)``,
    the convention of ``python -m sample``); the path lives on the finest grid ``path_ts``.
    Seed ``s > 0`` of the Bernoulli draws folds ``s`` into the batch's draw key.
    """

    seed: int
    path_ts: np.ndarray  # (N_ref + 1,) the finest grid
    shape: tuple[int, ...]  # (B, H, W, C) of a batch
    mesh: Any  # jax.sharding.Mesh over all local devices

    def inputs(self, batch: int, num_steps: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``x0 (B, H, W, C)``, increments ``(num_steps, B, H, W, C)``, draw key of ``batch``."""
        return generation.batch_inputs(self.seed, batch, self.shape, self.path_ts, num_steps,
                                       self.mesh)

    def grid(self, num_steps: int) -> np.ndarray:
        return np.asarray(brownian.coarse_grid(jnp.asarray(self.path_ts), num_steps))


def bernoulli_key(draw_key: jax.Array, seed: int) -> jax.Array:
    return draw_key if seed == 0 else jax.random.fold_in(draw_key, seed)


def reference(ctx: common.Context, ladder: Any, coupling: Coupling, num_samples: int,
              reuse: bool) -> np.ndarray:
    """``(n, H, W, C)`` EM with the top level on the finest grid, batch by batch (memory:
    ``ref_steps × batch`` increments at a time); cached in ``reference.npy``."""
    path = ctx.out / STAGE / "reference.npy"
    if reuse and path.exists():
        ref = np.load(path)
        if ref.shape[0] == num_samples:
            return ref
    n_ref, out = len(coupling.path_ts) - 1, []
    for b in tqdm(range(num_samples // coupling.shape[0]), desc=f"reference ({n_ref} steps)"):
        x0, inc, key = coupling.inputs(b, n_ref)
        x, _ = levels.em(ladder, ladder.num_levels - 1, x0, coupling.path_ts, key, inc)
        out.append(np.asarray(x))
    ref = np.concatenate(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, ref)
    return ref


def configurations(config: Any, num_levels: int) -> list[dict]:
    """Every point of the sweep (one dict of :data:`KEY` fields each)."""
    a = config.analysis
    em = [{"method": "em", "schedule": "", "level": k, "c": float("nan"), "steps": int(n),
           "seed": 0} for k in range(1, num_levels + 1) for n in a.em_steps]
    ml = [{"method": "mlem", "schedule": s, "level": num_levels, "c": float(c), "steps": int(n),
           "seed": seed} for s in schedule_names(config) for c in a.c_values
          for n in a.mlem_steps for seed in range(int(a.seeds))]
    for n in {p["steps"] for p in em + ml}:
        if n < 1 or int(a.ref_steps) % n:
            raise ValueError(f"config.analysis.em_steps/mlem_steps: {n} must divide "
                             f"ref_steps={a.ref_steps}")
    return em + ml


def schedule_names(config: Any) -> tuple[str, ...]:
    names = tuple(config.analysis.get("schedules", ("variance",)))
    unknown = set(names) - {"variance", "constant", "dyadic"}
    if unknown or not names:
        raise ValueError(f"config.analysis.schedules: choose from variance, constant, dyadic; "
                         f"got {names}")
    return names


def make_probs(schedule: str, c: float, ts: np.ndarray, flops: np.ndarray,
               variances: dict | None, gamma: float | None) -> np.ndarray:
    """``(N, K)`` ML-EM probabilities of ``schedule`` with knob ``c`` on the grid ``ts``.

    ``variance``: ``p_k(τ) = min(1, c·sqrt(V_k(τ)/C_k))`` per time bin; ``constant``: the
    same with ``V_k`` averaged over time; ``dyadic``: ``min(1, c·2^{−(1+γ/2)(k−1)})``.
    """
    num_steps = len(ts) - 1
    if schedule == "dyadic":
        if gamma is None:
            raise ValueError("schedule 'dyadic' needs gamma: run python -m analysis.fit_gamma "
                             "first (or drop 'dyadic' from config.analysis.schedules)")
        return schedules.constant(schedules.dyadic(len(flops), gamma, c), num_steps)
    v, inc_cost = np.asarray(variances["variances"]), schedules.increment_costs(flops)
    if schedule == "constant":
        return schedules.constant(schedules.variance_optimal(v.mean(0), inc_cost, c), num_steps)
    return schedules.on_grid(schedules.variance_optimal(v, inc_cost, c), variances["bin_edges"],
                             ts)


def _variances(ctx: common.Context) -> dict:
    """The configured variances file, else this results dir's (reused or measured now)."""
    given = ctx.config.sampling.get("variance_file", "")
    if not given:
        return variance.write_variances(ctx)
    edges, v = generation.load_variances(given, ctx.config.levels)
    return {"bin_edges": edges.tolist(), "variances": v.tolist()}


def _summary(out: Path) -> dict:
    path = out / common.SUMMARY
    return json.loads(path.read_text()) if path.exists() else {}


def _on_mesh(ladder: levels.Ladder, mesh: Any) -> levels.Ladder:
    """The ladder with parameters replicated over ``mesh`` (itself on one device)."""
    if mesh.size == 1:
        return ladder
    params = jax.device_put(ladder.params, parallel.replicated(mesh))
    return levels.Ladder(ladder.names, ladder.models, params, ladder.image_shape, ladder.sde)


def run_group(ladder: levels.Ladder, flops: np.ndarray, coupling: Coupling, ref: np.ndarray,
              points: Sequence[dict], probs: Sequence[np.ndarray | None], steps: int
              ) -> list[dict]:
    """Every point with ``steps`` steps, batch by batch (inputs drawn once per batch)."""
    ts, batch = coupling.grid(steps), coupling.shape[0]
    sq, evals = [[] for _ in points], [[] for _ in points]
    wall = np.zeros(len(points))

    def solve(point, p, x0, inc, key):
        if point["method"] == "em":
            return levels.em(ladder, point["level"] - 1, x0, ts, key, inc)
        return levels.mlem(ladder, p, x0, ts, bernoulli_key(key, point["seed"]), inc)

    for b in tqdm(range(ref.shape[0] // batch), desc=f"{steps} steps x {len(points)} runs",
                  leave=False):
        x0, inc, key = coupling.inputs(b, steps)
        for j, (point, p) in enumerate(zip(points, probs)):
            with generation.compile_timer() as compile_seconds:  # compilation is not counted
                start = time.perf_counter()
                x, stats = jax.block_until_ready(solve(point, p, x0, inc, key))
                wall[j] += time.perf_counter() - start - compile_seconds()
            diff = np.asarray(x, np.float64) - ref[b * batch:(b + 1) * batch]
            sq[j].append(np.mean(diff**2, axis=tuple(range(1, diff.ndim))))
            evals[j].append(np.asarray(stats["evals"], np.float64))
    return [_row(flops, point, np.concatenate(s), np.mean(e, 0), w / ref.shape[0], p, steps)
            for point, s, e, w, p in zip(points, sq, evals, wall, probs)]


def _row(flops, point, sq, evals, wall_s, probs, steps) -> dict:
    costs = flops if point["method"] == "mlem" else flops[point["level"] - 1:point["level"]]
    expected = steps * costs[0] if probs is None else cost.expected_cost(probs, flops)
    return {**point, "mse": float(sq.mean()), "mse_se": float(sq.std(ddof=1) / np.sqrt(sq.size)),
            "flops": float(evals @ costs), "expected_flops": float(expected),
            "wall_s": float(wall_s), "evals": ";".join(f"{e:g}" for e in evals)}


def sweep(ctx: common.Context) -> list[dict]:
    """Run (or resume) the sweep; returns every row of ``points.csv``."""
    a, mesh = ctx.config.analysis, parallel.make_mesh()
    n, batch = int(a.num_samples), int(a.batch_size)
    if n % batch or n < 2:
        raise ValueError(f"config.analysis.num_samples ({n}) must be a multiple of "
                         f"config.analysis.batch_size ({batch}) and >= 2")
    parallel.check_batch_size(batch, mesh.size, "analysis.batch_size")
    names = schedule_names(ctx.config)
    v = _variances(ctx) if {"variance", "constant"} & set(names) else None
    gamma = _summary(ctx.out).get("gamma") if "dyadic" in names else None
    settings = {"num_samples": n, "batch_size": batch, "ref_steps": int(a.ref_steps),
                "seed": int(ctx.config.sampling.seed), "level_flops": ctx.flops.tolist(),
                "variances": common.digest(v) if v else None, "gamma": gamma}
    path = ctx.out / STAGE / "points.csv"
    fresh = common.load_stage(ctx.out, STAGE, settings, ctx.recompute) is None
    points = configurations(ctx.config, ctx.ladder.num_levels)
    wanted = {_key(p) for p in points}  # rows of configurations no longer swept are dropped
    rows = [] if fresh or not path.exists() else [r for r in read_points(path)
                                                  if _key(r) in wanted]
    done = {_key(r) for r in rows}
    todo = [p for p in points if _key(p) not in done]
    common.save_stage(ctx.out, STAGE, settings, {"points": "points.csv"})
    write_points(path, rows)
    if not todo:
        return rows
    ladder = _on_mesh(ctx.ladder, mesh)
    coupling = Coupling(int(ctx.config.sampling.seed),
                        np.asarray(ctx.ladder.sde.time_grid(int(a.ref_steps)), np.float32),
                        (batch, *ctx.ladder.image_shape), mesh)
    ref = reference(ctx, ladder, coupling, n, reuse=not fresh)
    for steps in tqdm(sorted({p["steps"] for p in todo}), desc="cost-error sweep"):
        group = [p for p in todo if p["steps"] == steps]
        ts = coupling.grid(steps)
        probs = [None if p["method"] == "em" else
                 make_probs(p["schedule"], p["c"], ts, ctx.flops, v, gamma) for p in group]
        rows += run_group(ladder, ctx.flops, coupling, ref, group, probs, steps)
        write_points(path, rows)
    return rows


def _key(point: dict) -> tuple:
    return tuple(f"{point[k]:.6g}" if k == "c" else str(point[k]) for k in KEY)


def write_points(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def read_points(path: Path) -> list[dict]:
    """Rows of ``points.csv`` with numeric fields parsed."""
    with path.open() as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["level"], r["steps"], r["seed"] = int(r["level"]), int(r["steps"]), int(r["seed"])
        for k in ("c", "mse", "mse_se", "flops", "expected_flops", "wall_s"):
            r[k] = float(r[k])
    return rows


# --- envelopes and speedup ----------------------------------------------------------------

def seed_average(rows: Sequence[dict]) -> list[dict]:
    """One point per configuration: means over seeds (``mse_se``: the mean of the per-seed
    standard errors, conservative since seeds share the samples; ``mse_seed_sd``: spread)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_key(r)[:-1], []).append(r)
    out = []
    for g in groups.values():
        mse = np.array([r["mse"] for r in g])
        out.append({**{k: g[0][k] for k in KEY[:-1]}, "seeds": len(g), "mse": mse.mean(),
                    "mse_se": np.mean([r["mse_se"] for r in g]),
                    "mse_seed_sd": mse.std(ddof=1) if len(g) > 1 else 0.0,
                    "flops": np.mean([r["flops"] for r in g]),
                    "wall_s": np.mean([r["wall_s"] for r in g])})
    return out


def curve_name(point: dict) -> str:
    return "em" if point["method"] == "em" else f"mlem-{point['schedule']}"


def envelopes(averaged: Sequence[dict]) -> dict[str, dict]:
    """Lower envelope of each method's seed-averaged points (zero-MSE reference runs dropped)."""
    out = {}
    for name in sorted({curve_name(p) for p in averaged}):
        pts = [p for p in averaged if curve_name(p) == name and p["mse"] > 0]
        if not pts:
            continue
        idx = common.lower_envelope([p["flops"] for p in pts], [p["mse"] for p in pts])
        out[name] = {k: [float(pts[i][k]) for i in idx]
                     for k in ("flops", "mse", "mse_se", "mse_seed_sd", "wall_s")}
        out[name]["points"] = [{k: pts[i][k] for k in ("level", "c", "steps")} for i in idx]
    return out


def operating_point(config: Any, averaged: Sequence[dict], num_levels: int) -> tuple[float, str]:
    """``config.analysis.operating_point`` (an MSE), or with 'auto' the MSE of EM at the top
    level with ``config.sampling.steps`` steps (the nearest swept step count)."""
    op = config.analysis.get("operating_point", "auto")
    if op != "auto":
        return float(op), "config.analysis.operating_point"
    top = [p for p in averaged if p["method"] == "em" and p["level"] == num_levels
           and p["mse"] > 0]
    if not top:
        raise ValueError("config.analysis.em_steps: need a top-level EM point below ref_steps "
                         "to define the operating point (or set config.analysis.operating_point)")
    want = int(config.sampling.steps)
    best = min(top, key=lambda p: abs(np.log(p["steps"] / want)))
    return best["mse"], f"MSE of EM at the top level with {best['steps']} steps"


def analyse(rows: Sequence[dict], config: Any, num_levels: int, gamma: float | None) -> dict:
    """Envelopes, speedup at equal MSE, MSE ratio at equal cost, wall-clock ÷ FLOP speedup,
    envelope slopes and the slopes γ predicts (NaN where a value falls outside the ranges)."""
    averaged = seed_average(rows)
    envs = envelopes(averaged)
    primary = next((n for n in ("mlem-variance", "mlem-constant", "mlem-dyadic") if n in envs),
                   None)
    if "em" not in envs or primary is None:
        raise ValueError("the sweep has no EM or no ML-EM point with MSE > 0")
    op_mse, op_text = operating_point(config, averaged, num_levels)
    em, ml = envs["em"], envs[primary]
    return {"envelopes": envs, "speedup_method": primary, "operating_point": op_text,
            "operating_point_mse": op_mse, **_speedups(em, ml, op_mse),
            "em_envelope_slope": common.loglog_slope(em["mse"], em["flops"]),
            "mlem_envelope_slope": common.loglog_slope(ml["mse"], ml["flops"]),
            "predicted_em_slope": -(gamma + 1) / 2 if gamma else None,
            "predicted_mlem_slope": -gamma / 2 if gamma and gamma > 2 else None}


def _interp(env: dict, x_key: str, y_key: str, x: float) -> float:
    return float(common.loglog_interp([x], env[x_key], env[y_key])[0]) if x > 0 else np.nan


def _speedups(em: dict, ml: dict, op_mse: float) -> dict:
    """The speedup and MSE-ratio curves and their values at the operating point."""
    grid, curve = common.speedup_curve((em["flops"], em["mse"]), (ml["flops"], ml["mse"]))
    cost_grid, ratio = common.mse_ratio_curve((em["flops"], em["mse"]), (ml["flops"], ml["mse"]))
    speedup_at = lambda m: _interp(em, "mse", "flops", m) / _interp(ml, "mse", "flops", m)
    op_cost = _interp(ml, "mse", "flops", op_mse)  # what ML-EM pays for the operating MSE
    best = int(np.nanargmax(curve)) if np.isfinite(curve).any() else None
    match = op_mse if np.isfinite(speedup_at(op_mse)) else grid[best] if best is not None else 0
    wall = _interp(em, "mse", "wall_s", match) / _interp(ml, "mse", "wall_s", match)
    return {
        "speedup_curve": np.stack([grid, curve], 1),
        "speedup_at_equal_mse_max": curve[best] if best is not None else None,
        "speedup_at_equal_mse_max_mse": grid[best] if best is not None else None,
        "speedup_at_operating_point": speedup_at(op_mse),
        "mse_ratio_curve": np.stack([cost_grid, ratio], 1),
        "mse_ratio_at_equal_cost": (_interp(em, "flops", "mse", op_cost)
                                    / _interp(ml, "flops", "mse", op_cost)),
        "mse_ratio_at_equal_cost_max": np.nanmax(ratio) if np.isfinite(ratio).any() else None,
        "mlem_flops_at_operating_point": op_cost,
        "em_flops_at_operating_point": _interp(em, "mse", "flops", op_mse), "matched_mse": match,
        "wallclock_speedup": wall, "flops_speedup_at_matched_mse": speedup_at(match),
        "wallclock_speedup_over_flops_speedup": wall / speedup_at(match),
    }


def run(config: Any, workdir: str | Path, out: str | Path, recompute: bool = False) -> dict:
    """``python -m analysis.cost_error``: :func:`stage` on a freshly prepared context."""
    return stage(common.prepare(config, workdir, out, recompute))


def stage(ctx: common.Context) -> dict:
    """Sweep (resuming), then envelopes, speedup, figure; merge the summary and return it."""
    rows = sweep(ctx)
    result = analyse(rows, ctx.config, ctx.ladder.num_levels, _summary(ctx.out).get("gamma"))
    stage = ctx.out / STAGE
    (stage / "envelopes.json").write_text(
        json.dumps(common.jsonable(result.pop("envelopes")), indent=1) + "\n")
    (stage / "speedup.json").write_text(json.dumps(common.jsonable(result), indent=1) + "\n")
    figures.plot_cost_error(stage)
    summary = {k: v for k, v in result.items() if not k.endswith("_curve")}
    return common.merge_summary(ctx.out, summary)


if __name__ == "__main__":
    common.cli(run)
