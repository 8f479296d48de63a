"""Cost–error sweeps of EM and ML-EM on the synthetic HTMC testbed (DESIGN.md §1, §3).

    python -m analysis.synthetic --gamma 3 --out results/synthetic_gamma3 [--quick] [--seeds S]

Ladder: :func:`mlem.synthetic.dyadic_hierarchy` (``δ_k ∝ 2^{-k}`` and ``V_k ∝ 4^{-k}``
exactly, declared cost ``c_k = 2^{γk}``, 13 levels). Every run of a seed starts from the same
``X_0`` and sees the same Brownian path (fine increments from one key, summed onto coarser
grids); the reference is EM with the exact drift on ``ref_steps`` steps. EM sweeps (level,
steps); ML-EM sweeps (top level, steps ``N = 2^{top + offset}``, knob ``C``) with the
variance-optimal schedule
``p_k = min(1, C sqrt(V_k / C_k))``, ``C`` set so the top level runs ``m = N p_top`` times per
solve on average (``m`` from 1/2 to 64, so ``1/p_top`` reaches ``~10^4``). Levels below the
highest saturated one (``p = 1``) get weight ``1 − 1 = 0``, and the sampler does not evaluate
them (exactly as for any user of :mod:`mlem.sampling`).

Error = RMSE over samples and dimensions; cost = declared level cost × the expected number of
evaluations under the schedule (EM: exact; the realised cost is recorded beside it). A seed is
one realisation (its own ``X_0``, Brownian path and Bernoulli draws). Each method's lower
envelope of seed-averaged points (:mod:`analysis.speedup`) is fitted as ``cost ∝ error^{-s}``
by least squares in log–log on a common RMSE range from ``floor_factor`` × the larger envelope
floor, spanning ``fit_decades``; resampling seeds and rerunning averages, envelopes and fits
gives 95% intervals for the exponents and for the speedups. Theory (γ > 2):
``s = γ + 1`` for EM and ``s = γ`` for ML-EM, approached from above by ML-EM as the error
shrinks (on a finite ladder fewer levels are randomised at larger errors).

The fit stays ``floor_factor = 8 = 2^3`` above the floor, i.e. three levels up (``δ_k`` halves
per level). Near the floor a *finite* ladder bends ML-EM's envelope upwards: with no level
``K + 1`` to move to, the only way to lower the error is to run the top level more often,
which costs far more than the theorem's unbounded ladder would. ``summary.json`` lists the
exponents for floor factors 2 to 16 (``exponents_by_floor_factor``), and ``--levels`` deepens
the ladder so that a fixed error range moves away from the floor.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize
from tqdm import tqdm

from analysis import speedup
from mlem import brownian, cost, sampling, schedules, synthetic


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What :func:`run` sweeps. Step counts must be powers of two dividing ``ref_steps``."""

    gamma: float = 3.0
    num_levels: int = 13
    dim: int = 4
    perturbation_rms: float = 8.0  # RMS of e_k per dimension: level bias vs discretisation error
    perturbation_freq: float = 0.5  # frequency of the random-feature fields in e_k
    level_correlation: float = 1.0  # e_k = ρ u_0 + sqrt(1 − ρ²) u_k; 1: exact V_k ∝ 4^-k
    batch_size: int = 32
    seeds: int = 32
    ref_steps: int = 2**15
    em_steps: tuple[int, ...] = tuple(2**j for j in range(1, 13))
    mlem_min_top: int = 2
    mlem_step_offsets: tuple[int, ...] = (-2, -1, 0)  # N = 2^(top + offset), in [2, max_steps]
    mlem_top_evals: tuple[float, ...] = tuple(2.0**j for j in range(-1, 7))  # m = N · p_top
    max_steps: int = 2**13
    schedule: str = "variance"  # "variance" (measured V_k) or "dyadic" (p_k ∝ 2^{-(1+γ/2)k})
    floor_factor: float = 8.0  # fit range starts at floor_factor × the larger envelope floor
    fit_decades: float = 1.25  # … and spans this many decades of RMSE
    min_fit_decades: float = 1.0  # fail if the common range is narrower than this
    seed: int = 0

    def __post_init__(self):
        if self.schedule not in ("variance", "dyadic"):
            raise ValueError(f"schedule: 'variance' or 'dyadic', got {self.schedule!r}")
        if self.seeds < 1 or self.batch_size < 1:
            raise ValueError(f"seeds, batch_size: need >= 1, got {self.seeds}, {self.batch_size}")
        for n in (*self.em_steps, self.max_steps):
            if n < 1 or self.ref_steps % n or n & (n - 1):
                raise ValueError(f"em_steps/max_steps: {n} must be a power of two dividing "
                                 f"ref_steps={self.ref_steps}")

    @classmethod
    def with_levels(cls, num_levels: int, gamma: float = 3.0, **overrides) -> SweepConfig:
        """The default sweep scaled to ``num_levels``: EM up to ``2^{K-1}`` steps, ML-EM up to
        ``2^K``, reference on ``2^{K+2}`` (``K = 13`` is the default config)."""
        k = num_levels
        fields = dict(gamma=gamma, num_levels=k, em_steps=tuple(2**j for j in range(1, k)),
                      max_steps=2**k, ref_steps=2 ** (k + 2))
        return cls(**{**fields, **overrides})

    @classmethod
    def quick(cls, gamma: float = 3.0, num_levels: int = 13, **overrides) -> SweepConfig:
        """A sweep for ``make demo-synthetic``: a thinner ML-EM grid (under 2 minutes here)."""
        fields = dict(seeds=32, mlem_min_top=6, mlem_step_offsets=(-2, -1),
                      mlem_top_evals=tuple(2.0**j for j in range(0, 6)))
        return cls.with_levels(num_levels, gamma, **{**fields, **overrides})

    @classmethod
    def ci(cls, gamma: float = 3.0, **overrides) -> SweepConfig:
        """The reduced check in ``make test`` (~40 s here): 10 levels, 16 seeds, the quick ML-EM
        grid, fitted from 4× the floor over one decade. Enough to separate the exponents (EM
        ≈ 3.8, ML-EM ≈ 2.9 at γ = 3), not to pin them."""
        fields = dict(seeds=16, floor_factor=4.0, fit_decades=1.0, min_fit_decades=0.75)
        return cls.quick(gamma, num_levels=10, **{**fields, **overrides})

    def mlem_grid(self) -> list[tuple[int, int, float]]:
        """``(top, N, m)`` triples of the ML-EM sweep (``m < N``)."""
        grid = []
        for top in range(self.mlem_min_top, self.num_levels + 1):
            steps = sorted({min(max(2 ** (top + o), 2), self.max_steps)
                            for o in self.mlem_step_offsets})
            grid += [(top, n, m) for n in steps for m in sorted(self.mlem_top_evals) if m < n]
        return grid


# --- Solves ----------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnames=("hierarchy",))
def _em_solve(hierarchy, level, x0, ts, increments):
    """EM at a traced ``level`` index: one compilation per step count."""
    drift = lambda x, t: jax.lax.switch(level, hierarchy.drifts, x, t)
    return sampling.euler_maruyama(drift, hierarchy.diffusion, x0, ts, None,
                                   increments=increments)[0]


def _coarsen(fine: jax.Array, num_steps: int) -> jax.Array:
    """Sum consecutive fine increments ``(N_ref, B, d)`` onto ``num_steps`` steps."""
    return fine.reshape(num_steps, -1, *fine.shape[1:]).sum(1)


def _mse(x: jax.Array, ref: jax.Array) -> float:
    return float(jnp.mean((x - ref) ** 2))


def _mlem_probs(cfg: SweepConfig, hierarchy, variances, top: int, steps: int, m: float):
    """Schedule for levels ``1..top`` with the top level expected ``m`` times per solve."""
    p_top = m / steps
    if cfg.schedule == "dyadic":
        c = p_top * 2.0 ** ((1 + cfg.gamma / 2) * (top - 1))
        return c, schedules.dyadic(top, cfg.gamma, c)
    inc_costs = schedules.increment_costs(hierarchy.costs[:top])
    c = p_top / np.sqrt(variances[top - 1] / inc_costs[-1])
    return c, schedules.variance_optimal(variances[:top], inc_costs, c)


def mlem_plan(cfg: SweepConfig, hierarchy, variances) -> list[dict]:
    """The ML-EM runs: ``top``, ``steps``, ``m`` (expected top-level evaluations), knob ``c``
    and ``probs`` over levels ``1..top``."""
    plan = []
    for top, n, m in cfg.mlem_grid():
        c, probs = _mlem_probs(cfg, hierarchy, variances, top, n, m)
        plan.append(dict(top=top, steps=n, top_evals=m, c=c, probs=probs))
    return plan


def run_sweep(cfg: SweepConfig, hierarchy: synthetic.Hierarchy, *, progress: bool = True
              ) -> tuple[list[dict], dict]:
    """Every (configuration, seed) solve; returns per-seed rows and the ladder's statistics.

    Seed ``s`` fixes ``X_0``, the Brownian path and the Bernoulli key shared by all of its
    ML-EM runs (common random numbers across configurations; independent across seeds).
    ``V_k`` for the variance-optimal schedule comes from seed 0's initial and final states.
    """
    ts_ref = jnp.linspace(0.0, 1.0, cfg.ref_steps + 1)
    first = _seed_paths(cfg, hierarchy, ts_ref, 0)
    variances = synthetic.level_variances(hierarchy, jnp.concatenate([first[0], first[2]]))
    plan = mlem_plan(cfg, hierarchy, variances)
    bar = tqdm(total=cfg.seeds * (cfg.num_levels * len(cfg.em_steps) + len(plan)),
               desc=f"synthetic γ={cfg.gamma:g}", disable=not progress)
    rows, probe = [], []
    for s in range(cfg.seeds):
        x0, fine, ref, k_bern = first if s == 0 else _seed_paths(cfg, hierarchy, ts_ref, s)
        probe += [x0, ref]
        paths = {n: (ts_ref[:: cfg.ref_steps // n], _coarsen(fine, n))
                 for n in {*cfg.em_steps, *(run["steps"] for run in plan)}}
        for n in cfg.em_steps:
            for level in range(cfg.num_levels):
                x = _em_solve(hierarchy, level, x0, *paths[n])
                rows.append(dict(method="em", level=level + 1, steps=n, top_evals=None, c=None,
                                 seed=s, cost=n * hierarchy.costs[level],
                                 realised_cost=n * hierarchy.costs[level], mse=_mse(x, ref)))
                bar.update()
        for run in plan:
            top, steps = run["top"], run["steps"]
            ts, inc = paths[steps]
            x, stats = sampling.multilevel_euler_maruyama(
                hierarchy.drifts[:top], run["probs"], hierarchy.diffusion, x0, ts, k_bern,
                increments=inc)
            costs = hierarchy.costs[:top]
            rows.append(dict(method="mlem", level=top, steps=steps, top_evals=run["top_evals"],
                             c=run["c"], seed=s,
                             cost=cost.expected_cost(run["probs"], costs, steps),
                             realised_cost=cost.realised_cost(stats, costs), mse=_mse(x, ref)))
            bar.update()
    bar.close()
    errors = synthetic.level_errors(hierarchy, jnp.concatenate(probe))
    return rows, {"level_errors": errors, "level_variances": variances,
                  "level_costs": hierarchy.costs}


def _seed_paths(cfg: SweepConfig, hierarchy, ts_ref, seed: int):
    """``X_0``, fine Brownian increments, exact-drift reference and Bernoulli key of a seed."""
    k_x0, k_path, k_bern = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), seed), 3)
    x0 = hierarchy.sample_x0(k_x0, cfg.batch_size)
    fine = brownian.increments(k_path, ts_ref, x0.shape)
    ref, _ = sampling.euler_maruyama(hierarchy.exact_drift, hierarchy.diffusion, x0, ts_ref,
                                     None, increments=fine)
    return x0, fine, ref, k_bern


# --- Envelopes and fits ----------------------------------------------------------------------


def _config_key(row: dict) -> tuple:
    return (row["method"], row["level"], row["steps"], row["top_evals"] or 0.0)


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """Average cost and MSE over seeds for each configuration; RMSE = sqrt(mean MSE);
    ``mse_se`` is the standard error over seeds (realisations)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_config_key(r), []).append(r)
    points = []
    for group in groups.values():
        mse = np.array([r["mse"] for r in group])
        se = mse.std(ddof=1) / np.sqrt(len(mse)) if len(mse) > 1 else np.nan
        keys = ("method", "level", "steps", "top_evals", "c")
        points.append({**{k: group[0][k] for k in keys}, "seeds": len(group),
                       "cost": float(np.mean([r["cost"] for r in group])),
                       "realised_cost": float(np.mean([r["realised_cost"] for r in group])),
                       "mse": float(mse.mean()), "mse_se": float(se),
                       "rmse": float(np.sqrt(mse.mean()))})
    return points


def fit_exponent(env: speedup.Envelope, lo: float, hi: float, num: int = 25) -> float:
    """``s`` in ``cost ∝ error^{-s}``: least squares on the envelope sampled log-uniformly
    over ``[lo, hi]``; NaN if the envelope does not span that range."""
    errors = np.geomspace(lo, hi, num)
    costs = env.cost_at(errors)
    if not np.all(np.isfinite(costs)):
        return float("nan")
    return float(-np.polyfit(np.log(errors), np.log(costs), 1)[0])


def front_points(points: Sequence[dict], method: str) -> list[dict]:
    """The points on ``method``'s lower envelope, ordered by increasing cost."""
    pts = [p for p in points if p["method"] == method]
    env = speedup.Envelope.of([p["cost"] for p in pts], [p["rmse"] for p in pts])
    return [pts[i] for i in env.index]


def envelopes(points: Sequence[dict]) -> dict[str, speedup.Envelope]:
    """Each method's lower envelope in (cost, RMSE), ordered by increasing cost."""
    return {m: speedup.Envelope.of([p["cost"] for p in points if p["method"] == m],
                                   [p["rmse"] for p in points if p["method"] == m])
            for m in ("em", "mlem")}


def ideal_mlem_exponent(gamma: float, top: int) -> float:
    """ML-EM's local cost exponent on the idealised dyadic ladder, from top level K to K + 1.

    Ladder ``V_k = 4^{-k}``, ``c_k = 2^{γk}``; error ``ε = 2^{-K}`` on ``N = 2^K`` steps; the
    variance-optimal ``p_k = min(1, λ sqrt(V_k / c_k))``, ``p_1 = 1``, with ``λ`` such that the
    randomisation variance ``Σ_k V_k (1/p_k − 1) / N`` is ``ε²``. Returns
    ``log2(cost_{K+1} / cost_K)``. For ``γ > 2`` it tends to ``γ`` as ``K → ∞``, slowly near 2:
    the levels below about ``2K / (2 + γ)`` saturate (``p = 1``) and ``Σ_k 2^{k(γ/2 − 1)}`` over
    the others grows slowly. This is the exponent a finite sweep should be compared with.
    """
    if top < 2:
        raise ValueError(f"top: need K >= 2 (one level is plain EM), got {top}")

    def cost(k_top: int) -> float:
        k = np.arange(1, k_top + 1)
        v, c = 4.0**-k, 2.0 ** (gamma * k)

        def probs(log_lam):
            p = np.minimum(1.0, np.exp(log_lam) * np.sqrt(v / c))
            return np.concatenate([[1.0], p[1:]])

        budget = 2.0**k_top * 4.0**-k_top  # N ε²
        log_lam = optimize.brentq(lambda u: np.sum(v * (1 / probs(u) - 1)) - budget, -300, 300)
        return 2.0**k_top * float(np.sum(probs(log_lam) * c))

    return float(np.log2(cost(top + 1) / cost(top)))


def comparisons(fronts: dict[str, speedup.Envelope], num: int = 20) -> dict:
    """Speedup (cost ratio) at equal RMSE and MSE ratio at equal cost, over the common ranges;
    the maximum speedup is exact (at an envelope vertex)."""
    em, ml = fronts["em"], fronts["mlem"]
    errors, curve = speedup.speedup_curve(em, ml, num)
    costs, rmse_ratio = speedup.error_ratio_curve(em, ml, num)
    best, best_at = speedup.max_speedup(em, ml)
    return {
        "smallest_common_error": float(errors[0]),
        "speedup_at_smallest_common_error": float(curve[0]),
        "speedup_max": best, "speedup_max_at_rmse": best_at,
        "speedup_curve": np.column_stack([errors, curve]).tolist(),
        "mse_ratio_at_largest_common_cost": float(rmse_ratio[-1] ** 2),
        "mse_ratio_max": float(np.nanmax(rmse_ratio) ** 2),
        "mse_ratio_curve": np.column_stack([costs, rmse_ratio**2]).tolist(),
    }


def sweep_table(rows: Sequence[dict]) -> speedup.Sweep:
    """The per-seed rows as a :class:`analysis.speedup.Sweep`: MSE ``(P, seeds)``, cost ``(P,)``."""
    configs = sorted({_config_key(r) for r in rows}, key=str)
    seeds = sorted({r["seed"] for r in rows})
    index, column = {c: i for i, c in enumerate(configs)}, {s: j for j, s in enumerate(seeds)}
    mse = np.full((len(configs), len(seeds)), np.nan)
    cost_of = np.zeros(len(configs))
    for r in rows:
        i = index[_config_key(r)]
        mse[i, column[r["seed"]]], cost_of[i] = r["mse"], r["cost"]
    return speedup.Sweep(np.array([c[0] for c in configs]), mse, {"cost": cost_of})


def bootstrap_statistics(rows: Sequence[dict], fit_range: Sequence[float], num: int = 200,
                         seed: int = 0) -> dict[str, list[float]]:
    """95% intervals of both exponents and of the speedups at the ends of the fit range and at
    its maximum, resampling seeds (paths and Bernoulli draws) with replacement and rerunning
    seed averages, envelopes, fits and interpolation on each resample."""
    lo, hi = fit_range
    table = sweep_table(rows)

    def statistic(idx: np.ndarray) -> dict[str, float]:
        mse, costs = table.means(idx)
        em, ml = (table.envelope(m, np.sqrt(mse), costs["cost"]) for m in ("em", "mlem"))
        return {"exponent_em": fit_exponent(em, lo, hi), "exponent_mlem": fit_exponent(ml, lo, hi),
                "speedup_at_fit_range_low": float(speedup.speedup_at(em, ml, lo)[0]),
                "speedup_at_fit_range_high": float(speedup.speedup_at(em, ml, hi)[0]),
                "speedup_max": speedup.max_speedup(em, ml)[0]}

    boot = speedup.bootstrap(statistic, table.num_realisations, num, seed)
    return {f"{name}_ci95": list(speedup.percentile_interval(values))
            for name, values in boot.items()}


def summarize(points: Sequence[dict], cfg: SweepConfig, ladder: dict) -> dict:
    """Envelopes, fit range, exponents and speedups of the sweep (see module docstring)."""
    fronts = envelopes(points)
    lo = cfg.floor_factor * max(fronts[m].error.min() for m in fronts)
    hi = min(min(fronts[m].error.max() for m in fronts), lo * 10**cfg.fit_decades)
    if not np.log10(hi / lo) >= cfg.min_fit_decades - 1e-9:
        raise RuntimeError(f"common error range [{lo:.3g}, {hi:.3g}] spans under "
                           f"{cfg.min_fit_decades:g} decade(s); sweep more levels or steps")
    s_em, s_ml = (fit_exponent(fronts[m], lo, hi) for m in ("em", "mlem"))
    tops = sorted({p["level"] for p in front_points(points, "mlem") if lo <= p["rmse"] <= hi})
    ideal = (float(np.mean([ideal_mlem_exponent(cfg.gamma, k)
                            for k in range(tops[0], max(tops[-1], tops[0] + 1))]))
             if tops and tops[0] >= 2 else None)
    by_factor = {}
    for factor in (2, 4, 8, 16):  # how the exponents depend on the distance from the floor
        f_lo = factor * lo / cfg.floor_factor
        f_hi = min(min(fronts[m].error.max() for m in fronts), f_lo * 10**cfg.fit_decades)
        if f_hi > f_lo:
            by_factor[str(factor)] = {"fit_range": [f_lo, f_hi], **{
                f"exponent_{m}": fit_exponent(fronts[m], f_lo, f_hi) for m in fronts}}
    at_lo, at_hi = (float(speedup.speedup_at(fronts["em"], fronts["mlem"], e)[0])
                    for e in (lo, hi))
    return {
        "gamma_target": cfg.gamma,
        "gamma_fitted": synthetic.fit_gamma(ladder["level_costs"], ladder["level_errors"]),
        "exponent_em": s_em, "exponent_mlem": s_ml,
        "exponent_em_target": cfg.gamma + 1, "exponent_mlem_target": cfg.gamma,
        "within_0.3": bool(abs(s_em - cfg.gamma - 1) <= 0.3 and abs(s_ml - cfg.gamma) <= 0.3),
        "fit_range": [lo, hi], "fit_range_decades": float(np.log10(hi / lo)),
        "fit_range_rule": f"RMSE from {cfg.floor_factor:g}x the larger envelope floor, "
                          f"spanning up to {cfg.fit_decades:g} decades",
        "speedup_at_fit_range_low": float(at_lo), "speedup_at_fit_range_high": float(at_hi),
        "exponents_by_floor_factor": by_factor,
        "mlem_tops_in_fit_range": tops,
        "exponent_mlem_ideal_ladder": ideal,
        **comparisons(fronts),
        "envelopes": {m: np.column_stack([fronts[m].cost, fronts[m].error]).tolist()
                      for m in fronts},
        "level_errors": ladder["level_errors"].tolist(),
        "level_variances": ladder["level_variances"].tolist(),
        "level_costs": np.asarray(ladder["level_costs"]).tolist(),
        "config": dataclasses.asdict(cfg),
        "error": "RMSE over samples and dimensions vs EM with the exact drift on ref_steps steps",
        "cost": "expected evaluations under the schedule x declared per-level cost 2^(gamma k) "
                "(EM: exact); realised_cost in points.csv",
    }


# --- Outputs ---------------------------------------------------------------------------------


def plot(points: Sequence[dict], summary: dict, path: Path) -> None:
    """Log–log cost vs RMSE: all points, both envelopes, fitted slopes; speedup beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_speed) = plt.subplots(1, 2, figsize=(12, 5), width_ratios=(3, 2))
    lo, hi = summary["fit_range"]
    styles = {"em": ("tab:blue", "EM", "exponent_em"),
              "mlem": ("tab:red", "ML-EM", "exponent_mlem")}
    for method, (colour, label, key) in styles.items():
        pts = [p for p in points if p["method"] == method]
        ax.scatter([p["rmse"] for p in pts], [p["cost"] for p in pts], s=6, alpha=0.25,
                   color=colour)
        env = np.array(summary["envelopes"][method])
        ax.plot(env[:, 1], env[:, 0], "-o", ms=3, color=colour,
                label=f"{label} envelope: cost ∝ error^-{summary[key]:.2f} "
                      f"(theory {summary[key + '_target']:g})")
        errs = np.geomspace(lo, hi, 10)
        anchor = speedup.loglog_interp(lo, env[:, 1], env[:, 0])[0]
        ax.plot(errs, anchor * (errs / lo) ** -summary[key], "--", color=colour, lw=1.5)
    ax.axvspan(lo, hi, color="0.9", zorder=0, label="fit range")
    ax.set(xscale="log", yscale="log", xlabel="RMSE vs exact-drift reference",
           ylabel="cost per sample (declared FLOPs)",
           title=f"Synthetic ladder: γ = {summary['gamma_target']:g} "
                 f"(fitted {summary['gamma_fitted']:.2f})")
    ax.legend(fontsize=8)
    curve = np.array(summary["speedup_curve"])
    ax_speed.plot(curve[:, 0], curve[:, 1], "-o", ms=3, color="k")
    ax_speed.axvspan(lo, hi, color="0.9", zorder=0)
    ax_speed.set(xscale="log", yscale="log", xlabel="RMSE", ylabel="EM cost / ML-EM cost",
                 title="speedup at equal error")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_points(points: Sequence[dict], path: Path) -> None:
    fields = list(points[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(points)


def run(cfg: SweepConfig, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Sweep, summarise, and write ``summary.json``, ``points.csv`` and ``cost_vs_error.png``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    hierarchy = synthetic.dyadic_hierarchy(
        cfg.gamma, cfg.num_levels, cfg.dim, perturbation_rms=cfg.perturbation_rms,
        perturbation_freq=cfg.perturbation_freq, level_correlation=cfg.level_correlation,
        seed=cfg.seed)
    rows, ladder = run_sweep(cfg, hierarchy, progress=progress)
    points = aggregate(rows)
    summary = summarize(points, cfg, ladder)
    summary.update(bootstrap_statistics(rows, summary["fit_range"]))
    summary["wall_time_s"] = time.perf_counter() - start
    summary["seeds"] = cfg.seeds
    summary["devices"] = [str(d) for d in jax.devices()]
    write_points(points, out / "points.csv")
    write_points(rows, out / "runs.csv")
    plot(points, summary, out / "cost_vs_error.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gamma", type=float, default=3.0)
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quick", action="store_true", help="the fast sweep behind make demo")
    parser.add_argument("--seeds", type=int, default=None, help="number of seeds (paths)")
    parser.add_argument("--levels", type=int, default=None,
                        help="ladder depth K (default 13); step counts scale with it")
    parser.add_argument("--schedule", choices=("variance", "dyadic"), default="variance")
    args = parser.parse_args(argv)
    overrides = {"schedule": args.schedule}
    if args.seeds is not None:
        overrides["seeds"] = args.seeds
    if args.levels is not None and args.levels < 2:
        parser.error(f"--levels: need K >= 2, got {args.levels}")
    make = SweepConfig.quick if args.quick else SweepConfig.with_levels
    cfg = make(num_levels=args.levels or 13, gamma=args.gamma, **overrides)
    summary = run(cfg, args.out)
    keys = ("gamma_target", "gamma_fitted", "exponent_em", "exponent_em_ci95", "exponent_mlem",
            "exponent_mlem_ci95", "fit_range",
            "speedup_at_fit_range_low", "speedup_at_fit_range_low_ci95",
            "speedup_at_fit_range_high", "speedup_at_fit_range_high_ci95",
            "speedup_max", "speedup_max_ci95", "speedup_max_at_rmse",
            "speedup_at_smallest_common_error", "exponent_mlem_ideal_ladder",
            "mlem_tops_in_fit_range", "exponents_by_floor_factor", "wall_time_s")
    print(json.dumps({k: summary[k] for k in keys}, indent=1))
    return summary


if __name__ == "__main__":
    main()
