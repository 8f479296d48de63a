"""Learn time-dependent ML-EM probabilities and compare them with the best constant and
variance-optimal schedules at equal MSE (docs/learning.md).

    python -m analysis.learn_probs --synthetic --gamma 3 --out DIR
    python -m analysis.learn_probs --config configs/mnist_sample.py --workdir W --out DIR

**Training** (:mod:`mlem.learn`): logits on ``bins`` equal time bins, initialised at the
variance-optimal schedule with ``init_top_evals`` expected top-level evaluations (levels that
it saturates in every bin stay fixed at 1); Adam on ``E[MSE]/mse_scale + λ E[cost]/cost_scale``
(scales: the initial schedule's MSE on training realisations and its expected cost), one run
per λ. Training realisations never meet the evaluation ones: synthetic seeds
``train_seed_offset + i`` (evaluation: ``i``); MNIST seed ``sampling.seed + train_seed_offset``
(evaluation: ``sampling.seed``, the realisations of ``analysis.cost_error``).
**Evaluation** on the evaluation realisations: the ``constant`` and ``variance`` schedules
(:func:`analysis.cost_error.make_probs`) and each learned shape rescaled,
``min(1, c·p_learned)``, each with its knob ``c`` set for every ``top_evals`` target, plus
each learned schedule as trained. MSE per realisation, cost = expected cost of the schedule.
**Statistics** (:mod:`mlem.eval.speedup`): one learned run, chosen on the selection
realisations, against ``constant`` ∪ ``variance`` (the better of them at every MSE), at the
operating MSE and predeclared multiples of it (:data:`TARGET_RATIOS`), each method's
configurations chosen on the selection realisations, costs and 95% intervals from the
evaluation ones, failures counted; the same against each baseline alone and per λ at the
operating point. Nothing is chosen on the evaluation realisations.

Writes ``DIR/schedules/learned_t<anchor>_lam<λ>.json`` (:func:`mlem.schedules.save`, usable by
``python -m sample --config.sampling.schedule=file`` and by ``analysis.cost_error``'s
``learned`` schedule), ``DIR/learn/points.csv``, ``DIR/learn/traces.json``,
``DIR/learn/learn_probs.png`` and merges the numbers into ``DIR/summary.json``.
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from analysis import common, learn_problems
from analysis.cost_error import make_probs
from analysis.learn_problems import LearnConfig, Problem
from mlem import cost, learn, schedules
from mlem.eval import speedup

BASELINES = ("constant", "variance")


# --- training ---------------------------------------------------------------------------------

def learn_edges(ts: np.ndarray, bins: int) -> np.ndarray:
    """``bins + 1`` equal-width edges over the solver times ``ts``."""
    return np.linspace(float(ts[0]), float(ts[-1]), bins + 1)


def initial_schedule(problem: Problem, cfg: LearnConfig, edges: np.ndarray, anchor: float
                     ) -> tuple[np.ndarray, int]:
    """``(bin probabilities (bins, K), number of learned levels)``: the variance-optimal
    schedule with ``anchor`` expected top-level evaluations, averaged over the steps of each
    learning bin; the bottom levels it saturates everywhere stay fixed at 1."""
    _, probs = make_probs("variance", problem.costs, problem.ts, problem.variances, None,
                          anchor)
    index = learn.step_bins(edges, problem.ts)
    binned = np.stack([probs[index == b].mean(0) for b in range(cfg.bins)])
    saturated = np.all(binned >= 1.0, axis=0)
    num_fixed = max(1, int(np.argmin(saturated)) if not saturated.all() else len(saturated) - 1)
    return binned, problem.num_levels - num_fixed


def train(problem: Problem, cfg: LearnConfig, lam: float, edges: np.ndarray,
          init: np.ndarray, num_learned: int, scales: tuple[float, float], seed: int = 0
          ) -> tuple[np.ndarray, list[dict]]:
    """Learn at ``lam``; returns the ``(bins, K)`` probabilities and the training trace."""
    mse_scale, cost_scale = scales
    bins = learn.step_bins(edges, problem.ts)

    def scaled_loss(probs, realisation, key, context=None):
        loss, draws = problem.solve_loss(probs, realisation, key, context)
        return loss / mse_scale, draws

    schedule = optax.exponential_decay(cfg.learning_rate, cfg.sgd_steps, 0.1)
    logits, trace = learn.learn(
        scaled_loss, learn.logits_from_probs(init, num_learned, cfg.p_min), bins,
        problem.costs, lam, cost_scale, lambda i: problem.train_batch(i, cfg.train_realisations),
        steps=cfg.sgd_steps, key=jax.random.key(seed), p_min=cfg.p_min,
        num_levels=problem.num_levels, num_tangents=cfg.num_tangents,
        optimizer=optax.adam(schedule), context=problem.context)
    return np.asarray(learn.probs_from_logits(logits, cfg.p_min, problem.num_levels)), trace


def training_scales(problem: Problem, cfg: LearnConfig, init: np.ndarray, edges: np.ndarray
                    ) -> tuple[float, float]:
    """``(mse_scale, cost_scale)``: the initial schedule's mean MSE over a training batch (a
    batch no SGD step uses) and its expected cost."""
    probs = init[learn.step_bins(edges, problem.ts)]
    realisations, keys = problem.train_batch(-1, cfg.train_realisations)
    fn = jax.jit(lambda p, r, k, c: problem.solve_loss(p, r, k, c)[0])
    pick = lambda i: jax.tree_util.tree_map(lambda a: a[i], realisations)
    losses = [float(fn(jnp.asarray(probs, jnp.float32), pick(i), keys[i, 0], problem.context))
              for i in range(keys.shape[0])]
    return float(np.mean(losses)), cost.expected_cost(probs, problem.costs)


# --- evaluation -------------------------------------------------------------------------------

def evaluation_points(problem: Problem, cfg: LearnConfig, learned: dict[float, np.ndarray],
                      edges: np.ndarray) -> list[dict]:
    """Every evaluated schedule: ``curve``, ``run``, ``top_evals``, ``c``, ``probs (N, K)``."""
    points, n = [], len(problem.ts) - 1
    targets = [t for t in cfg.top_evals if 0 < t < n]
    for name in BASELINES:
        for t in targets:
            c, probs = make_probs(name, problem.costs, problem.ts, problem.variances, None, t)
            points.append(dict(curve=name, run="", top_evals=t, c=c, probs=probs))
    for run, bin_probs in learned.items():
        shape = schedules.on_grid(bin_probs, edges, problem.ts)
        points.append(dict(curve="learned", run=run, top_evals=schedules.top_evals(shape),
                           c=1.0, probs=shape))
        for t in targets:
            c = schedules.knob_for_top_evals(functools.partial(schedules.scaled, shape), t)
            points.append(dict(curve="learned", run=run, top_evals=t, c=c,
                               probs=schedules.scaled(shape, c)))
    return points


def measure(problem: Problem, points: list[dict]) -> None:
    """Add ``mse`` (per evaluation realisation) and ``cost`` (expected) to every point."""
    for p in tqdm(points, desc="evaluation", leave=False):
        p["mse"] = np.asarray(problem.evaluate(p["probs"]), np.float64)
        p["cost"] = cost.expected_cost(p["probs"], problem.costs)


def sweep_of(points: Sequence[dict]) -> speedup.Sweep:
    """The :class:`~mlem.eval.speedup.Sweep` of ``points`` (all realisations), with every
    baseline point repeated under the curve ``baseline`` (the constant and variance-optimal
    schedules together: at every MSE the better of them, chosen on the selection
    realisations) and every learned point under ``learned_<run>`` (one curve per run)."""
    rows = list(points)
    rows += [dict(p, curve="baseline") for p in points if p["curve"] in BASELINES]
    rows += [dict(p, curve=f"learned_{p['run']}") for p in points if p["curve"] == "learned"]
    return speedup.Sweep(np.array([r["curve"] for r in rows]),
                         np.stack([r["mse"] for r in rows]),
                         {"cost": np.array([r["cost"] for r in rows])})


TARGET_RATIOS = (2.0, 1.0, 0.5)  # predeclared targets: multiples of the operating MSE


def statistics(points: list[dict], cfg: LearnConfig, runs: dict[str, dict],
               num_selection: int) -> dict:
    """Speedups at predeclared target MSEs by the rules of :mod:`mlem.eval.speedup`: the
    operating MSE, each method's configurations and the one learned run reported are chosen
    on the ``num_selection`` selection realisations (the last columns of every point's MSE);
    costs and 95% intervals come from the evaluation realisations."""
    if num_selection < 1:
        raise ValueError("learn_probs: the problem has no selection realisations to choose on")
    sw = sweep_of(points)
    total = sw.num_realisations
    evaluation = sw.columns(range(total - num_selection))
    selection = sw.columns(range(total - num_selection, total))
    # the operating point: the baseline point nearest the geometric mean of the anchors
    base = np.flatnonzero(sw.curve == "baseline")
    middle = float(np.exp(np.mean(np.log(cfg.anchors))))
    tops = np.array([[p for p in points if p["curve"] in BASELINES][i - base[0]]["top_evals"]
                     for i in base])
    op = base[int(np.argmin(np.abs(np.log(tops / middle))))]
    op_mse = float(selection.error[op].mean())
    targets = {("operating point" if r == 1.0 else f"{r:g}x operating MSE"): r * op_mse
               for r in TARGET_RATIOS}
    scores = {run: speedup.score_at_target(selection, "baseline", f"learned_{run}", "cost",
                                           op_mse) for run in runs}
    chosen = max(scores, key=lambda r: scores[r] if np.isfinite(scores[r]) else -1.0)
    compare = lambda b, o: speedup.compare_at_targets(evaluation, selection, b, o, "cost",
                                                      targets, num_resamples=cfg.resamples)
    learned = f"learned_{chosen}"
    fields = lambda c: {name: {"target_mse": t["target_error"], **t["speedup"],
                               "not_reached": t["not_reached"]}
                        for name, t in c["targets"].items()}
    out = {"chosen_run": chosen, "chosen_on": f"{num_selection} selection realisations "
                                               f"(largest speedup over the best constant "
                                               f"schedule at the operating MSE)",
           "selection_scores": scores, "operating_point_mse": op_mse,
           "num_evaluation_realisations": evaluation.num_realisations,
           "num_selection_realisations": num_selection,
           "interval": speedup.INTERVAL,
           "speedup_learned_over_best_constant": fields(compare("baseline", learned))}
    for name in BASELINES:
        out[f"speedup_learned_over_{name}"] = fields(compare(name, learned))
    out["speedup_variance_over_constant"] = fields(compare("constant", "variance"))
    out["per_lambda"] = []
    for run, info in runs.items():
        vs = compare("baseline", f"learned_{run}")["targets"]["operating point"]
        own = next(p for p in points if p["curve"] == "learned" and p["run"] == run
                   and p["c"] == 1.0)
        mse = own["mse"][:evaluation.num_realisations]
        out["per_lambda"].append({
            "run": run, **info, "speedup_over_best_constant_at_operating_point":
                {**vs["speedup"], "not_reached": vs["not_reached"]},
            "as_trained_expected_cost": own["cost"], "as_trained_top_evals": own["top_evals"],
            "as_trained_mse": float(mse.mean()),
            "as_trained_mse_se": float(mse.std(ddof=1) / np.sqrt(mse.size))})
    return out


# --- the whole run ----------------------------------------------------------------------------

EVALUATION_ONLY = ("anchors", "lams", "top_evals", "resamples")  # fields no run depends on


def run_key(problem: Problem, cfg: LearnConfig, anchor: float, lam: float, index: int) -> dict:
    """Everything one training run depends on (the ladder itself: the results directory's
    manifest)."""
    training = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in EVALUATION_ONLY}
    return common.jsonable({"problem": problem.name, "meta": problem.meta,
                            "steps": len(problem.ts) - 1, "training": training,
                            "anchor": anchor, "lam": lam, "index": index})


def stored_run(path: Path, key: dict) -> dict | None:
    """The run stored at ``path`` if it was trained with ``key``, else ``None``."""
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record.get("key") == key else None


def run(problem: Problem, cfg: LearnConfig, out: str | Path, recompute: bool = False) -> dict:
    """Train one schedule per λ, evaluate everything, write the outputs; return the summary.

    Resumable: each finished training run is kept in ``learn/run_<run>.json`` with what it
    depends on (:func:`run_key`) and reused, with a message, while that is unchanged (unless
    ``recompute``); the evaluation then runs on every schedule.
    """
    start = time.perf_counter()
    out = Path(out)
    (out / "schedules").mkdir(parents=True, exist_ok=True)
    (out / "learn").mkdir(parents=True, exist_ok=True)
    edges = learn_edges(problem.ts, cfg.bins)
    learned, traces, runs = {}, {}, {}
    for i, (anchor, lam) in enumerate(tqdm([(a, lam) for a in cfg.anchors for lam in cfg.lams],
                                           desc="learning")):
        t0, run = time.perf_counter(), f"t{anchor:g}_lam{lam:g}"
        key, record_path = run_key(problem, cfg, anchor, lam, i), out / "learn" / f"run_{run}.json"
        stored = None if recompute else stored_run(record_path, key)
        if stored is not None:
            tqdm.write(f"learn_probs: reusing run {run} from {record_path} (trained in "
                       f"{stored['info']['train_seconds']:.0f} s with the same settings)")
            learned[run] = np.asarray(stored["probs"], np.float32)
            runs[run], traces[run] = stored["info"], stored["traces"]
            continue
        init, num_learned = initial_schedule(problem, cfg, edges, anchor)
        scales = training_scales(problem, cfg, init, edges)
        learned[run], trace = train(problem, cfg, lam, edges, init, num_learned, scales, i)
        path = out / "schedules" / f"learned_{run}.json"
        runs[run] = {"anchor_top_evals": anchor, "lam": lam,
                     "lam_raw": lam * scales[0] / scales[1], "mse_scale": scales[0],
                     "cost_scale": scales[1], "learned_levels": num_learned,
                     "schedule_file": str(path), "train_seconds": time.perf_counter() - t0,
                     "final_objective": float(np.mean([t["objective"] for t in trace[-20:]]))}
        traces[run] = {"initial": init, "trace": trace}
        schedules.save(path, learned[run], edges, problem=problem.name,
                       steps=len(problem.ts) - 1, sgd_steps=cfg.sgd_steps,
                       **{k: v for k, v in runs[run].items() if k != "schedule_file"})
        record_path.write_text(json.dumps(common.jsonable(
            {"key": key, "info": runs[run], "traces": traces[run],
             "probs": learned[run]})) + "\n")
    eval_start = time.perf_counter()
    points = evaluation_points(problem, cfg, learned, edges)
    measure(problem, points)
    stats = statistics(points, cfg, runs, problem.num_selection)
    write_points(out / "learn" / "points.csv", points)
    (out / "learn" / "traces.json").write_text(json.dumps(common.jsonable(traces)) + "\n")
    plot(points, learned, edges, problem, out / "learn" / "learn_probs.png")
    summary = {**stats, "problem": problem.name, **problem.meta,
               "config": dataclasses.asdict(cfg), "training_seconds": eval_start - start,
               "evaluation_seconds": time.perf_counter() - eval_start,
               "wall_time_s": time.perf_counter() - start, "command": " ".join(sys.argv),
               "devices": [str(d) for d in jax.devices()]}
    return common.merge_summary(out, {"learn_probs": summary, "speedup_learned_over_best_constant":
                                      stats["speedup_learned_over_best_constant"]})


def write_points(path: Path, points: Sequence[dict]) -> None:
    """One row per (point, evaluation realisation)."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["curve", "run", "top_evals", "c", "expected_cost", "realisation", "mse"])
        for p in points:
            for r, m in enumerate(p["mse"]):
                writer.writerow([p["curve"], p["run"],
                                 f"{p['top_evals']:.6g}", f"{p['c']:.6g}", f"{p['cost']:.6g}", r,
                                 f"{m:.6g}"])


def plot(points: Sequence[dict], learned: dict, edges: np.ndarray, problem: Problem,
         path: Path) -> None:
    """Left: realisation-mean MSE against expected cost per curve; right: learned ``p_k(τ)``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_p) = plt.subplots(1, 2, figsize=(10, 3.8))
    for curve, marker in (("constant", "s"), ("variance", "^"), ("learned", "o")):
        pts = sorted((p for p in points if p["curve"] == curve), key=lambda p: p["cost"])
        ax.plot([p["cost"] for p in pts], [p["mse"].mean() for p in pts], marker, label=curve,
                alpha=0.7)
    ax.set(xscale="log", yscale="log", xlabel="expected cost per sample", ylabel="MSE",
           title=problem.name)
    ax.legend(fontsize=8)
    mid = 0.5 * (edges[1:] + edges[:-1])
    for run, probs in learned.items():
        for k in range(1, probs.shape[1]):
            if np.any(probs[:, k] < 1):
                ax_p.plot(mid, probs[:, k], marker=".", label=f"{run}, level {k + 1}")
    ax_p.set(yscale="log", xlabel="solver time τ", ylabel="learned p_k(τ)")
    ax_p.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- the command line -------------------------------------------------------------------------

def _define(argv: list[str]) -> None:
    from absl import flags
    from ml_collections import config_flags

    config_flags.DEFINE_config_file("config", None, "sample/analysis config of a trained "
                                    "ladder, e.g. configs/mnist_sample.py", sys_argv=list(argv))
    flags.DEFINE_string("workdir", None, "root of the ladder's level workdirs")
    flags.DEFINE_string("out", None, "results directory (summary.json, schedules/, learn/)")
    flags.DEFINE_bool("recompute", False, "take over a results dir made by another ladder")
    flags.DEFINE_bool("synthetic", False, "learn on the synthetic testbed instead of a ladder")
    flags.DEFINE_float("gamma", 3.0, "synthetic: γ of the dyadic ladder")
    flags.DEFINE_integer("levels", 6, "synthetic: number of levels K")
    flags.DEFINE_integer("steps", 64, "synthetic: steps N (reference: 4N)")
    flags.DEFINE_integer("eval_realisations", 128, "synthetic: evaluation realisations")
    flags.DEFINE_integer("selection_realisations", 32, "synthetic: selection realisations (the "
                         "targets, configurations and reported run are chosen on them)")
    flags.DEFINE_list("lams", None, "λ values (default: LearnConfig.lams)")
    flags.DEFINE_integer("sgd_steps", None, "SGD steps per λ")
    flags.DEFINE_integer("bins", None, "time bins of the learned logits")
    flags.DEFINE_integer("num_tangents", None, "random tangents per draw (0: every direction)")
    flags.DEFINE_integer("train_realisations", None, "training realisations per SGD step")
    flags.DEFINE_float("learning_rate", None, "Adam learning rate (decays 10x over training)")
    flags.DEFINE_list("anchors", None, "top-level evaluations of the initial schedules, one "
                      "run per anchor and λ (default: LearnConfig.anchors)")
    flags.DEFINE_integer("train_seed_offset", 1000, "training seeds: evaluation seed + this")
    flags.DEFINE_integer("train_pool", 16, "ladder: training realisations in the pool")
    flags.DEFINE_integer("train_batch_size", 4, "ladder: samples per training realisation")
    flags.mark_flag_as_required("out")


def learn_config(flag_values: Any, **defaults) -> LearnConfig:
    """:class:`LearnConfig` from ``defaults`` overridden by the flags that were given."""
    fields = dict(defaults)
    for name in ("sgd_steps", "bins", "num_tangents", "train_realisations", "learning_rate"):
        if getattr(flag_values, name) is not None:
            fields[name] = getattr(flag_values, name)
    for name in ("lams", "anchors"):
        if getattr(flag_values, name):
            fields[name] = tuple(float(v) for v in getattr(flag_values, name))
    fields["train_seed_offset"] = flag_values.train_seed_offset
    return LearnConfig(**fields)


# Sized for the 2-core CPU: the synthetic run takes minutes, the MNIST one about ten.
SYNTHETIC = dict(sgd_steps=300, num_tangents=0, bins=8, train_realisations=8)
LADDER = dict(sgd_steps=100, num_tangents=2, bins=4, train_realisations=2, learning_rate=0.1,
              anchors=(2.0, 8.0), top_evals=(1.0, 2.0, 4.0, 8.0, 16.0))


def main(argv: Sequence[str]) -> None:
    from absl import flags

    from analysis import cli
    from mlem import cli as mlem_cli

    cli.start(argv)
    f = flags.FLAGS
    try:
        if f.synthetic:
            cfg = learn_config(f, **SYNTHETIC)
            problem = learn_problems.synthetic_problem(
                cfg, f.gamma, num_levels=f.levels, steps=f.steps, ref_steps=4 * f.steps,
                eval_realisations=f.eval_realisations,
                selection_realisations=f.selection_realisations)
        else:
            if f.config is None or f.workdir is None:
                mlem_cli.fail("--config and --workdir are required without --synthetic")
            cfg = learn_config(f, **LADDER)
            problem = learn_problems.ladder_problem(
                f.config, f.workdir, f.out, f.recompute, cfg, train_pool=f.train_pool,
                train_batch_size=f.train_batch_size)
        summary = run(problem, cfg, f.out, recompute=f.recompute)
    except (ValueError, FileNotFoundError) as err:
        mlem_cli.fail(f"{type(err).__name__}: {err}")
    keys = [k for k in summary["learn_probs"] if k.startswith("speedup") or k in (
        "per_lambda", "wall_time_s", "training_seconds", "evaluation_seconds")]
    print(json.dumps(common.jsonable({k: summary["learn_probs"][k] for k in keys}), indent=1))


if __name__ == "__main__":
    from absl import app

    from analysis import cli as _cli

    app.run(main, flags_parser=lambda argv: _cli.parse(argv, _define))
