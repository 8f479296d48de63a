"""``cost_vs_error.png`` of a synthetic sweep: cost vs RMSE with envelopes and fitted slopes,
and the speedup at equal error beside it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlem.eval import speedup

_STYLES = {"em": ("tab:blue", "EM", "exponent_em"),
           "mlem": ("tab:red", "ML-EM", "exponent_mlem")}


def _cost_error_panel(ax, points: Sequence[dict], summary: dict) -> None:
    """All points, both envelopes and the fitted ``cost ∝ error^{-s}`` over the fit range."""
    lo, hi = summary["fit_range"]
    ode = summary.get("config", {}).get("noise", 1.0) == 0
    heun = summary.get("config", {}).get("solver", "euler") == "heun"
    for method, (colour, label, key) in _STYLES.items():
        label = label.replace("EM", "Heun" if heun else "Euler") if ode or heun else label
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
           title=f"Synthetic {'ODE' if ode else 'ladder'}: γ = {summary['gamma_target']:g} "
                 f"(fitted {summary['gamma_fitted']:.2f})")
    ax.legend(fontsize=8)


def _speedup_panel(ax, summary: dict) -> None:
    curve = np.array(summary["speedup_curve"])
    ax.plot(curve[:, 0], curve[:, 1], "-", lw=0.8, color="0.5", label="all seeds (exploratory)")
    for end in ("low", "high"):
        name = f"speedup_at_fit_range_{end}"
        value, ci = summary.get(name), summary.get(f"{name}_ci95")
        if value is not None and ci and all(np.isfinite(ci)):
            ax.errorbar(summary[f"{name}_rmse"], value, yerr=[[value - ci[0]], [ci[1] - value]],
                        fmt="o", color="k", capsize=3)
    ax.axvspan(*summary["fit_range"], color="0.9", zorder=0)
    ax.set(xscale="log", yscale="log", xlabel="RMSE", ylabel="EM cost / ML-EM cost",
           title="speedup at equal error: targets (95% CI)")


def plot(points: Sequence[dict], summary: dict, path: Path) -> None:
    """Log–log cost vs RMSE: all points, both envelopes, fitted slopes; speedup beside it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_speed) = plt.subplots(1, 2, figsize=(12, 5), width_ratios=(3, 2))
    _cost_error_panel(ax, points, summary)
    _speedup_panel(ax_speed, summary)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
