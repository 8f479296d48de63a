"""The samplers users pick, single-level and multilevel, in distribution: the cheapest
single-level sampler of any kind against the cheapest multilevel one at predeclared targets
(docs/solvers.md, docs/analysis.md).

    python -m analysis.samplers --config configs/mnist_reproduce.py --workdir runs/mnist \\
        --out results/mnist_reproduce

Run after :mod:`analysis.distributional` on the same results directory (it judges against
that stage's oracle set); ``config.analysis.samplers`` (:func:`settings`) switches it on.

**Configurations.** Every update rule of ``solvers`` (EM on the reverse SDE, DDIM,
DPM-Solver++(2M) and its SDE variant, EDM's Heun; :mod:`mlem.solvers`) on every grid of
``grids`` and every step count of ``steps``: *single-level* with each level, and
*multilevel* on each prefix ladder ``1…k`` (``k ≥ 2``) with the variance-optimal schedule
priced in FLOPs and ``top_fraction × steps`` expected top-level evaluations per solve.

**Two phases, nothing chosen on what it is judged on.** Every configuration solves
``selection_realisations`` batches (as deployed, a stream no other stage uses; batch ``r``
has the same initial noise for every configuration). On those alone, each group's path is
chosen: the lower envelope of its members' selection errors against their FLOPs. Only the
configurations on some path then solve ``realisations`` evaluation batches, on which every
reported number is measured; their seconds are timed as deployed
(:func:`analysis.cost_error.time_deployed`) and the seconds paths are chosen, again on the
selection errors, among them.

**Groups.** ``single`` and ``multilevel`` in three framings: ``all`` (any level, any
prefix), ``own`` (the top level alone against the full ladder: how cheaply can I sample my
best model) and ``oracle`` (levels and prefixes below the oracle's network).

**References and targets.** ``oracle``: the oracle set of :mod:`analysis.distributional`
(the top level, reference solver, ``oracle_steps`` steps), in FD and pixel moments, targets
``oracle_ratios`` × that stage's floor. ``data``: the held-out data in the feature space
(FD), targets ``data_ratios`` × the oracle set's own FD to the data (a solver may come
closer to the data than the oracle: the ODE and SDE solvers of an imperfect network
converge to different distributions). Intervals resample the evaluation batches (paired
across configurations) and, independently, the reference's units; a resample on which a
path does not reach a target costs it +∞ (:func:`mlem.eval.speedup.compare_paths`).

Outputs in ``DIR/samplers/``: ``samples/`` (``<id>.<set>.npz``; an interrupted run
resumes), ``timings.json``, ``samplers.json`` and ``samplers.png`` (per solver family, the
selection envelopes, exploratory); the summary's ``samplers`` field.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tqdm import tqdm

from analysis import common, cost_error, distributional, quality
from analysis.distributional import Judge, Stats, counts_of, debiased, set_stats
from mlem import ladder as ladders
from mlem import parallel
from mlem import sde as sde_lib
from mlem import solvers as solver_lib
from mlem.eval import speedup

STAGE = "samplers"
SAMPLE_KEYS = ("selection_realisations", "realisations", "batch_size", "seed")  # a set's inputs
STREAM = 4  # fold_in(key(seed), STREAM): this stage's sets (distributional uses 3)
KINDS = ("single", "multilevel")
CHUNK = 8  # configurations compiled between two clear_compiled() calls
FRAMINGS = ("all", "own", "oracle")


def settings(config: Any) -> dict:
    """``config.analysis.samplers`` (defaults and meanings: ``configs/sample_base.py``),
    checked."""
    s = dict(config.analysis.samplers)
    for k in ("selection_realisations", "realisations", "batch_size", "bootstrap"):
        s[k] = int(s[k])
    for k in ("oracle_ratios", "data_ratios"):
        s[k] = tuple(sorted((float(r) for r in s[k]), reverse=True))
    s["solvers"] = tuple(solver_lib.check_solver(x) for x in s["solvers"])
    s["grids"] = tuple(sde_lib.check_grid(g) for g in s["grids"])
    s["steps"] = tuple(int(n) for n in s["steps"])
    if s["realisations"] < 3 or s["selection_realisations"] < 1 or not s["steps"]:
        raise ValueError(f"config.analysis.samplers: need realisations >= 3, "
                         f"selection_realisations >= 1 and some steps; got "
                         f"{s['realisations']}, {s['selection_realisations']}, {s['steps']}")
    if not 0 < float(s["top_fraction"]) <= 1:
        raise ValueError(f"config.analysis.samplers.top_fraction: in (0, 1], got "
                         f"{s['top_fraction']}")
    return s


# --- configurations ------------------------------------------------------------------------------

def configurations(s: Mapping, num_levels: int) -> list[dict]:
    """Every configuration of the stage: single-level ones, then multilevel ones."""
    out = []
    for solver, grid, steps in itertools.product(s["solvers"], s["grids"], s["steps"]):
        base = {"solver": solver, "grid": grid, "steps": steps}
        out += [{**base, "kind": "single", "level": k, "top": k, "top_evals": 0.0}
                for k in range(1, num_levels + 1)]
        out += [{**base, "kind": "multilevel", "level": 0, "top": k,
                 "top_evals": float(s["top_fraction"]) * steps}
                for k in range(2, num_levels + 1)]
    return out


def config_id(c: Mapping) -> str:
    key = "|".join(f"{k}={c[k]}" for k in ("kind", "solver", "grid", "steps", "level", "top",
                                           "top_evals"))
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def label(c: Mapping) -> str:
    where = f"level {c['level']}" if c["kind"] == "single" else \
        f"levels 1-{c['top']}, {c['top_evals']:g} top calls"
    return f"{c['solver']} {c['grid']} {c['steps']} steps, {where}"


def in_group(c: Mapping, kind: str, framing: str, num_levels: int) -> bool:
    if c["kind"] != kind:
        return False
    return framing == "all" or (c["top"] == num_levels) == (framing == "own")


# --- sets ----------------------------------------------------------------------------------------

def generate(ctx: common.Context, configs: Sequence[dict], which: str, num: int, s: Mapping
             ) -> None:
    """Solve the set ``which`` (``num`` batches) of each configuration that lacks it."""
    mesh = parallel.make_mesh()
    parallel.check_batch_size(s["batch_size"], mesh.size, "analysis.samplers.batch_size")
    ladder = ladders.on_mesh(ctx.ladder, mesh)
    folder = ctx.out / STAGE / "samples"
    folder.mkdir(parents=True, exist_ok=True)
    variances = cost_error.variances_for(ctx)
    todo = [c for c in configs if not (folder / f"{config_id(c)}.{which}.npz").exists()]

    def solve(c):  # configurations run concurrently, each one's batches in turn
        sets, evals = distributional.solve_sets(
            solve_fn(ctx, ladder, c, variances), int(ctx.config.sampling.seed), {which: num},
            s["batch_size"], ctx.ladder.image_shape, mesh, label(c), STREAM, workers=1)
        distributional.save_npz(folder / f"{config_id(c)}.{which}.npz", samples=sets[which],
                                evals=evals)

    bar = tqdm(total=len(todo), desc=f"samplers: {which} sets")
    for start in range(0, len(todo), CHUNK):
        if start:  # hundreds of configurations: free the last chunk's executables
            ladders.clear_compiled()
        for _ in parallel.map_concurrently(solve, todo[start:start + CHUNK], first_alone=False):
            bar.update()
    bar.close()


def solve_fn(ctx: common.Context, ladder: ladders.Ladder, c: Mapping, variances: dict):
    """``solve((x0, None, key))`` of configuration ``c`` as deployed."""
    ts = np.asarray(ctx.ladder.sde.time_grid(c["steps"], c["grid"]), np.float32)
    if c["kind"] == "single":
        return lambda inputs: ladders.em(ladder, c["level"], inputs[0], ts, inputs[2],
                                         solver=c["solver"])
    probs = cost_error.make_probs("variance", ctx.flops[:c["top"]], ts,
                                  cost_error.prefix_variances(variances, c["top"]), None,
                                  c["top_evals"])[1]
    sub = ladders.prefix(ladder, c["top"])
    return lambda inputs: ladders.mlem(sub, probs, inputs[0], ts, inputs[2],
                                       solver=c["solver"])


def load(ctx: common.Context, c: Mapping, which: str) -> tuple[np.ndarray, float]:
    """``(samples (R, B, …), FLOPs per sample)`` of a stored set; the FLOPs from the
    evaluations the solves made (realised, so Heun's two calls and every Bernoulli draw
    count)."""
    with np.load(ctx.out / STAGE / "samples" / f"{config_id(c)}.{which}.npz") as f:
        x, evals = f["samples"], f["evals"].mean(0)
    flops = ctx.flops[c["level"] - 1] * evals[0] if c["kind"] == "single" else \
        float(evals @ ctx.flops[:len(evals)])
    return x, float(flops)


# --- the analysis --------------------------------------------------------------------------------

def references(ctx: common.Context, feats: quality.Features, s: Mapping) -> dict:
    """``{name: (reference stats, its resample counts, targets, floor)}``."""
    path = ctx.out / distributional.STAGE / "samples" / "oracle.npz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: run python -m analysis.distributional on this "
                                f"results directory first (its oracle set is the reference)")
    with np.load(path) as f:
        oracle_x, floor_x = f["oracle"], f["floor"]
    n_o, b = oracle_x.shape[0], s["bootstrap"]
    oracle = set_stats(oracle_x, feats)
    floor_judge = Judge(oracle, counts_of(n_o, b, 12), counts_of(n_o, b, 11))
    floor = debiased(floor_judge.errors(set_stats(floor_x, feats)))
    data = {"fd": Stats(np.asarray(feats.data, np.float64)[:, None, :])}
    data_counts = counts_of(len(feats.data), b, 13)
    oracle_to_data = debiased(Judge(data, counts_of(n_o, b, 14), data_counts).errors(oracle))
    return {
        "oracle": (oracle, counts_of(n_o, b, 11), floor,
                   {r: {f"{q:g}x floor": q * float(floor[r][0]) for q in s["oracle_ratios"]}
                    for r in floor}),
        "data": (data, data_counts, oracle_to_data,
                 {"fd": {f"{q:g}x oracle": q * float(oracle_to_data["fd"][0])
                         for q in s["data_ratios"]}})}


def selection_errors(ctx: common.Context, configs: Sequence[dict], refs: Mapping,
                     feats: quality.Features) -> tuple[dict, dict]:
    """``({id: {reference: {ruler: error}}}, {id: FLOPs})`` on the selection sets."""
    judges = {name: Judge(ref, np.ones((1, 1)), ref_counts[:1])
              for name, (ref, ref_counts, _, _) in refs.items()}
    errors, flops = {}, {}
    for c in tqdm(configs, desc="samplers: selection errors"):
        x, flops[config_id(c)] = load(ctx, c, "selection")
        st, ones = set_stats(x, feats), np.ones((1, x.shape[0]))
        errors[config_id(c)] = {n: {r: float(v[0]) for r, v in j.errors(st, ones).items()}
                                for n, j in judges.items()}
    return errors, flops


def path(members: Sequence[dict], cost: Mapping[str, float], errors: Mapping, ref: str,
         ruler: str) -> list[dict]:
    """The lower envelope of ``members``' selection errors against ``cost``, cheapest first."""
    ok = [c for c in members if np.isfinite(cost.get(config_id(c), np.nan))]
    if not ok:
        return []
    env = speedup.Envelope.of([cost[config_id(c)] for c in ok],
                              [errors[config_id(c)][ref][ruler] for c in ok])
    return [ok[i] for i in env.index]


def paths(configs: Sequence[dict], cost: Mapping[str, float], errors: Mapping, refs: Mapping,
          num_levels: int) -> dict:
    """``{(framing, reference, ruler, kind): path}`` of every group."""
    out = {}
    for framing, (ref, (_, _, _, targets)), kind in itertools.product(
            FRAMINGS, refs.items(), KINDS):
        members = [c for c in configs if in_group(c, kind, framing, num_levels)]
        for ruler in targets:
            out[(framing, ref, ruler, kind)] = path(members, cost, errors, ref, ruler)
    return out


def analyse(ctx: common.Context, configs: Sequence[dict], s: Mapping, feats: quality.Features,
            refs: Mapping, sel_err: Mapping, flops: Mapping, seconds: Mapping) -> dict:
    """Every group's path in FLOPs and in seconds, and the comparison of single-level against
    multilevel at each reference's targets (see the module docstring)."""
    num_levels = ctx.ladder.num_levels
    chosen = {c_name: paths(configs, cost, sel_err, refs, num_levels)
              for c_name, cost in (("flops", flops), ("seconds", seconds))}
    evaluated = {config_id(c): c for by in chosen.values() for p in by.values() for c in p}
    method_counts = counts_of(s["realisations"], s["bootstrap"], 10)
    judges = {n: Judge(ref, method_counts, ref_counts)
              for n, (ref, ref_counts, _, _) in refs.items()}
    ev_err = {}
    for cid, c in tqdm(evaluated.items(), desc="samplers: evaluation errors"):
        st = set_stats(load(ctx, c, "evaluation")[0], feats)
        ev_err[cid] = {n: debiased(j.errors(st)) for n, j in judges.items()}
    costs = {"flops": flops, "seconds": seconds}
    comparisons = {}
    for framing, ref, ruler in dict.fromkeys(k[:3] for k in chosen["flops"]):
        targets = refs[ref][3][ruler]
        for c_name, by in chosen.items():
            p_single, p_multi = by[(framing, ref, ruler, "single")], \
                by[(framing, ref, ruler, "multilevel")]
            if not p_single or not p_multi:
                continue

            def along(p, c_name=c_name, ref=ref, ruler=ruler):
                err = np.stack([ev_err[config_id(c)][ref][ruler] for c in p], 1)
                return np.broadcast_to([costs[c_name][config_id(c)] for c in p], err.shape), err

            fit = speedup.reached_by_all(  # reached by both on the selection sets
                [([costs[c_name][config_id(c)] for c in p],
                  [sel_err[config_id(c)][ref][ruler] for c in p]) for p in (p_single, p_multi)],
                targets)
            comparisons.setdefault(framing, {}).setdefault(ref, {}).setdefault(ruler, {})[
                c_name] = {"paths": {"single": [_describe(c, ev_err, flops, seconds)
                                                for c in p_single],
                                     "multilevel": [_describe(c, ev_err, flops, seconds)
                                                    for c in p_multi]},
                           "reached_by": {name: {
                               kind: next((label(c) for c in p
                                           if ev_err[config_id(c)][ref][ruler][0] <= t), None)
                               for kind, p in (("single", p_single), ("multilevel", p_multi))}
                               for name, t in targets.items()},
                           **speedup.compare_paths(*along(p_single), *along(p_multi), targets,
                                                   s["realisations"], fit)}
    n_o = refs["oracle"][1].shape[1]
    return {"references": {n: {"floor": {r: speedup.estimate(v[0], v[1:], n_o)
                                          for r, v in floor.items()}, "targets": targets}
                           for n, (_, _, floor, targets) in refs.items()},
            "comparisons": comparisons,
            "selection": [{**c, "id": config_id(c), "flops": flops[config_id(c)],
                           "selection_error": sel_err[config_id(c)]} for c in configs]}


def _describe(c: Mapping, ev_err: Mapping, flops: Mapping, seconds: Mapping) -> dict:
    cid = config_id(c)
    return {"label": label(c), **{k: c[k] for k in ("kind", "solver", "grid", "steps", "level",
                                                   "top", "top_evals")},
            "flops": flops[cid], "seconds": seconds.get(cid, float("nan")),
            "error": {ref: {r: float(v[0]) for r, v in e.items()}
                      for ref, e in ev_err[cid].items()}}


def time_configurations(ctx: common.Context, configs: Sequence[dict]) -> dict[str, float]:
    """Seconds per call as deployed (``timings.json``, resumable), at the sweep's timing
    batch and repeats."""
    path_ = ctx.out / STAGE / "timings.json"
    timing = cost_error.timing_of(ctx.config)
    records = json.loads(path_.read_text()) if path_.exists() else {}
    if records.get("settings") != timing.settings():
        records = {"settings": timing.settings(), "seconds": {}}
    mesh = parallel.make_mesh()
    ladder = ladders.on_mesh(ctx.ladder, mesh)
    coupling = cost_error.Coupling(int(ctx.config.sampling.seed), None, timing.batch_size,
                                   ctx.ladder.image_shape, mesh)
    variances = cost_error.variances_for(ctx)
    todo = [c for c in configs if config_id(c) not in records["seconds"]]
    for i, c in enumerate(tqdm(todo, desc="samplers: timing as deployed")):
        if i and i % CHUNK == 0:
            ladders.clear_compiled()
        records["seconds"][config_id(c)] = float(cost_error.time_deployed(
            solve_fn(ctx, ladder, c, variances), coupling, timing)["seconds"])
        cost_error.write_json(path_, records)
    cost_error.write_json(path_, records)
    return {config_id(c): records["seconds"][config_id(c)] for c in configs}


def figure(result: Mapping, path: Any, ruler: str = "fd") -> None:
    """Per solver family, the selection envelopes of single-level and multilevel
    configurations (all framing) against each reference: FLOPs against the error, log–log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    refs = list(result["references"])
    fig, axes = plt.subplots(1, len(refs), figsize=(5.5 * len(refs), 4.2), squeeze=False)
    rows = result["selection"]
    for ax, ref in zip(axes[0], refs):
        for i, solver in enumerate(dict.fromkeys(r["solver"] for r in rows)):
            for kind, style in (("single", "-"), ("multilevel", "--")):
                pts = [r for r in rows if r["solver"] == solver and r["kind"] == kind]
                if not pts:
                    continue
                env = speedup.Envelope.of([r["flops"] for r in pts],
                                          [r["selection_error"][ref][ruler] for r in pts])
                ax.loglog(env.cost, env.error, style, marker="o", ms=3, color=f"C{i}",
                          label=f"{solver} ({kind})")
        for t in result["references"][ref]["targets"][ruler].values():
            ax.axhline(t, color="0.8", lw=0.8, zorder=0)
        ax.set(xlabel="FLOPs per sample", ylabel=f"{ruler.upper()} to {ref}",
               title=f"selection envelopes against the {ref} (exploratory)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def stage(ctx: common.Context) -> dict:
    """Select, evaluate, time, judge; write ``samplers.json`` and merge the summary (``{}``
    when ``config.analysis.samplers.enabled`` is off)."""
    s = settings(ctx.config)
    if not s["enabled"]:
        return {}
    feats = quality.required_features(ctx, "config.analysis.samplers")
    record = {k: v for k, v in s.items() if k != "enabled"}
    record.update(seed=int(ctx.config.sampling.seed), features=feats.record)
    distributional.keep_samples(ctx, record, STAGE, SAMPLE_KEYS)
    common.save_stage(ctx.out, STAGE, record, {"result": "samplers.json"})
    oracle_steps = distributional.settings(ctx.config)["oracle_steps"]
    if 4 * max(s["steps"]) > oracle_steps:
        raise ValueError(f"config.analysis.samplers.steps: the oracle's grid "
                         f"({oracle_steps} steps) must be at least 4x finer than every compared "
                         f"grid; drop steps above {oracle_steps // 4}")
    refs = references(ctx, feats, s)
    configs = configurations(s, ctx.ladder.num_levels)
    generate(ctx, configs, "selection", s["selection_realisations"], s)
    sel_err, flops = selection_errors(ctx, configs, refs, feats)
    on_paths = {config_id(c): c for p in paths(configs, flops, sel_err, refs,
                                               ctx.ladder.num_levels).values() for c in p}
    # evaluation sets first: at the timing batch size their compiled solves serve the timing
    generate(ctx, list(on_paths.values()), "evaluation", s["realisations"], s)
    seconds = time_configurations(ctx, list(on_paths.values()))
    result = common.jsonable(analyse(ctx, configs, s, feats, refs, sel_err, flops, seconds))
    (ctx.out / STAGE / "samplers.json").write_text(json.dumps(result, indent=1) + "\n")
    figure(result, ctx.out / STAGE / "samplers.png")
    return common.merge_summary(ctx.out, {"samplers": {
        "references": result["references"], "comparisons": result["comparisons"],
        "configurations": len(configs), "evaluated": len(on_paths)}})


def run(config: Any, workdir: Any, out: Any, recompute: bool = False) -> dict:
    """``python -m analysis.samplers``: :func:`stage` on a freshly prepared context."""
    return stage(common.prepare(config, workdir, out, recompute))


if __name__ == "__main__":
    from analysis import cli

    cli.stage_main(run)
