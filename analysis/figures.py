"""Every figure of an experiment directory, regenerated from what the stages left on disk.

    python -m analysis.figures --config configs/mnist_sample.py --workdir runs/mnist \\
        --out results/mnist_cpu

Writes ``DIR/figures/``: ``cost_error.png/pdf`` (the paper-style log–log cost vs MSE with
both envelopes, and the speedup at equal MSE), ``gamma.png`` (both γ fits), ``variance.png``
(``V_k(τ)``), ``heldout_loss.png`` (held-out loss of each level against training FLOPs) and
``samples_equal_cost.png`` (reference, EM and ML-EM from the same noise and Brownian path,
EM and ML-EM at about equal FLOPs). A figure whose stage has not run is skipped and named.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from analysis import common

STAGE = "figures"
TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward ≈ 3 forward passes (standard estimate)
GRID_SAMPLES = 8


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_cost_error(stage: Path, out_dir: Path | None = None) -> list[Path]:
    """Cost vs MSE (all seed-averaged points, envelopes) and the speedup curve; PNG + PDF."""
    from analysis import cost_error

    plt = _plt()
    rows = cost_error.seed_average(cost_error.read_points(stage / "points.csv"))
    envs = json.loads((stage / "envelopes.json").read_text())
    result = json.loads((stage / "speedup.json").read_text())
    fig, (ax, ax_s) = plt.subplots(1, 2, figsize=(12, 4.8), width_ratios=(3, 2))
    levels = sorted({r["level"] for r in rows if r["method"] == "em"})
    colours = plt.cm.Blues(np.linspace(0.35, 0.95, len(levels)))
    for level, colour in zip(levels, colours):
        pts = sorted((r for r in rows if r["method"] == "em" and r["level"] == level
                      and r["mse"] > 0), key=lambda r: r["steps"])
        ax.plot([r["flops"] for r in pts], [r["mse"] for r in pts], "o-", ms=3, lw=0.8,
                c=colour, label=f"EM level {level}")
    ml = [r for r in rows if r["method"] == "mlem"]
    ax.plot([r["flops"] for r in ml], [r["mse"] for r in ml], "s", ms=3, c="tab:red",
            alpha=0.35, label="ML-EM (every c, steps)")
    styles = {"em": ("tab:blue", "EM envelope"), "mlem-variance": ("tab:red", "ML-EM envelope"),
              "mlem-constant": ("tab:orange", "ML-EM (constant p) envelope"),
              "mlem-dyadic": ("tab:purple", "ML-EM (dyadic p) envelope")}
    for name, env in envs.items():
        colour, label = styles.get(name, ("k", name))
        ax.errorbar(env["flops"], env["mse"], yerr=env["mse_se"], c=colour, lw=2, ls="--",
                    capsize=2, label=label)
    op = result.get("operating_point_mse")
    if op:
        ax.axhline(op, c="gray", ls=":", label=f"operating point ({result['operating_point']})")
    ax.set(xscale="log", yscale="log", xlabel="FLOPs per sample (realised)",
           ylabel="MSE vs reference (per pixel)", title="error vs cost (coupled, seed-averaged)")
    ax.legend(fontsize=7)
    _plot_speedup(ax_s, result)
    fig.tight_layout()
    out_dir = stage if out_dir is None else out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "cost_error.png", out_dir / "cost_error.pdf"]
    for path in paths:
        fig.savefig(path, dpi=130)
    plt.close(fig)
    return paths


def _plot_speedup(ax, result: dict) -> None:
    curve = np.array(result["speedup_curve"], dtype=float).reshape(-1, 2)
    curve = curve[np.isfinite(curve).all(1)]
    ax.set(xlabel="MSE", ylabel="EM FLOPs / ML-EM FLOPs",
           title=f"speedup at equal MSE ({result['speedup_method']})")
    if not len(curve):
        ax.text(0.5, 0.5, "the EM and ML-EM envelopes\nshare no MSE range", ha="center",
                transform=ax.transAxes)
        return
    ax.plot(curve[:, 0], curve[:, 1], c="tab:red")
    ax.axhline(1.0, c="gray", lw=0.8)
    op, value = result.get("operating_point_mse"), result.get("speedup_at_operating_point")
    if op and value:
        ax.plot(op, value, "ko", label=f"{value:.2f}× at the operating point")
        ax.legend(fontsize=8)
    ax.set_xscale("log")


def heldout_curves(config: Any, workdir: Path, flops: np.ndarray) -> dict[str, np.ndarray]:
    """Per level: ``(steps, 2)`` of (training FLOPs, held-out loss) from ``metrics.jsonl``.

    Training FLOPs ≈ 3 × forward FLOPs per sample × batch size × step.
    """
    from mlem import checkpoint

    curves = {}
    for name, path, c in zip(config.levels, common.level_workdirs(config, workdir), flops):
        batch = checkpoint.load_config(path).training.batch_size
        lines = (path / "metrics.jsonl").read_text().splitlines()
        pts = [(r["step"], r["heldout_loss"]) for r in map(json.loads, filter(None, lines))
               if "heldout_loss" in r]
        curves[name] = np.array([(TRAIN_FLOPS_PER_FORWARD * c * batch * s, v) for s, v in pts
                                 if s > 0]).reshape(-1, 2)
    return curves


def plot_heldout(curves: dict[str, np.ndarray], path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for name, pts in curves.items():
        ax.plot(pts[:, 0], pts[:, 1], "o-", ms=3, label=name)
    ax.set(xscale="log", yscale="log", xlabel="training FLOPs (≈ 3 × forward × batch × step)",
           ylabel="held-out denoising loss (EMA)", title="held-out loss per level")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def equal_cost_pair(out: Path) -> tuple[dict, dict]:
    """The ML-EM envelope point nearest the operating MSE and the EM envelope point nearest
    it in FLOPs (log scale): ``({level, c, steps, flops, mse}, ...)``."""
    stage = out / "cost_error"
    envs = json.loads((stage / "envelopes.json").read_text())
    result = json.loads((stage / "speedup.json").read_text())
    ml, em = envs[result["speedup_method"]], envs["em"]
    op = result["operating_point_mse"]
    i = int(np.argmin(np.abs(np.log(np.asarray(ml["mse"]) / op))))
    j = int(np.argmin(np.abs(np.log(np.asarray(em["flops"]) / ml["flops"][i]))))
    pick = lambda env, k: {**env["points"][k], "flops": env["flops"][k], "mse": env["mse"][k]}
    return pick(em, j), {**pick(ml, i), "schedule": result["speedup_method"].split("-", 1)[1]}


def sample_grid(ctx: common.Context, path: Path) -> None:
    """Reference, EM and ML-EM at about equal cost, from one seed (coupled), in three rows."""
    from analysis import cost_error
    from mlem import brownian, generation

    a, seed = ctx.config.analysis, int(ctx.config.sampling.seed)
    em, ml = equal_cost_pair(ctx.out)
    path_ts = np.asarray(ctx.ladder.sde.time_grid(int(a.ref_steps)), np.float32)
    grid = lambda n: np.asarray(brownian.coarse_grid(path_ts, n))
    kwargs = dict(num_samples=GRID_SAMPLES, batch_size=GRID_SAMPLES, seed=seed, path_ts=path_ts)
    ref, _ = generation.generate(ctx.ladder, "em", None, path_ts, em_level=-1, **kwargs)
    x_em, _ = generation.generate(ctx.ladder, "em", None, grid(em["steps"]),
                                  em_level=em["level"], **kwargs)
    variances = (cost_error._variances(ctx) if ml["schedule"] != "dyadic" else None)
    gamma = cost_error._summary(ctx.out).get("gamma")
    probs = cost_error.make_probs(ml["schedule"], ml["c"], grid(ml["steps"]), ctx.flops,
                                  variances, gamma)
    x_ml, _ = generation.generate(ctx.ladder, "mlem", probs, grid(ml["steps"]), **kwargs)
    rows = [(f"reference: EM top level, {a.ref_steps} steps", ref),
            (f"EM level {em['level']}, {em['steps']} steps: {em['flops']:.3g} FLOPs, "
             f"sweep MSE {em['mse']:.3g}", x_em),
            (f"ML-EM c={ml['c']:g}, {ml['steps']} steps: {ml['flops']:.3g} FLOPs, "
             f"sweep MSE {ml['mse']:.3g}", x_ml)]
    _image_rows(rows, path)


def _image_rows(rows: list[tuple[str, np.ndarray]], path: Path) -> None:
    """One labelled strip of images per row (images in [-1, 1], ``(n, H, W, C)``)."""
    plt = _plt()
    fig, axes = plt.subplots(len(rows), 1, figsize=(1.2 * rows[0][1].shape[0], 1.6 * len(rows)),
                             squeeze=False)
    for ax, (title, images) in zip(axes[:, 0], rows):
        images = np.clip((np.asarray(images) + 1.0) / 2.0, 0.0, 1.0)
        pad = np.ones((images.shape[0], images.shape[1], 1, images.shape[3]))
        strip = np.concatenate([np.concatenate([im, p], 1) for im, p in zip(images, pad)], 1)
        ax.imshow(strip[..., 0] if strip.shape[-1] == 1 else strip, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        ax.set_title(title, fontsize=8, loc="left")
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run(config: Any, workdir: str | Path, out: str | Path, recompute: bool = False) -> dict:
    """``python -m analysis.figures``: :func:`stage` on a freshly prepared context."""
    return stage(common.prepare(config, workdir, out, recompute))


def stage(ctx: common.Context) -> dict:
    """Regenerate every figure whose inputs exist; list written and skipped ones."""
    from analysis import fit_gamma, variance

    config = ctx.config
    fig_dir, written, skipped = ctx.out / STAGE, [], []
    fig_dir.mkdir(parents=True, exist_ok=True)
    cost_stage, gamma_stage = ctx.out / "cost_error", ctx.out / fit_gamma.STAGE / common.STAGE
    variance_file = ctx.out / variance.STAGE / "variances.json"
    jobs = {
        "cost_error.png": (cost_stage / "speedup.json",
                           lambda p: plot_cost_error(cost_stage, fig_dir)),
        "gamma.png": (gamma_stage, lambda p: fit_gamma.plot(
            json.loads(gamma_stage.read_text())["result"], p)),
        "variance.png": (variance_file, lambda p: variance.plot(
            json.loads(variance_file.read_text()), None, p)),
        "heldout_loss.png": (None, lambda p: plot_heldout(
            heldout_curves(config, ctx.workdir, ctx.flops), p)),
        "samples_equal_cost.png": (cost_stage / "speedup.json",
                                   lambda p: sample_grid(ctx, p)),
    }
    for name, (needs, draw) in jobs.items():
        if needs is not None and not needs.exists():
            skipped.append(f"{name} (run the stage that writes {needs.relative_to(ctx.out)})")
            continue
        draw(fig_dir / name)
        written.append(str(fig_dir / name))
    if (fig_dir / "cost_error.pdf").exists():
        written.append(str(fig_dir / "cost_error.pdf"))
    return common.merge_summary(ctx.out, {"figures": written, "figures_skipped": skipped})


if __name__ == "__main__":
    common.cli(run)
