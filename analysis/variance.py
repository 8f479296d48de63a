"""Increment variances ``V_k(τ) = E‖fᵏ − fᵏ⁻¹‖²`` per time bin (docs/design.md §1, §3).

    python -m analysis.variance --config configs/mnist_sample.py --workdir runs/mnist \\
        --out results/mnist_cpu [--recompute]

The measurement is :mod:`mlem.variance` on the trained ladder: forward-process samples from
held-out images ``x₀`` (cycled if the split is smaller), ``config.analysis.variance_samples``
of them over ``config.analysis.num_time_bins`` equal bins of ``[0, 1 − t_min]``, seeded by
``config.sampling.seed``. The per-sample statistics ``‖fᵏ − fᵏ⁻¹‖²``, ``‖fᵏ‖²`` and
``‖fᵏ − fᴷ‖²`` are cached in ``DIR/forward/drift_stats.npz`` and shared with
:mod:`analysis.fit_gamma`. Writes ``DIR/variance/variances.json`` (read by
``python -m sample`` and :mod:`analysis.cost_error`) and ``variance.png``. When the bottom
level is the analytic Gaussian (``gaussian[_rank<r>]``), ``variances.json`` also holds
``without_gaussian``: the variances of the same ladder without it (its first network's
increment taken against ``f⁰ = 0``), so the two can be compared.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from analysis import common
from mlem import data, variance
from mlem.models import registry
from mlem.variance import binned_variances

STAGE = "variance"
FORWARD = "forward"


def drift_statistics(ctx: common.Context) -> dict[str, np.ndarray]:
    """Per-sample ``increment_sq``, ``error_sq`` and ``drift_sq`` ``(n, K)``, ``taus`` ``(n,)``,
    ``bin_edges`` (:func:`mlem.variance.drift_statistics` on held-out images).

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
    n, num_bins = settings["num_samples"], settings["num_time_bins"]
    if not 1 <= num_bins <= n:
        raise ValueError(f"config.analysis.num_time_bins, config.analysis.variance_samples: "
                         f"need at least one bin and one sample per bin, got {num_bins} bins "
                         f"and {n} samples")
    source = data.get_source(ctx.level_configs[0].data, "heldout")
    result = variance.drift_statistics(
        ctx.ladder, lambda idx: source[idx % len(source)], variance.bin_edges(sde.t_min, num_bins),
        n, seed=settings["seed"], batch_size=settings["batch_size"], progress=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **result)
    common.save_stage(ctx.out, FORWARD, settings, {"file": path.name, "num_samples": n})
    return result


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
