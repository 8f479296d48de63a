"""The ladder's exponent γ (accuracy ``δ`` costs ``c ∝ δ^{-γ}``), two ways (docs/design.md §3).

    python -m analysis.fit_gamma --config configs/mnist_sample.py --workdir runs/mnist \\
        --out results/mnist_cpu [--recompute]

(a) **Held-out loss.** The last ``heldout_loss`` of each level's ``metrics.jsonl`` is fitted
    as ``L_k = L_∞ + A·c_k^{−2/γ}`` (``scipy.optimize.curve_fit``, ``0 ≤ L_∞ < min L_k``,
    ``A > 0``, ``2/γ ∈ [0.02, 10]``, started from the best point of a profile over ``2/γ``).
    Three parameters from K levels: with ``K = 3`` the curve passes through every point and
    with ``K = 4`` one degree of freedom is left, so read the interval, not the point.
    Interval: the per-example held-out losses are recomputed (same data, noise and times as
    :func:`mlem.train.objective.make_heldout_loss`); examples are resampled jointly across levels
    and each level's loss is shifted by its resampled mean minus its full mean.
(b) **Drift error.** ``δ_k = sqrt(E‖fᵏ − fᴷ‖²)`` over forward-process samples and times
    (:func:`analysis.variance.drift_statistics`), ``log δ_k = const − (1/γ) log c_k`` fitted on
    ``k < K``. Interval: samples resampled jointly across levels.

``gamma`` in the summary is (b) whenever it exists (K ≥ 3): it measures the drift accuracy
that the theory's ``δ_k`` is, without a floor to fit; (a) is the fallback.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import optimize
from tqdm import tqdm

from analysis import common, variance
from mlem import data
from mlem.eval import fits, speedup
from mlem.models import registry
from mlem.train import objective

STAGE = "fit_gamma"
EXPONENT_BOUNDS = (0.02, 10.0)  # bounds on b = 2/γ, i.e. γ ∈ [0.2, 100]


def _power_law(x, loss_inf, amplitude, b):
    return loss_inf + amplitude * x ** (-b)


def _profile_start(x: np.ndarray, losses: np.ndarray) -> tuple[float, float, float]:
    """Best ``(L_∞, A, b)`` over a grid of ``b``, with ``L_∞, A`` by least squares for each
    ``b`` (``L_∞`` clipped to ``[0, min L]``, ``A`` refitted after clipping)."""
    b = np.geomspace(*EXPONENT_BOUNDS, 200)[:, None]
    z = x[None, :] ** (-b)  # (grid, K)
    zc, lc = z - z.mean(1, keepdims=True), losses - losses.mean()
    amplitude = (zc @ lc) / np.maximum(np.sum(zc**2, 1), 1e-300)
    loss_inf = np.clip(losses.mean() - amplitude * z.mean(1), 0.0, losses.min())
    amplitude = np.maximum(np.sum(z * (losses - loss_inf[:, None]), 1) / np.sum(z**2, 1), 1e-12)
    sse = np.sum((loss_inf[:, None] + amplitude[:, None] * z - losses) ** 2, 1)
    i = int(np.argmin(sse))
    return float(loss_inf[i]), float(amplitude[i]), float(b[i, 0])


def fit_loss_power_law(costs: Sequence[float], losses: Sequence[float]) -> dict[str, float]:
    """Fit ``L_k = L_∞ + A·(c_k/c_1)^{−2/γ}``; returns ``gamma``, ``loss_inf``, ``amplitude``.

    ``at_bound`` says whether ``2/γ`` ended on a bound (then γ is not determined by the data).
    """
    costs, losses = np.asarray(costs, np.float64), np.asarray(losses, np.float64)
    if costs.shape != losses.shape or costs.size < 3:
        raise ValueError(f"costs, losses: the loss-floor fit has 3 parameters and needs >= 3 "
                         f"levels, got {costs.size}")
    if np.any(costs <= 0) or np.any(losses <= 0):
        raise ValueError("costs, losses: must be positive")
    x = costs / costs[0]
    start = _profile_start(x, losses)
    lower, upper = [0.0, 0.0, EXPONENT_BOUNDS[0]], [losses.min(), np.inf, EXPONENT_BOUNDS[1]]
    p0 = np.clip(start, lower, np.minimum(upper, np.finfo(float).max))
    params, _ = optimize.curve_fit(_power_law, x, losses, p0=p0, bounds=(lower, upper),
                                   x_scale=[losses.mean(), losses.mean(), 1.0], maxfev=20000)
    loss_inf, amplitude, b = (float(v) for v in params)
    at_bound = bool(np.isclose(b, EXPONENT_BOUNDS, rtol=1e-3).any())
    return {"gamma": 2.0 / b, "loss_inf": loss_inf, "amplitude": amplitude,
            "cost_scale": float(costs[0]), "at_bound": at_bound}


def bootstrap_loss_gamma(costs: Sequence[float], losses: Sequence[float],
                         per_example: np.ndarray, num_resamples: int, seed: int = 0
                         ) -> np.ndarray:
    """γ of :func:`fit_loss_power_law` on ``losses + (resampled mean − mean)`` of ``per_example``.

    ``per_example``: ``(n, K)`` per-example losses of the same examples at every level.
    """
    losses = np.asarray(losses, np.float64)
    centred = per_example - per_example.mean(0)
    return speedup.bootstrap(
        lambda idx: {"gamma": fit_loss_power_law(costs, losses + centred[idx].mean(0))["gamma"]},
        per_example.shape[0], num_resamples, seed).get("gamma", np.full(num_resamples, np.nan))


def fit_drift_gamma(costs: Sequence[float], error_sq: np.ndarray) -> tuple[float, np.ndarray]:
    """γ from ``δ_k = sqrt(mean_i error_sq[i, k])`` vs ``c_k`` on ``k < K``; returns (γ, δ)."""
    errors = np.sqrt(np.asarray(error_sq, np.float64).mean(0))
    if errors.size < 3:
        raise ValueError(f"the drift-error fit uses levels k < K and needs K >= 3, got "
                         f"{errors.size}")
    return fits.fit_gamma(np.asarray(costs)[:-1], errors[:-1]), errors


def bootstrap_drift_gamma(costs: Sequence[float], error_sq: np.ndarray, num_resamples: int,
                          seed: int = 0) -> np.ndarray:
    """γ of :func:`fit_drift_gamma` over samples resampled jointly across levels."""
    error_sq = np.asarray(error_sq, np.float64)
    return speedup.bootstrap(lambda idx: {"gamma": fit_drift_gamma(costs, error_sq[idx])[0]},
                             error_sq.shape[0], num_resamples, seed
                             ).get("gamma", np.full(num_resamples, np.nan))


def last_heldout_loss(workdir: Path) -> tuple[int, float]:
    """``(step, heldout_loss)`` of the last held-out line of ``workdir/metrics.jsonl``."""
    path = Path(workdir) / "metrics.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    records = [r for r in map(json.loads, filter(None, lines)) if "heldout_loss" in r]
    if not records:
        raise FileNotFoundError(f"{path}: no heldout_loss line; finish training that level "
                                f"(python -m train --workdir {workdir} evaluates at the end)")
    return int(records[-1]["step"]), float(records[-1]["heldout_loss"])


def per_example_heldout_losses(ctx: common.Context) -> np.ndarray:
    """``(n, K)`` held-out losses per example and level (the draws of the training eval)."""
    cfg = ctx.level_configs[0]
    batches = data.heldout_batches(data.get_source(cfg.data, "heldout"),
                                   cfg.eval.batch_size, cfg.eval.num_batches)
    sde, key = ctx.ladder.sde, jax.random.key(objective.HELDOUT_SEED)

    def draws(index: int, shape):
        t_key, noise_key = jax.random.split(jax.random.fold_in(key, index))
        u = jax.random.uniform(t_key, (shape[0],))
        t = sde.t_min + (1.0 - sde.t_min) * (jnp.arange(shape[0]) + u) / shape[0]
        return t, jax.random.normal(noise_key, shape)

    columns = []
    for model, params in zip(ctx.ladder.models, ctx.ladder.params):
        loss = jax.jit(lambda p, x0, t, e, m=model: objective.per_example_loss(
            m, sde, p, x0, t, e, False))
        columns.append(np.concatenate([
            np.asarray(loss(params, jnp.asarray(x0), *draws(i, x0.shape)))
            for i, x0 in enumerate(tqdm(batches, desc="held-out loss", unit="batch"))]))
    return np.stack(columns, 1).astype(np.float64)


def analyse(ctx: common.Context) -> dict[str, Any]:
    """Both fits with their bootstrap intervals (the stage's stored result)."""
    a, names = ctx.config.analysis, list(ctx.config.levels)
    num, seed = int(a.gamma_bootstrap), int(ctx.config.sampling.seed)
    steps, losses = zip(*(last_heldout_loss(p)
                          for p in common.level_workdirs(ctx.config, ctx.workdir)))
    result: dict[str, Any] = {"levels": names, "level_flops": ctx.flops,
                              "heldout_losses": losses, "heldout_steps": steps}
    per_example = per_example_heldout_losses(ctx)
    result["heldout_losses_recomputed"] = per_example.mean(0)
    result["heldout_losses_se"] = per_example.std(0, ddof=1) / np.sqrt(per_example.shape[0])
    # γ describes the networks: an analytic level (the fitted Gaussian) is left out of both fits
    fit = [k for k, c in enumerate(ctx.level_configs)
           if registry.gaussian_rank(c.model.level) is None]
    result["fit_levels"] = [names[k] for k in fit]
    flops, fit_losses = ctx.flops[fit], np.asarray(losses)[fit]
    result["loss_fit"] = _try(lambda: fit_loss_power_law(flops, fit_losses))
    if "gamma" in result["loss_fit"]:
        boot = bootstrap_loss_gamma(flops, fit_losses, per_example[:, fit], num, seed)
        result["loss_fit"].update(_interval(boot))
    stats = variance.drift_statistics(ctx)
    error_sq = stats["error_sq"][:, fit]
    result["drift_errors"] = np.sqrt(stats["error_sq"].mean(0))
    result["drift_fit"] = _try(lambda: {"gamma": fit_drift_gamma(flops, error_sq)[0]})
    if "gamma" in result["drift_fit"]:
        boot = bootstrap_drift_gamma(flops, error_sq, num, seed)
        result["drift_fit"].update(_interval(boot))
    return result


def _try(fit) -> dict:
    try:
        return fit()
    except (ValueError, RuntimeError) as err:
        return {"error": str(err)}


def _interval(boot: np.ndarray) -> dict:
    return {"ci": speedup.percentile_interval(boot), "bootstrap": boot.tolist(),
            "bootstrap_failures": int(np.sum(~np.isfinite(boot)))}


def summarise(result: dict) -> dict:
    """The summary keys: ``gamma`` (drift fit, else loss fit), its CI and both estimates."""
    loss, drift = result["loss_fit"], result["drift_fit"]
    out = {"gamma_loss": loss.get("gamma"), "gamma_loss_ci": loss.get("ci"),
           "gamma_drift": drift.get("gamma"), "gamma_drift_ci": drift.get("ci"),
           "gamma_loss_at_bound": loss.get("at_bound"),
           "gamma_loss_bootstrap_failures": loss.get("bootstrap_failures"),
           "gamma_drift_bootstrap_failures": drift.get("bootstrap_failures"),
           "level_flops": result["level_flops"], "heldout_losses": result["heldout_losses"],
           "drift_errors": result["drift_errors"]}
    chosen = "drift_error" if "gamma" in drift else "heldout_loss" if "gamma" in loss else None
    source = drift if chosen == "drift_error" else loss
    out.update(gamma=source.get("gamma"), gamma_ci=source.get("ci"), gamma_source=chosen)
    return out


def run(config: Any, workdir: str | Path, out: str | Path, recompute: bool = False) -> dict:
    """``python -m analysis.fit_gamma``: :func:`stage` on a freshly prepared context."""
    return stage(common.prepare(config, workdir, out, recompute))


def stage(ctx: common.Context) -> dict:
    """Fit γ both ways (reusing a stored fit); plot; merge the summary and return it."""
    config = ctx.config
    settings = {"gamma_bootstrap": int(config.analysis.gamma_bootstrap),
                "seed": int(config.sampling.seed), "level_flops": ctx.flops.tolist(),
                "variance_samples": int(config.analysis.variance_samples),
                "num_time_bins": int(config.analysis.num_time_bins)}
    result = common.load_stage(ctx.out, STAGE, settings, ctx.recompute)
    if result is None:
        result = common.jsonable(analyse(ctx))
        common.save_stage(ctx.out, STAGE, settings, result)
    plot(result, ctx.out / STAGE / "gamma.png")
    return common.merge_summary(ctx.out, summarise(result))


def plot(result: dict, path: Path) -> None:
    """(a) held-out loss and its fit against FLOPs; (b) drift error and its log–log fit."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    costs = np.asarray(result["level_flops"], np.float64)
    grid = np.geomspace(costs[0], costs[-1], 100)
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_a.errorbar(costs, result["heldout_losses"], yerr=result.get("heldout_losses_se"),
                  fmt="o", capsize=3, label="held-out loss (last eval) ± s.e. (unpaired)")
    fit = result["loss_fit"]
    _note(ax_a, fit)
    if "gamma" in fit:
        ax_a.plot(grid, _power_law(grid / fit["cost_scale"], fit["loss_inf"], fit["amplitude"],
                                   2.0 / fit["gamma"]), label=_label(fit))
        ax_a.axhline(fit["loss_inf"], ls=":", c="gray", label=r"$L_\infty$")
    ax_a.set(xscale="log", xlabel="FLOPs per sample (one forward pass)",
             ylabel="held-out denoising loss", title=r"(a) $L_k = L_\infty + A c_k^{-2/\gamma}$")
    deltas = np.asarray(result["drift_errors"], np.float64)
    ax_b.plot(costs[:-1], deltas[:-1], "o", label=r"$\sqrt{E\|f^k - f^K\|^2}$, $k < K$")
    fit = result["drift_fit"]
    _note(ax_b, fit)
    if "gamma" in fit:
        slope = -1.0 / fit["gamma"]
        offset = np.mean(np.log(deltas[:-1]) - slope * np.log(costs[:-1]))
        ax_b.plot(grid, np.exp(offset) * grid**slope, label=_label(fit))
    ax_b.set(xscale="log", yscale="log", xlabel="FLOPs per sample (one forward pass)",
             ylabel="drift error", title=r"(b) $\delta_k \propto c_k^{-1/\gamma}$")
    for ax in (ax_a, ax_b):
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _note(ax, fit: dict) -> None:
    if "error" in fit:
        ax.text(0.02, 0.02, f"no fit: {fit['error']}", transform=ax.transAxes, fontsize=7,
                wrap=True)


def _label(fit: dict) -> str:
    lo, hi = fit.get("ci") or (float("nan"), float("nan"))
    lo, hi = (float("nan") if v is None else v for v in (lo, hi))
    return f"γ = {fit['gamma']:.2f} (95% CI {lo:.2f}–{hi:.2f})"


if __name__ == "__main__":
    from analysis import cli

    cli.stage_main(run)
