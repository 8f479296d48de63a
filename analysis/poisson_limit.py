"""The Poisson limit of ML-EM on the synthetic testbed: at fixed rates the corrections cost
the same whatever the step count, while the error settles.

    python -m analysis.poisson_limit --out results/poisson_limit [--gamma 3] [--seeds 16]

Ladder: :func:`mlem.testbed.dyadic_hierarchy` (``K`` levels, ``V_k ∝ 4^{-k}``, declared
cost ``c_k = 2^{γk}``). Rates: the variance-optimal shape ``λ_k ∝ sqrt(V_k / C_k)`` (``V_k``
measured, ``C_k`` the increment costs), scaled so that the top level has ``top_rate`` events
per solve. For each step count ``N`` and seed (its own ``X_0``, Brownian path and events;
the path is drawn on the reference grid and summed onto coarser ones), the solve of
:func:`mlem.sampling.poisson_multilevel_euler_maruyama` is compared with EM at the top level
on ``ref_steps`` steps (the reference; ML-EM is unbiased for that level). Reported per ``N``:
the RMSE (mean over seeds, with its standard error over seeds), the evaluations of levels
``2…K`` and their declared cost, and EM at the top level on the same grid for comparison.
Writes ``summary.json`` and ``poisson_limit.png``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from mlem import brownian, cli, sampling, schedules, testbed


@dataclasses.dataclass(frozen=True)
class PoissonConfig:
    """What :func:`run` measures."""

    gamma: float = 3.0
    num_levels: int = 4  # rates λ ≈ (·, 64, 11, 2): every level's events are resolved by N ≈ 1024
    dim: int = 4
    top_rate: float = 2.0  # expected events of the top level per solve
    steps: tuple[int, ...] = (16, 64, 256, 1024, 4096)
    ref_steps: int = 16384
    seeds: int = 16
    batch_size: int = 64
    seed: int = 0

    def __post_init__(self):
        if self.ref_steps < 4 * max(self.steps) or any(self.ref_steps % n for n in self.steps):
            raise ValueError(f"ref_steps={self.ref_steps}: must be a multiple of every step "
                             f"count and at least 4x the largest ({max(self.steps)})")
        if self.seeds < 2 or self.top_rate <= 0:
            raise ValueError("seeds must be >= 2 and top_rate positive")


def rates_for(hierarchy: testbed.Hierarchy, top_rate: float, seed: int) -> np.ndarray:
    """``(K,)`` rates ``λ_k ∝ sqrt(V_k / C_k)`` with ``λ_K = top_rate`` (``λ_1`` unused: 1)."""
    probe = hierarchy.sample_x0(jax.random.key(seed + 1), 4096)
    shape = np.sqrt(testbed.level_variances(hierarchy, probe)
                    / schedules.increment_costs(hierarchy.costs))
    rates = top_rate * shape / shape[-1]
    rates[0] = 1.0
    return rates


def run(cfg: PoissonConfig, out: str | Path) -> dict:
    """Measure every step count on every seed; write ``summary.json`` and the figure."""
    start = time.perf_counter()
    h = testbed.dyadic_hierarchy(cfg.gamma, cfg.num_levels, cfg.dim, seed=cfg.seed)
    rates = rates_for(h, cfg.top_rate, cfg.seed)
    ref_ts = jnp.linspace(0.0, 1.0, cfg.ref_steps + 1)
    rmse, em_rmse = np.zeros((2, len(cfg.steps), cfg.seeds))
    counts = np.zeros((len(cfg.steps), cfg.seeds, cfg.num_levels))
    for s in range(cfg.seeds):
        key = jax.random.fold_in(jax.random.key(cfg.seed), s)
        x0 = h.sample_x0(jax.random.fold_in(key, 0), cfg.batch_size)
        path = brownian.BatchPath(jax.random.fold_in(key, 1), ref_ts)
        ref, _ = sampling.euler_maruyama(h.drifts[-1], h.diffusion, x0, ref_ts, None, path=path)
        for i, n in enumerate(cfg.steps):
            ts = brownian.coarse_grid(ref_ts, n)
            x, stats = sampling.poisson_multilevel_euler_maruyama(
                h.drifts, rates, h.diffusion, x0, ts, jax.random.fold_in(key, 2), path=path)
            em, _ = sampling.euler_maruyama(h.drifts[-1], h.diffusion, x0, ts, None, path=path)
            rmse[i, s] = float(jnp.sqrt(jnp.mean((x - ref) ** 2)))
            em_rmse[i, s] = float(jnp.sqrt(jnp.mean((em - ref) ** 2)))
            counts[i, s] = np.asarray(stats["evals"])
    evals = counts[:, :, 1:].sum(2)
    correction_cost = counts[:, :, 1:] @ h.costs[1:]
    limit = float(sum(rates[k] + (rates[k + 1] if k + 1 < len(rates) else 0.0)
                      for k in range(1, len(rates))))
    summary = {
        "config": dataclasses.asdict(cfg), "rates": rates.tolist(),
        "level_costs": h.costs.tolist(), "steps": list(cfg.steps),
        "rmse": rmse.mean(1).tolist(),
        "rmse_se": (rmse.std(1, ddof=1) / np.sqrt(cfg.seeds)).tolist(),
        "em_top_rmse": em_rmse.mean(1).tolist(),
        "em_top_cost": [n * float(h.costs[-1]) for n in cfg.steps],
        "correction_evals": evals.mean(1).tolist(),
        "correction_evals_limit": limit,
        "correction_cost": correction_cost.mean(1).tolist(),
        "base_cost": [n * float(h.costs[0]) for n in cfg.steps],
        "wall_time_s": time.perf_counter() - start}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    plot(summary, out / "poisson_limit.png")
    return summary


def plot(summary: dict, path: Path) -> None:
    """RMSE against the step count (Poisson ML-EM and EM at the top level), and the
    evaluations of the corrections with their limit ``Σ_k ∫(λ_k + λ_{k+1}) dτ``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.asarray(summary["steps"])
    fig, (ax_e, ax_c) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_e.errorbar(n, summary["rmse"], yerr=summary["rmse_se"], marker="o", capsize=2,
                  label="Poisson ML-EM (±1 SE over seeds)")
    ax_e.plot(n, summary["em_top_rmse"], marker="s", label="EM, top level")
    ax_e.set(xscale="log", yscale="log", xlabel="steps N", ylabel="RMSE vs top-level reference",
             title="error")
    ax_e.legend(fontsize=8)
    ax_c.plot(n, summary["correction_evals"], marker="o", label="evaluations of levels 2…K")
    ax_c.axhline(summary["correction_evals_limit"], ls=":", c="gray",
                 label="limit Σ ∫(λ_k + λ_{k+1}) dτ")
    ax_c.plot(n, n, ls="--", c="k", alpha=0.4, label="one per step (EM)")
    ax_c.set(xscale="log", yscale="log", xlabel="steps N", ylabel="evaluations per solve",
             title="cost of the corrections")
    ax_c.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str]) -> None:
    """``python -m analysis.poisson_limit``: run and print the measured numbers."""
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    try:
        summary = run(PoissonConfig(gamma=f.gamma, seeds=f.seeds), f.out)
    except ValueError as err:
        cli.fail(err)
    keys = ("steps", "rmse", "rmse_se", "em_top_rmse", "correction_evals",
            "correction_evals_limit", "wall_time_s")
    print(json.dumps({k: summary[k] for k in keys}, indent=1))


if __name__ == "__main__":  # flags defined here only: importing this module defines none
    flags.DEFINE_string("out", None, "output directory, e.g. results/poisson_limit")
    flags.DEFINE_float("gamma", 3.0, "exponent γ of the dyadic ladder")
    flags.DEFINE_integer("seeds", 16, "seeds (each its own X_0, path and events)", lower_bound=2)
    flags.mark_flag_as_required("out")
    app.run(main, flags_parser=cli.parse_flags)
