"""Figures drawn from the analysis stages' data (no stage imports this module's callers).

``cost_error``: the paper-style log–log cost vs MSE with each method's envelope and the
speedup at equal MSE with its 95% bootstrap band, once in FLOPs and once in seconds.
``quality``: KID and FD against cost on the same sweep (:mod:`analysis.quality`).
``oracle``: the oracle framing's cost to reach each predeclared ε, with fitted exponents.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mlem.eval import speedup


def plt():
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as pyplot
    return pyplot


RULERS = {"flops": ("FLOPs per sample (ML-EM: expected)", "EM FLOPs / its FLOPs", ""),
          "seconds": ("seconds per solve of a realisation's batch", "EM seconds / its seconds",
                      "_seconds")}


def _save(fig, stem: Path) -> list[Path]:
    """Write ``fig`` as ``<stem>.png`` and ``<stem>.pdf``, close it, return the paths."""
    paths = [stem.with_name(f"{stem.name}.{ext}") for ext in ("png", "pdf")]
    for path in paths:
        fig.savefig(path, dpi=130)
    plt().close(fig)
    return paths


def _with_intervals(xs: Sequence[float], estimates: Sequence[dict]
                    ) -> tuple[list[float], list[float], list[list[float]]]:
    """``(x, value, yerr)`` of the reached estimates (value finite), their intervals'
    infinite ends drawn to 3× the value (an interval open to +∞: a failure on some
    resamples)."""
    ok = [(x, e) for x, e in zip(xs, estimates)
          if e["value"] is not None and np.isfinite(e["value"])]
    y = [e["value"] for _, e in ok]
    upper = [e["ci"][1] if np.isfinite(e["ci"][1]) else 3.0 * v for v, (_, e) in zip(y, ok)]
    return ([x for x, _ in ok], y, [[v - e["ci"][0] for v, (_, e) in zip(y, ok)],
                                    [u - v for v, u in zip(y, upper)]])


def cost_error(configs: Sequence[dict], sweep: speedup.Sweep, envs: dict, result: dict,
               out_dir: Path) -> list[Path]:
    """For each ruler (FLOPs, seconds): cost vs MSE (realisation-averaged points, envelopes
    with standard errors over realisations) and the speedup curves with their 95% bootstrap
    bands; ``cost_error.png/pdf`` and ``cost_error_seconds.png/pdf`` in ``out_dir``.

    ``configs`` and ``sweep`` as :func:`analysis.comparison.table` returns them, ``envs`` and
    ``result`` as the stage writes them to ``envelopes.json`` and ``speedup.json``.
    """
    mse, costs = sweep.means(np.arange(sweep.num_realisations))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ruler, (xlabel, speed_label, suffix) in RULERS.items():
        fig = _cost_error_figure(configs, mse, costs[ruler], envs, result, ruler, xlabel,
                                 speed_label)
        paths += _save(fig, out_dir / f"cost_error{suffix}")
    return paths


def _cost_error_figure(configs, mse, cost, envs, result, ruler, xlabel, speed_label):
    plt_ = plt()
    fig, (ax, ax_s) = plt_.subplots(1, 2, figsize=(12, 4.8), width_ratios=(3, 2))
    levels = sorted({c["level"] for c in configs if c["method"] == "em"})
    colours = plt_.cm.Blues(np.linspace(0.35, 0.95, len(levels)))
    for level, colour in zip(levels, colours):
        idx = sorted((i for i, c in enumerate(configs) if c["method"] == "em"
                      and c["level"] == level and mse[i] > 0), key=lambda i: configs[i]["steps"])
        ax.plot(cost[idx], mse[idx], "o-", ms=3, lw=0.8, c=colour, label=f"EM level {level}")
    ml_colours = dict(zip(sorted(c for c in envs if c != "em"),
                          ("tab:red", "tab:orange", "tab:purple", "tab:green", "tab:brown",
                           "tab:pink", "tab:olive", "tab:cyan", "black", "tab:gray")))
    for curve, colour in ml_colours.items():
        idx = [i for i, c in enumerate(configs) if c["curve"] == curve]
        ax.plot(cost[idx], mse[idx], "s", ms=3, c=colour, alpha=0.3)
    for curve, env in envs.items():
        e = env[ruler]
        ax.errorbar(e["cost"], e["mse"], yerr=e["mse_se"], c=ml_colours.get(curve, "tab:blue"),
                    lw=2, ls="--", capsize=2, label=f"{curve} envelope")
    op = result["speedup_at_equal_mse"]["operating_point_mse"]
    ax.axhline(op, c="gray", ls=":", label=f"operating point ({result['operating_point']})")
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="MSE vs reference (per pixel)",
           title=f"error vs cost ({result['num_realisations']} realisations, ± 1 SE)")
    ax.legend(fontsize=7)
    ax_s.axhline(1.0, c="gray", lw=0.8)
    for curve, colour in ml_colours.items():
        band = result["curves"][curve][ruler]
        if not band["mse"]:
            continue
        at = result["comparisons"][curve][ruler]["targets"]
        ax_s.plot(band["mse"], band["speedup"], c=colour, lw=0.8, label=f"{curve} (exploratory)")
        ax_s.fill_between(band["mse"], band["lo"], band["hi"], color=colour, alpha=0.15, lw=0)
        for t in at.values():  # the headline statistics: predeclared targets, 95% intervals
            v, (lo, hi) = t["speedup"]["value"], t["speedup"]["ci"]
            if v is not None and np.isfinite(lo) and np.isfinite(hi):
                ax_s.errorbar(t["target_error"], v, yerr=[[v - lo], [hi - v]], fmt="o",
                              c=colour, mec="k", capsize=3)
    ax_s.axvline(op, c="gray", ls=":")
    ax_s.set(xscale="log", xlabel="MSE", ylabel=speed_label,
             title="speedup: dots = targets (95% CI), lines exploratory")
    ax_s.legend(fontsize=7)
    fig.tight_layout()
    return fig


QUALITY_RULERS = {"flops": ("FLOPs per sample (ML-EM: expected)", ""),
                  "seconds": ("seconds per solve of a realisation's batch", "_seconds")}


def quality(result: dict, out_dir: Path) -> list[Path]:
    """KID (95% interval over realisations) and FD against cost, for each method's envelope
    (chosen on the selection realisations), the top level's own KID as a band and the
    operating cost as a line; ``quality.png/pdf`` (FLOPs) and ``quality_seconds.png/pdf``.

    ``result``: :func:`analysis.quality.analyse`'s (``quality.json``)."""
    plt_ = plt()
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    methods = result["methods"]
    levels = sorted(m for m in methods if m.startswith("em-level"))
    others = [m for m in methods if m != "em" and m not in levels]
    colours = {**dict(zip(levels, plt_.cm.Blues(np.linspace(0.35, 0.8, len(levels))))),
               "em": "tab:blue",
               **dict(zip(others, ("tab:red", "tab:orange", "tab:purple", "tab:green",
                                   "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "black")))}
    for ruler, (xlabel, suffix) in QUALITY_RULERS.items():
        fig, (ax_k, ax_f) = plt_.subplots(1, 2, figsize=(12, 4.6))
        top = result["top_level"]
        ax_k.axhspan(top["kid"]["lo"], top["kid"]["hi"], color="gray", alpha=0.2, lw=0,
                     label="top level, finest grid (95% CI)")
        ax_f.axhline(top["fd"]["value"], c="gray", ls="--", label="top level, finest grid")
        for method in [*levels, "em", *others]:
            points = methods[method][ruler]["envelope"]
            if not points:
                continue
            x = [p["cost"] for p in points]
            k = np.array([[p["kid"]["value"], p["kid"]["lo"], p["kid"]["hi"]] for p in points])
            thin = method in levels
            style = dict(c=colours[method], lw=0.8 if thin else 1.6, ms=3,
                         alpha=0.6 if thin else 1.0, label=method)
            if thin:
                ax_k.plot(x, k[:, 0], "o-", **style)
            else:
                ax_k.errorbar(x, k[:, 0], yerr=[k[:, 0] - k[:, 1], k[:, 2] - k[:, 0]],
                              fmt="o-", capsize=2, **style)
            ax_f.plot(x, [p["fd"] for p in points], "o-", **style)
        for ax in (ax_k, ax_f):
            ax.axvline(result["operating_cost"][ruler], c="gray", ls=":",
                       label="operating cost")
            ax.set(xscale="log", xlabel=xlabel)
            ax.legend(fontsize=7)
        n = result["num_realisations"]
        ax_k.set_yscale("symlog", linthresh=1e-2)  # KID spans decades and may be negative
        lowest = min([top["kid"]["lo"]] + [p["kid"]["lo"] for m in methods.values()
                                           for p in m[ruler]["envelope"]])
        ax_k.set_ylim(bottom=min(0.0, 1.2 * lowest))
        ax_k.set(ylabel=f"KID vs {result['features']['data']}",
                 title=f"KID ({n} realisations, {result['samples_per_point']} samples a point)")
        ax_f.set(yscale="log", ylabel="FD (plug-in; biased up at small N)",
                 title=f"FD ({result['features']['features']} features)")
        fig.tight_layout()
        paths += _save(fig, out_dir / f"quality{suffix}")
    return paths


def oracle(result: dict, out_dir: Path, stem: str = "oracle",
           error: str = "target MSE to the oracle (ε)", title: str = "oracle framing"
           ) -> list[Path]:
    """The oracle framing (``oracle.json``): per ruler, each method's cost to reach each
    predeclared ε with its 95% interval on log–log axes, the line of its fitted exponent
    (cost ∝ ε^-a) through the geometric mean of the reached points, and the speedup of each
    comparison at each ε with its interval; ``oracle.png/pdf`` and ``oracle_seconds.png/pdf``
    in ``out_dir`` (``stem``, the ``error`` axis and the ``title`` for other comparisons of
    the same form: :func:`distributional`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for ruler, (xlabel, _, suffix) in RULERS.items():
        plt_ = plt()
        fig, (ax, ax_s) = plt_.subplots(1, 2, figsize=(12, 4.8), width_ratios=(3, 2))
        drawn = set()
        for name, by_ruler in result["comparisons"].items():
            if ruler not in by_ruler:
                continue
            c = by_ruler[ruler]
            targets = [t["target_error"] for t in c["targets"].values()]
            for side, method in (("base", c["base"]), ("other", c["other"])):
                if method in drawn:
                    continue
                drawn.add(method)
                x, y, yerr = _with_intervals(
                    targets, [t[f"cost_{side}"] for t in c["targets"].values()])
                if not y:
                    continue
                a = c.get("exponents", {}).get(side, {}).get("value")
                label = method if a is None else f"{method}: a = {a:.2f}"
                line = ax.errorbar(x, y, yerr=yerr, marker="o", capsize=3, ls="none",
                                   label=label)
                if a is not None:
                    gx = np.exp(np.mean(np.log(x)))
                    gy = np.exp(np.mean(np.log(y)))
                    grid = np.geomspace(min(x), max(x), 20)
                    ax.plot(grid, gy * (grid / gx) ** -a, color=line[0].get_color(), lw=1)
            if " vs em" in name:
                x, y, yerr = _with_intervals(
                    targets, [t["speedup"] for t in c["targets"].values()])
                ax_s.errorbar(x, y, yerr=yerr, marker="o", capsize=3, label=name)
        ax.set(xscale="log", yscale="log", xlabel=error,
               ylabel=f"cost to reach ε: {xlabel}",
               title=f"{title}: cost to reach ε (95% intervals, failures counted)")
        ax.invert_xaxis()
        ax.legend(fontsize=8)
        ax_s.axhline(1.0, color="grey", lw=0.8)
        ax_s.set(xscale="log", yscale="log", xlabel=error,
                 ylabel="speedup over EM", title="speedup at each predeclared ε")
        ax_s.invert_xaxis()
        ax_s.legend(fontsize=8)
        fig.tight_layout()
        paths += _save(fig, out_dir / f"{stem}{suffix}")
    return paths


ERRORS = {"fd": "target FD to the oracle's samples (ε)",
          "moments": "target pixel-moment error to the oracle's samples (ε)"}


def distributional(result: dict, out_dir: Path) -> list[Path]:
    """``distributional.json`` drawn as :func:`oracle` draws the pathwise framing: per
    framing and error (FD, pixel moments), ``distributional_<framing>_<error>.png`` and its
    ``_seconds`` twin."""
    paths = []
    for framing, f in result["framings"].items():
        for error, label in ERRORS.items():
            comps = {}
            for name, by_error in f["comparisons"].items():
                other, base = name.split(" vs ")
                comps[name] = {cost: {**c, "base": base, "other": other}
                               for cost, c in by_error.get(error, {}).items()}
            paths += oracle({"comparisons": comps}, out_dir,
                            stem=f"distributional_{framing}_{error}", error=label,
                            title=f"{framing} framing, in distribution")
    return paths
