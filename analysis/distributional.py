"""Distributional error at predeclared targets: the cost for a method's *distribution* of
samples to come within ε of the oracle's (docs/design.md §3, docs/analysis.md).

    python -m analysis.distributional --config configs/mnist_reproduce.py --workdir runs/mnist \\
        --out results/mnist_reproduce

Run after :mod:`analysis.cost_error` on the same results directory (``make reproduce-mnist``
runs both); ``config.analysis.distributional`` (:func:`settings`) switches it on.

**Samples.** Every set is ``batch_size`` samples per realisation, each realisation with its
own initial noise, Brownian increments drawn on the solve's own grid and Bernoulli draws
(as deployed: no fine-grid coupling), from ``fold_in(key(seed), STREAM)``, a stream the
pathwise sweep never uses:

* the **oracle** (the top level with the reference solver on the ``oracle_steps`` grid,
  by default ``ref_steps``, at least 4× finer than every compared grid: ``max_steps``
  restricts the candidates to cheaper grids when a cheaper oracle is wanted, as in the demo):
  ``oracle_realisations`` batches, the set every method is judged against, and as many
  further independent batches, the **floor** set (oracle against independent oracle: what
  finite samples alone give);
* each **candidate** configuration: ``selection_realisations`` batches (used only to choose)
  and ``realisations`` batches (every reported number); realisation ``r`` has the same
  inputs for every configuration (paired).

**Errors** of a set of samples against the oracle set: ``fd``, the Fréchet distance of
their features (:mod:`analysis.quality`: the MNIST classifier, Inception on CelebA), and
``moments``, ``‖μ − μ*‖²/D + ‖Σ − Σ*‖_F²/D²`` of the pixels (``D`` pixels), both on the
samples clipped to the data range as an image holds them. KID (unbiased,
so no floor to subtract, but not positive: it cannot be a target on a log scale) is reported
for each chosen configuration with its interval.

**Candidates and paths.** In each framing (own ladder; oracle) and for each curve of
``curves``, the candidates are the curve's configurations on its pathwise lower envelope on
the sweep's *selection* realisations, plus its cheapest configuration at every step count
(a cheap variant may be good enough in distribution while poor pathwise). A method's path
for a ruler is the lower envelope of the candidates' errors on the *selection* sets against
cost; the costs to reach each target are read along it on the evaluation sets.

**Targets**: ``target_ratios`` × the floor (predeclared multiples of a quantity that
involves no method). **Intervals**: resamples of the evaluation realisations (one draw shared
by every configuration, paired) and, independently, of the oracle set's realisations; each
error is recomputed on every resample; a resample on which a method's path does not reach a
target costs it +∞ (:func:`mlem.eval.speedup.compare_paths`). **Costs**: expected FLOPs per
sample (as in the sweep) and seconds per call of a batch of ``timing_batch_size`` as
deployed (:func:`analysis.cost_error.time_deployed`; records in ``timings.json`` reused from
the sweep's where it timed the same configuration).

Outputs in ``DIR/distributional/``: ``samples/`` (one ``.npz`` per configuration, the
oracle's in ``oracle.npz``; an interrupted run resumes), ``timings.json``,
``distributional.json`` and its figures (``distributional_<framing>_<fd|moments>[_seconds]``:
cost to reach each target with intervals and fitted exponents, and the speedup over EM;
:func:`analysis.plots.distributional`); the summary's ``distributional`` field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from analysis import common, comparison, cost_error, plots, quality
from analysis.comparison import config_key
from mlem import ladder as ladders
from mlem import parallel
from mlem.eval import metrics, speedup

STAGE = "distributional"
STREAM = 3  # fold_in(key(seed), STREAM): the distributional sets (the sweep uses 0, 2)
SETS = {"evaluation": 0, "selection": 1, "oracle": 2, "floor": 3}
RULERS = ("fd", "moments")
def settings(config: Any) -> dict:
    """``config.analysis.distributional`` (defaults and meanings: ``configs/sample_base.py``),
    checked."""
    s = dict(config.analysis.distributional)
    for k in ("realisations", "selection_realisations", "batch_size", "oracle_realisations",
              "bootstrap", "kid_subsets", "kid_subset_size", "kid_bootstrap", "oracle_steps",
              "max_steps"):
        s[k] = int(s[k])
    s["oracle_steps"] = s["oracle_steps"] or int(config.analysis.ref_steps)
    if s["max_steps"] and s["oracle_steps"] < 4 * s["max_steps"]:
        raise ValueError(f"config.analysis.distributional: the oracle's grid must be at least "
                         f"4x finer than every compared grid; oracle_steps={s['oracle_steps']} "
                         f"< 4 x max_steps={s['max_steps']}; raise oracle_steps or lower "
                         f"max_steps")
    s["target_ratios"] = tuple(sorted((float(r) for r in s["target_ratios"]), reverse=True))
    s["curves"] = tuple(s["curves"])
    if s["realisations"] < 3 or s["selection_realisations"] < 1 or s["oracle_realisations"] < 2:
        raise ValueError(f"config.analysis.distributional: need realisations >= 3, "
                         f"selection_realisations >= 1 and oracle_realisations >= 2; got "
                         f"{s['realisations']}, {s['selection_realisations']}, "
                         f"{s['oracle_realisations']}")
    if not s["target_ratios"] or min(s["target_ratios"]) <= 0:
        raise ValueError(f"config.analysis.distributional.target_ratios: positive multiples of "
                         f"the floor, got {s['target_ratios']}")
    return s


# --- which configurations ------------------------------------------------------------------------

def framings(rows: Sequence[dict], config: Any, num_levels: int) -> dict[str, list[dict]]:
    """The sweep's rows of each framing: ``own`` always, ``oracle`` when it is declared."""
    out = {"own": comparison.own_ladder_rows(rows, num_levels)}
    if comparison.oracle_enabled(config):
        out["oracle"] = comparison.oracle_rows(rows, num_levels)
    return out


def candidates(rows: Sequence[dict], config: Any, curves: Sequence[str]) -> dict[str, list[dict]]:
    """``{curve: configurations}`` of one framing's ``rows``: the curve's pathwise lower
    envelope in FLOPs on the *selection* realisations, and its cheapest configuration at
    every step count; cheapest first."""
    selection = comparison.split_rows(rows, config)[1]
    if not selection:
        raise ValueError("config.analysis.selection_realisations: the distributional stage "
                         "chooses its candidates on the sweep's selection realisations; set "
                         "it >= 1 and rerun analysis.cost_error")
    configs, sweep_ = comparison.table(selection)
    out = {}
    for curve in (c for c in curves if c in set(sweep_.curve)):
        index = set(speedup.choose_path(sweep_, curve, "flops").tolist())
        members = [i for i, c in enumerate(configs) if c["curve"] == curve]
        for steps in {configs[i]["steps"] for i in members}:
            index.add(min((i for i in members if configs[i]["steps"] == steps),
                          key=lambda i: sweep_.costs["flops"][i]))
        out[curve] = sorted((configs[i] for i in index), key=lambda c: c["expected_flops"])
    return out


def config_id(point: Mapping) -> str:
    return hashlib.sha256("|".join(config_key(point)).encode()).hexdigest()[:16]


# --- generating the sets -------------------------------------------------------------------------

def set_inputs(seed: int, which: str, realisation: int, batch_size: int,
               image_shape: tuple[int, ...], mesh: Any, stream: int = STREAM
               ) -> tuple[jax.Array, None, jax.Array]:
    """``(x0, None, key)`` of realisation ``realisation`` of the set ``which`` (:data:`SETS`)
    in the random stream ``stream``: the solve draws its increments and Bernoulli draws from
    ``key`` on its own grid."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), stream),
                             SETS[which] * 1_000_000 + realisation)
    x0 = jax.random.normal(jax.random.fold_in(key, 0), (batch_size, *image_shape))
    return jax.device_put(x0, parallel.batch_sharded(mesh)), None, jax.random.fold_in(key, 1)


def solve_sets(solve, seed: int, sets: Mapping[str, int], batch_size: int,
               image_shape: tuple[int, ...], mesh: Any, desc: str, stream: int = STREAM,
               workers: int | None = None) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``({set: (R, B, H, W, C)}, (ΣR, K) realised evaluations)`` of ``solve`` on ``sets``
    (the inputs of :func:`set_inputs` in the stream ``stream``), ``workers`` batches at once
    (:func:`mlem.parallel.map_concurrently`)."""
    units = [(which, r) for which, num in sets.items() for r in range(num)]

    def one(unit):
        x, stats = solve(set_inputs(seed, *unit, batch_size, image_shape, mesh, stream))
        return np.asarray(x, np.float32), np.asarray(stats["evals"], np.float64)

    out = list(tqdm(parallel.map_concurrently(one, units, workers), total=len(units),
                    desc=desc, leave=False))
    samples = {which: np.stack([x for (w, _), (x, _) in zip(units, out) if w == which])
               for which in sets}
    return samples, np.stack([e for _, e in out])


def save_npz(path: Path, **arrays: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def schedule_inputs(ctx: common.Context) -> tuple[dict, dict | None, float | None]:
    """``(prices, variances, gamma)`` that :func:`analysis.cost_error.probabilities` needs
    for the sweep's schedules (the variances and γ only when a schedule uses them)."""
    prices = {m: cost_error.level_costs(ctx, m) for m in cost_error.cost_model_names(ctx.config)}
    names = comparison.schedule_names(ctx.config)
    v = cost_error.variances_for(ctx) if {"variance", "constant"} & set(names) else None
    gamma = cost_error.fitted_gamma(ctx.out) if "dyadic" in names else None
    return prices, v, gamma


def generate(ctx: common.Context, points: Sequence[dict], s: dict) -> None:
    """Solve the oracle and floor sets and each configuration's selection and evaluation
    sets not yet in ``samples/`` (one file per configuration, written when complete)."""
    a, mesh = ctx.config.analysis, parallel.make_mesh()
    parallel.check_batch_size(s["batch_size"], mesh.size, "analysis.distributional.batch_size")
    ladder = ladders.on_mesh(ctx.ladder, mesh)
    solver, grid, _ = cost_error.solver_settings(ctx.config)
    path_ts = np.asarray(ctx.ladder.sde.time_grid(int(a.ref_steps), grid), np.float32)
    coupling = cost_error.Coupling(int(ctx.config.sampling.seed), path_ts, s["batch_size"],
                                   ctx.ladder.image_shape, mesh)
    seed, shape, folder = coupling.seed, coupling.image_shape, ctx.out / STAGE / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "oracle.npz").exists():
        oracle_ts = np.asarray(ctx.ladder.sde.time_grid(s["oracle_steps"], grid), np.float32)
        oracle = lambda inputs: ladders.em(ladder, -1, inputs[0], oracle_ts, inputs[2],
                                           solver=solver)
        sets, _ = solve_sets(oracle, seed, {"oracle": s["oracle_realisations"],
                                             "floor": s["oracle_realisations"]},
                              s["batch_size"], shape, mesh,
                              f"oracle ({s['oracle_steps']} steps)")
        save_npz(folder / "oracle.npz", **sets)
    sched = schedule_inputs(ctx)
    todo = [p for p in points if not (folder / f"{config_id(p)}.npz").exists()]

    def solve_group(group):  # configurations sharing one compiled solve, in turn
        for p in group:
            ts = coupling.grid(p["steps"])
            arg = cost_error.probabilities(ctx, p, ts, *sched)[1]
            fn = cost_error._solve_fn(ladder, ts, solver)
            sets, evals = solve_sets(lambda inputs, fn=fn, p=p, arg=arg: fn(p, arg, inputs),
                                     seed, {"selection": s["selection_realisations"],
                                            "evaluation": s["realisations"]},
                                     s["batch_size"], shape, mesh, "|".join(config_key(p)),
                                     workers=1)
            save_npz(folder / f"{config_id(p)}.npz", **sets, evals=evals)
        return len(group)

    groups: dict[tuple, list[dict]] = {}
    for p in todo:  # groups at once: each compiles its own solve
        groups.setdefault((p["steps"], *cost_error.compiled_solve(p)), []).append(p)
    with tqdm(total=len(todo), desc="distributional sets") as bar:
        for done in parallel.map_concurrently(solve_group, list(groups.values()),
                                              first_alone=False):
            bar.update(done)


# --- the errors --------------------------------------------------------------------------------

class Stats:
    """Per-realisation sums of a set's rows ``(R, n, d)``: count, ``Σx`` and ``Σxxᵀ``, from
    which the mean and covariance of any resample of the realisations follow."""

    def __init__(self, rows: np.ndarray):
        rows = np.asarray(rows, np.float64)
        self.n = np.full(rows.shape[0], float(rows.shape[1]))
        self.s1 = rows.sum(1)
        self.s2 = np.einsum("rni,rnj->rij", rows, rows)

    def moments(self, counts: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Mean and unbiased covariance of the realisations taken ``counts`` times each."""
        c = np.ones_like(self.n) if counts is None else np.asarray(counts, np.float64)
        total = c @ self.n
        mu = (c @ self.s1) / total
        sigma = (np.tensordot(c, self.s2, 1) - total * np.outer(mu, mu)) / (total - 1.0)
        return mu, sigma


def _sym_sqrt(sigma: np.ndarray) -> np.ndarray:
    w, q = np.linalg.eigh(sigma)
    return (q * np.sqrt(np.clip(w, 0.0, None))) @ q.T


def frechet(mu: np.ndarray, sigma: np.ndarray, mu_ref: np.ndarray, sigma_ref: np.ndarray,
            sqrt_ref: np.ndarray | None = None) -> float:
    """The Fréchet distance of :func:`mlem.eval.metrics.frechet_distance` by symmetric
    eigendecompositions (``tr (Σ₁Σ₂)^½ = Σ √eig(Σ₂^½ Σ₁ Σ₂^½)``): faster, for the bootstrap;
    ``sqrt_ref`` is ``Σ_ref^½`` when already known."""
    root = _sym_sqrt(sigma_ref) if sqrt_ref is None else sqrt_ref
    eig = np.linalg.eigvalsh(root @ sigma @ root)
    diff = mu - mu_ref
    return float(diff @ diff + np.trace(sigma) + np.trace(sigma_ref)
                 - 2.0 * np.sqrt(np.clip(eig, 0.0, None)).sum())


def moment_error(mu: np.ndarray, sigma: np.ndarray, mu_ref: np.ndarray,
                 sigma_ref: np.ndarray) -> float:
    """``‖μ − μ*‖²/D + ‖Σ − Σ*‖_F²/D²``."""
    d = mu.shape[0]
    return float(np.sum((mu - mu_ref) ** 2) / d + np.sum((sigma - sigma_ref) ** 2) / d**2)


class Judge:
    """The errors of sets against a reference set (``{ruler: Stats}``, rulers of
    :data:`RULERS`), on all realisations (row 0) and on ``num_resamples`` paired resamples:
    ``method_counts (1 + B, R)`` of the methods' realisations and, independently,
    ``ref_counts (1 + B, R_o)`` of the reference's units."""

    def __init__(self, reference: Mapping[str, Stats], method_counts: np.ndarray,
                 ref_counts: np.ndarray):
        self.method_counts, self.rulers = method_counts, [r for r in RULERS if r in reference]
        self.refs = []
        for counts in ref_counts:
            ref = {r: reference[r].moments(counts) for r in self.rulers}
            if "fd" in ref:
                ref["root"] = _sym_sqrt(ref["fd"][1])
            self.refs.append(ref)

    def errors(self, stats: Mapping[str, Stats], counts: np.ndarray | None = None
               ) -> dict[str, np.ndarray]:
        """``{ruler: (1 + B,)}`` errors of a set (``counts``: resamples of its own
        realisations, default the paired ones)."""
        counts = self.method_counts if counts is None else counts
        out = {r: np.empty(len(counts)) for r in self.rulers}
        for b, (c, ref) in enumerate(zip(counts, self.refs)):
            if "fd" in ref:
                out["fd"][b] = frechet(*stats["fd"].moments(c), *ref["fd"], ref["root"])
            if "moments" in ref:
                out["moments"][b] = moment_error(*stats["moments"].moments(c), *ref["moments"])
        return out


def set_stats(samples: np.ndarray, feats: quality.Features) -> dict[str, Stats]:
    """``{ruler: Stats}`` of ``(R, B, H, W, C)`` samples: their features and their pixels,
    both of the samples as an image holds them (clipped to the data range ``[-1, 1]``, as the
    feature networks see them): a coarse solve that diverges has a large but finite error."""
    r, b = samples.shape[:2]
    flat = samples.reshape(r * b, *samples.shape[2:])
    return {"fd": Stats(np.asarray(feats.fn(flat), np.float64).reshape(r, b, -1)),
            "moments": Stats(np.clip(samples, -1.0, 1.0).reshape(r, b, -1))}


# --- the analysis --------------------------------------------------------------------------------

def counts_of(num_units: int, num_resamples: int, seed: int) -> np.ndarray:
    """``(1 + B, R)`` counts: row 0 every realisation once, then resamples with replacement."""
    return np.vstack([np.ones(num_units),
                      speedup.resample_weights(num_units, num_resamples, seed) * num_units])


def analyse(ctx: common.Context, cands: Mapping[str, Mapping[str, list[dict]]], s: dict,
            feats: quality.Features, seconds: Mapping[str, float]) -> dict:
    """Floors, targets, each framing's paths and comparisons (see the module docstring)."""
    folder = ctx.out / STAGE / "samples"
    with np.load(folder / "oracle.npz") as f:
        oracle_x, floor_x = f["oracle"], f["floor"]
    oracle = set_stats(oracle_x, feats)
    judge = Judge(oracle, counts_of(s["realisations"], s["bootstrap"], 0),
                  counts_of(s["oracle_realisations"], s["bootstrap"], 1))
    floor = debiased(judge.errors(set_stats(floor_x, feats),
                                  counts_of(s["oracle_realisations"], s["bootstrap"], 2)))
    oracle_features = feats.fn(oracle_x.reshape(-1, *oracle_x.shape[2:]))
    targets = {ruler: {f"{r:g}x floor": r * float(floor[ruler][0]) for r in s["target_ratios"]}
               for ruler in RULERS}
    unique = {config_id(p): p for by_curve in cands.values() for ps in by_curve.values()
              for p in ps}
    selection_err, evaluation_err, kid = {}, {}, {}
    for cid in tqdm(unique, desc="distributional errors"):
        with np.load(folder / f"{cid}.npz") as f:
            sel, ev = f["selection"], f["evaluation"]
        selection_err[cid] = {k: float(v[0]) for k, v in judge.errors(
            set_stats(sel, feats), np.ones((1, sel.shape[0]))).items()}
        evaluation_err[cid] = debiased(judge.errors(set_stats(ev, feats)))
        units = [feats.fn(x) for x in ev]
        kid[cid] = metrics.kid_with_ci(units, oracle_features, s["kid_subsets"],
                                       min(s["kid_subset_size"], len(oracle_features)),
                                       s["kid_bootstrap"])
    cost = {"flops": lambda p: float(p["expected_flops"]),
            "seconds": lambda p: float(seconds.get(config_id(p), np.nan))}
    result: dict = {"floor": {r: speedup.estimate(floor[r][0], floor[r][1:],
                                                  s["oracle_realisations"]) for r in RULERS},
                    "targets": targets, "framings": {}}
    for name, by_curve in cands.items():
        configs = {curve: [{**_describe(p), "selection_error": selection_err[config_id(p)],
                            "error": {r: float(evaluation_err[config_id(p)][r][0])
                                      for r in RULERS},
                            "kid": kid[config_id(p)], "seconds": cost["seconds"](p)}
                           for p in ps] for curve, ps in by_curve.items()}
        comps = {}
        for base, other in _pairs(by_curve):
            for ruler in RULERS:
                for c_name, c_of in cost.items():
                    paths = {k: _path(by_curve[k], selection_err, ruler, c_of)
                             for k in (base, other)}

                    def along(path, ruler=ruler, c_of=c_of):
                        err = np.stack([evaluation_err[config_id(p)][ruler] for p in path], 1)
                        return np.broadcast_to([c_of(p) for p in path], err.shape), err

                    if any(not path for path in paths.values()):
                        continue
                    (cb, eb), (co, eo) = along(paths[base]), along(paths[other])
                    fit = speedup.reached_by_all(  # reached by both on the selection sets
                        [([c_of(p) for p in paths[k]],
                          [selection_err[config_id(p)][ruler] for p in paths[k]])
                         for k in (base, other)], targets[ruler])
                    comps.setdefault(f"{other} vs {base}", {}).setdefault(ruler, {})[c_name] = {
                        "paths": {k: [_describe(p) for p in v] for k, v in paths.items()},
                        **speedup.compare_paths(cb, eb, co, eo, targets[ruler],
                                                s["realisations"], fit)}
        result["framings"][name] = {"configurations": configs, "comparisons": comps}
    return result


def debiased(errors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Resampled errors shifted by their mean excess over the point value (row 0). A resample
    with repeated batches has fewer distinct samples, which inflates a plug-in distance (FD,
    moments) by a finite-sample bias that the point value does not carry; without the shift
    every interval sits above its point. Kept positive (a log scale follows)."""
    out = {}
    for ruler, e in errors.items():
        point, boot = e[0], e[1:]
        shifted = boot - (boot.mean() - point)
        out[ruler] = np.concatenate([[point], np.maximum(shifted, 1e-6 * point)])
    return out


def _pairs(by_curve: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(base, other)``: every other curve against EM, ML-EM curves against switching."""
    curves = list(by_curve)
    out = [("em", c) for c in curves if c != "em" and "em" in by_curve]
    if "switch" in by_curve:
        out += [("switch", c) for c in curves if c.startswith("mlem")]
    return out


def _path(points: Sequence[dict], selection_err: Mapping[str, dict], ruler: str, cost_of
          ) -> list[dict]:
    """The lower envelope of the candidates' *selection* errors against cost, cheapest
    first (configurations without a finite cost are left out)."""
    ok = [p for p in points if np.isfinite(cost_of(p))]
    if not ok:
        return []
    env = speedup.Envelope.of([cost_of(p) for p in ok],
                              [selection_err[config_id(p)][ruler] for p in ok])
    return [ok[i] for i in env.index]


def _describe(p: Mapping) -> dict:
    return {k: p[k] for k in ("curve", "method", "level", "top", "top_evals", "switch_at",
                              "steps", "expected_flops")}


def time_configurations(ctx: common.Context, points: Sequence[dict], s: dict) -> dict[str, float]:
    """Seconds as deployed of each configuration: the sweep's record when it timed it (same
    timing settings), otherwise timed now; stored in ``timings.json`` (resumable)."""
    path = ctx.out / STAGE / "timings.json"
    records = json.loads(path.read_text()) if path.exists() else {}
    swept = ctx.out / cost_error.STAGE / cost_error.TIMINGS
    timing = cost_error.timing_of(ctx.config)
    if swept.exists():
        for k, rec in json.loads(swept.read_text()).items():
            if all(rec.get(f) == v for f, v in timing.settings().items()):
                records.setdefault(k, rec)
    mesh = parallel.make_mesh()
    ladder = ladders.on_mesh(ctx.ladder, mesh)
    solver, grid, _ = cost_error.solver_settings(ctx.config)
    coupling = cost_error.Coupling(int(ctx.config.sampling.seed), np.asarray(
        ctx.ladder.sde.time_grid(int(ctx.config.analysis.ref_steps), grid), np.float32),
        timing.batch_size, ctx.ladder.image_shape, mesh)
    sched = schedule_inputs(ctx)
    todo = [p for p in points if "|".join(config_key(p)) not in records]
    for p in tqdm(todo, desc="timing as deployed"):
        ts = coupling.grid(p["steps"])
        arg = cost_error.probabilities(ctx, p, ts, *sched)[1]
        fn = cost_error._solve_fn(ladder, ts, solver)
        records["|".join(config_key(p))] = cost_error.time_deployed(
            lambda inputs, fn=fn, p=p, arg=arg: fn(p, arg, inputs), coupling, timing)
        cost_error.write_json(path, records)
    cost_error.write_json(path, records)
    return {config_id(p): float(records["|".join(config_key(p))]["seconds"]) for p in points}


# what the stored sets depend on
SAMPLE_KEYS = ("realisations", "selection_realisations", "batch_size", "oracle_realisations",
               "seed", "ref_steps", "oracle_steps", "solver", "grid")


def keep_samples(ctx: common.Context, record: Mapping, stage_name: str = STAGE,
                 keys: Sequence[str] = SAMPLE_KEYS) -> None:
    """Keep the stored sets of ``stage_name`` (and their timings) when the settings they
    depend on (``keys``, beside the results directory's manifest) are those they were made
    with; otherwise (or with ``--recompute``) delete them. The analysis-only settings
    (targets, curves, resamples, KID) never cost a regeneration."""
    folder = ctx.out / stage_name
    key_file = folder / "samples" / "samples.json"
    want = {k: record[k] for k in keys if k in record}
    if key_file.exists():
        have = json.loads(key_file.read_text())
        if "oracle_steps" in want and "oracle_steps" not in have and "ref_steps" in have:
            have["oracle_steps"] = have["ref_steps"]  # written before oracle_steps existed
    else:  # sets written before the key file existed: the stage record's settings
        stage_file = folder / common.STAGE
        old = json.loads(stage_file.read_text())["settings"] if stage_file.exists() else {}
        have = {k: old[k] for k in keys if k in old}
    if ctx.recompute or have != common.jsonable(want):
        for f in (folder / "samples").glob("*.npz"):
            f.unlink()
        (folder / "timings.json").unlink(missing_ok=True)
    key_file.parent.mkdir(parents=True, exist_ok=True)
    key_file.write_text(json.dumps(common.jsonable(want), indent=1) + "\n")


def stage(ctx: common.Context) -> dict:
    """Generate (resuming), time, judge; write ``distributional.json`` and merge the summary
    (``{}`` when ``config.analysis.distributional.enabled`` is off)."""
    s = settings(ctx.config)
    if not s["enabled"]:
        return {}
    feats = quality.required_features(ctx, "config.analysis.distributional")
    sweep_path = ctx.out / cost_error.STAGE / "points.csv"
    if not sweep_path.exists():
        raise FileNotFoundError(f"{sweep_path}: run python -m analysis.cost_error on this "
                                f"results directory first (its selection realisations choose "
                                f"the candidates)")
    rows = cost_error.read_points(sweep_path)
    if s["max_steps"]:
        rows = [r for r in rows if r["steps"] <= s["max_steps"]]
    elif 4 * max(r["steps"] for r in rows) > s["oracle_steps"]:
        raise ValueError(f"config.analysis.distributional.oracle_steps={s['oracle_steps']}: "
                         f"the oracle's grid must be at least 4x finer than every compared "
                         f"grid (the sweep's finest has {max(r['steps'] for r in rows)} "
                         f"steps); set max_steps to restrict the candidates")
    cands = {name: candidates(r, ctx.config, s["curves"])
             for name, r in framings(rows, ctx.config, ctx.ladder.num_levels).items()}
    points = list({config_id(p): p for by_curve in cands.values()
                   for ps in by_curve.values() for p in ps}.values())
    record = {k: v for k, v in s.items() if k != "enabled"}
    record.update(seed=int(ctx.config.sampling.seed), ref_steps=int(ctx.config.analysis.ref_steps),
                  features=feats.record, **cost_error.solver_settings(ctx.config)[2])
    keep_samples(ctx, record)
    common.save_stage(ctx.out, STAGE, record, {"result": "distributional.json"})
    generate(ctx, points, s)
    seconds = time_configurations(ctx, points, s)
    result = common.jsonable(analyse(ctx, cands, s, feats, seconds))
    (ctx.out / STAGE / "distributional.json").write_text(json.dumps(result, indent=1) + "\n")
    plots.distributional(result, ctx.out / STAGE)
    return common.merge_summary(ctx.out, {"distributional": summary_fields(result, s)})


def summary_fields(result: Mapping, s: Mapping) -> dict:
    """Floors, targets and, per framing, comparison, ruler and cost, each target's speedup
    and costs and the exponents (``distributional.json`` keeps the configurations)."""
    return {"samples_per_point": s["realisations"] * s["batch_size"],
            "oracle_samples": s["oracle_realisations"] * s["batch_size"],
            "oracle_steps": s["oracle_steps"], "max_steps": s["max_steps"] or None,
            "floor": result["floor"], "targets": result["targets"],
            "comparisons": {name: f["comparisons"] for name, f in result["framings"].items()}}


def run(config: Any, workdir: str | Path, out: str | Path, recompute: bool = False) -> dict:
    """``python -m analysis.distributional``: :func:`stage` on a freshly prepared context."""
    return stage(common.prepare(config, workdir, out, recompute))


if __name__ == "__main__":
    from analysis import cli

    cli.stage_main(run)
