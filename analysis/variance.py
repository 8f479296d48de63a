"""Increment variances ``V_k(τ) = E‖fᵏ − fᵏ⁻¹‖²`` per time bin (docs/design.md §1, §3).

    python -m analysis.variance --config configs/mnist_sample.py --workdir runs/mnist \\
        --out results/mnist_cpu [--recompute]

Forward-process samples: held-out images ``x₀`` (cycled if the split is smaller), solver times
``τ`` stratified over ``config.analysis.num_time_bins`` equal bins of ``[0, 1 − t_min]``
(sample ``i`` lies in bin ``i mod bins``, uniform inside it), ``x_t = α x₀ + σ ε`` with
``t = 1 − τ`` and ``ε`` from ``fold_in(key(seed), i)``. Every level's reverse drift is
evaluated at ``(x_t, τ)``; per sample we keep ``‖fᵏ − fᵏ⁻¹‖²`` (``f⁰ = 0``), ``‖fᵏ‖²`` and
``‖fᵏ − fᴷ‖²`` (summed over pixels), cached in ``DIR/forward/drift_stats.npz`` and shared
with :mod:`analysis.fit_gamma`. Writes ``DIR/variance/variances.json`` (read by
``python -m sample`` and :mod:`analysis.cost_error`) and ``variance.png``. When the bottom
level is the analytic Gaussian (``gaussian[_rank<r>]``), ``variances.json`` also holds
``without_gaussian``: the variances of the same ladder without it (its first network's
increment taken against ``f⁰ = 0``), so the two can be compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from analysis import common
from mlem import data
from mlem import ladder as ladders
from mlem.models import registry

STAGE = "variance"
FORWARD = "forward"


def bin_edges(t_min: float, num_bins: int) -> np.ndarray:
    """``num_bins + 1`` equal-width edges of solver time ``[0, 1 − t_min]``."""
    if num_bins < 1:
        raise ValueError(f"config.analysis.num_time_bins: must be >= 1, got {num_bins}")
    return np.linspace(0.0, 1.0 - t_min, num_bins + 1)


def stratified_taus(edges: np.ndarray, num_samples: int, seed: int) -> np.ndarray:
    """``(n,)`` times: sample ``i`` uniform in bin ``i mod bins``."""
    num_bins = len(edges) - 1
    if num_samples < num_bins:
        raise ValueError(f"config.analysis.variance_samples: need at least one sample per time "
                         f"bin ({num_bins}), got {num_samples}")
    index = np.arange(num_samples) % num_bins
    u = np.random.default_rng(seed).uniform(size=num_samples)
    return edges[index] + u * (edges[index + 1] - edges[index])


def per_example_drifts(ladder: ladders.Ladder, params) -> list:
    """Drifts ``fᵏ(x, τ)`` that accept a per-example ``τ`` of shape ``(B, 1, 1, 1)``."""

    def eps(model, p):
        fn = ladders.eps_fn(model, p)
        return lambda x, t: fn(x, jnp.reshape(t, x.shape[:1]))

    return [ladder.sde.drift_from_eps(eps(m, p)) for m, p in zip(ladder.models, params)]


def _stats_fn(ladder: ladders.Ladder):
    @jax.jit
    def stats(params, x0, taus, noise):
        sde = ladder.sde
        x_t = sde.marginal(x0, sde.data_time(taus), noise)
        tau = taus.reshape(-1, *(1,) * (x0.ndim - 1))
        fs = [f(x_t, tau) for f in per_example_drifts(ladder, params)]
        sq = lambda d: jnp.sum(jnp.square(d), axis=tuple(range(1, d.ndim)))
        inc = [sq(f - g) for f, g in zip(fs, [jnp.zeros_like(x_t)] + fs[:-1])]
        err = [sq(f - fs[-1]) for f in fs]
        return jnp.stack(inc, 1), jnp.stack(err, 1), jnp.stack([sq(f) for f in fs], 1)

    return stats


def drift_statistics(ctx: common.Context) -> dict[str, np.ndarray]:
    """Per-sample ``increment_sq`` and ``error_sq`` ``(n, K)``, ``taus`` ``(n,)``, ``bin_edges``.

    Cached in ``DIR/forward/`` and reused while the settings and manifest are unchanged.
    """
    a, sde = ctx.config.analysis, ctx.ladder.sde
    settings = {"num_samples": int(a.variance_samples), "num_time_bins": int(a.num_time_bins),
                "seed": int(ctx.config.sampling.seed), "batch_size": int(a.batch_size),
                "columns": ["increment_sq", "error_sq", "drift_sq"]}
    path = ctx.out / FORWARD / "drift_stats.npz"
    if common.load_stage(ctx.out, FORWARD, settings, ctx.recompute) is not None and path.exists():
        with np.load(path) as f:
            return dict(f)
    edges = bin_edges(sde.t_min, settings["num_time_bins"])
    n, batch = settings["num_samples"], settings["batch_size"]
    taus = stratified_taus(edges, n, settings["seed"])
    source = data.get_source(ctx.level_configs[0].data, "heldout")
    key = jax.random.key(settings["seed"])
    noise_fn = jax.jit(jax.vmap(
        lambda i: jax.random.normal(jax.random.fold_in(key, i), ctx.ladder.image_shape)))
    stats_fn, inc, err, drift = _stats_fn(ctx.ladder), [], [], []
    for start in tqdm(range(0, n, batch), desc="forward drifts", unit="batch"):
        idx = np.arange(start, min(start + batch, n))
        x0 = jnp.asarray(source[idx % len(source)])
        i, e, d = stats_fn(ctx.ladder.params, x0, jnp.asarray(taus[idx], jnp.float32),
                           noise_fn(jnp.asarray(idx)))
        inc.append(np.asarray(i, np.float64))
        err.append(np.asarray(e, np.float64))
        drift.append(np.asarray(d, np.float64))
    result = {"taus": taus, "bin_edges": edges, "increment_sq": np.concatenate(inc),
              "error_sq": np.concatenate(err), "drift_sq": np.concatenate(drift)}
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **result)
    common.save_stage(ctx.out, FORWARD, settings, {"file": path.name, "num_samples": n})
    return result


def binned_variances(taus: np.ndarray, increment_sq: np.ndarray, edges: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin mean ``(bins, K)`` of ``increment_sq`` and its standard error over samples."""
    index = np.clip(np.searchsorted(edges, taus, side="right") - 1, 0, len(edges) - 2)
    means, errors = [], []
    for b in range(len(edges) - 1):
        values = increment_sq[index == b]
        means.append(values.mean(0))
        errors.append(values.std(0, ddof=1) / np.sqrt(len(values)) if len(values) > 1
                      else np.full(values.shape[1], np.nan))
    return np.array(means), np.array(errors)


def write_variances(ctx: common.Context) -> dict:
    """Measure ``V_k(τ)``; write ``DIR/variance/variances.json`` and its plot; return the record."""
    stats = drift_statistics(ctx)
    means, errors = binned_variances(stats["taus"], stats["increment_sq"], stats["bin_edges"])
    record = {"levels": list(ctx.config.levels), "level_flops": ctx.flops.tolist(),
              "bin_edges": stats["bin_edges"].tolist(), "variances": means.tolist(),
              "num_samples": int(len(stats["taus"]))}
    if registry.gaussian_rank(ctx.level_configs[0].model.level) is not None:
        without = np.concatenate([stats["drift_sq"][:, 1:2], stats["increment_sq"][:, 2:]], 1)
        record["without_gaussian"] = {
            "levels": record["levels"][1:],
            "variances": binned_variances(stats["taus"], without, stats["bin_edges"])[0].tolist()}
    (ctx.out / STAGE).mkdir(parents=True, exist_ok=True)
    (ctx.out / STAGE / "variances.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(record, errors, ctx.out / STAGE / "variance.png")
    return record


def run(config: Any, workdir: str | Path, out: str | Path, recompute: bool = False) -> dict:
    """``python -m analysis.variance``: :func:`stage` on a freshly prepared context."""
    return stage(common.prepare(config, workdir, out, recompute))


def stage(ctx: common.Context) -> dict:
    """Write ``variances.json`` and its plot; merge the summary and return it."""
    record = write_variances(ctx)
    summary = {"level_flops": ctx.flops,
               "variance_time_averaged": np.mean(record["variances"], axis=0),
               "variance_file": str(ctx.out / STAGE / "variances.json")}
    if "without_gaussian" in record:
        summary["variance_time_averaged_without_gaussian"] = np.mean(
            record["without_gaussian"]["variances"], axis=0)
    return common.merge_summary(ctx.out, summary)


def plot(record: dict, errors: np.ndarray | None, path: Path) -> None:
    """``V_k(τ)`` per level against solver time (log scale), with standard errors."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(record["bin_edges"])
    centres, v = 0.5 * (edges[1:] + edges[:-1]), np.asarray(record["variances"])
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for k in range(v.shape[1]):
        err = None if errors is None else errors[:, k]
        ax.errorbar(centres, v[:, k], yerr=err, marker="o", ms=3, capsize=2,
                    label=f"$V_{k + 1}$ ({record['levels'][k]})")
    ax.set(yscale="log", xlabel="solver time τ", ylabel=r"$E\|f^k - f^{k-1}\|^2$",
           title=f"increment variances ({record['num_samples']} samples)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    from analysis import cli

    cli.stage_main(run)
