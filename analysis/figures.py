"""Every figure of an experiment directory, regenerated from what the stages left on disk.

    python -m analysis.figures --config configs/mnist_sample.py --workdir runs/mnist \\
        --out results/mnist_cpu

Writes ``DIR/figures/``: ``cost_error.png/pdf`` and ``cost_error_seconds.png/pdf`` (the
paper-style log–log cost vs MSE with the envelopes, and the speedup at equal MSE with its
95% band, in FLOPs and in seconds), ``gamma.png`` (both γ fits), ``variance.png``
(``V_k(τ)``), ``heldout_loss.png`` (held-out loss of each level against training FLOPs) and
``samples_equal_cost.png`` (reference, EM and ML-EM from the same noise and Brownian path,
EM and ML-EM at about equal FLOPs) and, when ``config.analysis.quality`` names features,
``quality.png/pdf`` and ``quality_seconds.png/pdf`` (KID and FD against cost). A figure
whose stage has not run is skipped and named.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from analysis import common, comparison, cost_error, plots, quality

STAGE = "figures"
TRAIN_FLOPS_PER_FORWARD = 3.0  # forward + backward ≈ 3 forward passes (standard estimate)
GRID_SAMPLES = 8  # at most; the grid shows realisation 0 (one batch of the sweep)


def plot_cost_error(stage: Path, out_dir: Path | None = None) -> list[Path]:
    """The cost–error figures (:func:`analysis.plots.cost_error`) from what the
    ``cost_error`` stage left in ``stage``."""
    envs = json.loads((stage / "envelopes.json").read_text())
    result = json.loads((stage / "speedup.json").read_text())
    evaluation = [r for r in cost_error.read_points(stage / "points.csv")
                  if r["realisation"] < result["num_realisations"]]  # not the selection ones
    configs, sweep = comparison.table(evaluation)
    return plots.cost_error(configs, sweep, envs, result, stage if out_dir is None else out_dir)


def heldout_curves(config: Any, workdir: Path, flops: np.ndarray) -> dict[str, np.ndarray]:
    """Per level: ``(steps, 2)`` of (training FLOPs, held-out loss) from ``metrics.jsonl``.

    Training FLOPs ≈ 3 × forward FLOPs per sample × batch size × step.
    """
    from mlem.train import checkpoint

    curves = {}
    for name, path, c in zip(config.levels, common.level_workdirs(config, workdir), flops):
        batch = checkpoint.load_record(path).training.batch_size
        lines = (path / "metrics.jsonl").read_text().splitlines()
        pts = [(r["step"], r["heldout_loss"]) for r in map(json.loads, filter(None, lines))
               if "heldout_loss" in r]
        curves[name] = np.array([(TRAIN_FLOPS_PER_FORWARD * c * batch * s, v) for s, v in pts
                                 if s > 0]).reshape(-1, 2)
    return curves


def plot_heldout(curves: dict[str, np.ndarray], path: Path) -> None:
    plt = plots.plt()
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
    """The envelope point of the FLOP headline ML-EM curve nearest the operating MSE and the
    EM envelope point nearest it in FLOPs (log scale), each ``{level, top_evals, c, steps,
    flops, mse, curve}``."""
    stage = out / "cost_error"
    envs = json.loads((stage / "envelopes.json").read_text())
    result = json.loads((stage / "speedup.json").read_text())
    curve = result["speedup_at_equal_mse"]["curve"]
    ml, em = envs[curve]["flops"], envs["em"]["flops"]
    op = result["speedup_at_equal_mse"]["operating_point_mse"]
    i = int(np.argmin(np.abs(np.log(np.asarray(ml["mse"]) / op))))
    j = int(np.argmin(np.abs(np.log(np.asarray(em["cost"]) / ml["cost"][i]))))
    pick = lambda env, k, name: {**env["points"][k], "flops": env["cost"][k],
                                 "mse": env["mse"][k], "curve": name}
    return pick(em, j, "em"), pick(ml, i, curve)


def sample_grid(ctx: common.Context, path: Path) -> None:
    """Reference, EM and ML-EM at about equal cost, on realisation 0 of the sweep (coupled),
    in three rows."""
    from mlem import brownian, generation

    a, seed = ctx.config.analysis, int(ctx.config.sampling.seed)
    em, ml = equal_cost_pair(ctx.out)
    solver, grid_kind, _ = cost_error.solver_settings(ctx.config)  # those of the sweep
    path_ts = np.asarray(ctx.ladder.sde.time_grid(int(a.ref_steps), grid_kind), np.float32)
    grid = lambda n: np.asarray(brownian.coarse_grid(path_ts, n))
    # Realisation 0 of the sweep, at the sweep's batch size: its reference is stored and its
    # solvers are compiled already.
    batch = min(GRID_SAMPLES, int(a.batch_size))
    kwargs = dict(num_samples=batch, batch_size=batch, seed=seed, path_ts=path_ts, solver=solver)
    ref = np.load(ctx.out / "cost_error" / "reference.npy", mmap_mode="r")[0, :batch]
    x_em, _ = generation.generate(ctx.ladder, "em", None, grid(em["steps"]),
                                  em_level=em["level"], **kwargs)
    _, schedule, cost_model = ml["curve"].split("-")
    variances = cost_error.variances_for(ctx) if schedule != "dyadic" else None
    prices = cost_error.level_costs(ctx, cost_model)
    _, probs = cost_error.make_probs(schedule, prices, grid(ml["steps"]), variances,
                                     cost_error.fitted_gamma(ctx.out), ml["top_evals"],
                                     a.learned_schedule)
    x_ml, _ = generation.generate(ctx.ladder, "mlem", probs, grid(ml["steps"]), **kwargs)
    rows = [(f"reference: EM top level, {a.ref_steps} steps", ref),
            (f"EM level {em['level']}, {em['steps']} steps: {em['flops']:.3g} FLOPs, "
             f"sweep MSE {em['mse']:.3g}", x_em),
            (f"ML-EM ({ml['curve']}) {ml['top_evals']:g} top-level evals, {ml['steps']} steps: "
             f"{ml['flops']:.3g} FLOPs, sweep MSE {ml['mse']:.3g}", x_ml)]
    _image_rows(rows, path)


def _image_rows(rows: list[tuple[str, np.ndarray]], path: Path) -> None:
    """One labelled strip of images per row (images in [-1, 1], ``(n, H, W, C)``)."""
    plt = plots.plt()
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


def _copy_cost_error(stage: Path, fig_dir: Path) -> None:
    """The cost–error figures the ``cost_error`` stage drew (redrawn if any is missing)."""
    names = [f"cost_error{suffix}.{ext}" for suffix in ("", "_seconds") for ext in ("png", "pdf")]
    if not all((stage / n).exists() for n in names):
        plot_cost_error(stage, fig_dir)
        return
    for name in names:
        shutil.copyfile(stage / name, fig_dir / name)


def _reused_sample_grid(ctx: common.Context, path: Path) -> None:
    """:func:`sample_grid`, unless the image on disk was drawn from the same sweep results
    (it generates samples, the only figure that costs compute)."""
    envelopes = ctx.out / "cost_error" / "envelopes.json"
    settings = {"envelopes": common.digest(json.loads(envelopes.read_text())),
                "samples": min(GRID_SAMPLES, int(ctx.config.analysis.batch_size))}
    if path.exists() and common.load_stage(ctx.out, "figure_samples", settings,
                                           ctx.recompute) is not None:
        return
    sample_grid(ctx, path)
    common.save_stage(ctx.out, "figure_samples", settings, {"file": str(path)})


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
        "cost_error.png": (cost_stage / "speedup.json", lambda p: _copy_cost_error(cost_stage,
                                                                                 fig_dir)),
        "gamma.png": (gamma_stage, lambda p: fit_gamma.plot(
            json.loads(gamma_stage.read_text())["result"], p)),
        "variance.png": (variance_file, lambda p: variance.plot(
            json.loads(variance_file.read_text()), None, p)),
        "heldout_loss.png": (None, lambda p: plot_heldout(
            heldout_curves(config, ctx.workdir, ctx.flops), p)),
        "samples_equal_cost.png": (cost_stage / "speedup.json",
                                   lambda p: _reused_sample_grid(ctx, p)),
    }
    if quality.settings(config)["features"]:  # KID and FD against cost (docs/quality.md)
        jobs["quality.png"] = (cost_stage / "quality.json", lambda p: plots.quality(
            json.loads((cost_stage / "quality.json").read_text()), fig_dir))
    for name, (needs, draw) in jobs.items():
        if needs is not None and not needs.exists():
            skipped.append(f"{name} (run the stage that writes {needs.relative_to(ctx.out)})")
            continue
        draw(fig_dir / name)
        written.append(str(fig_dir / name))
    for extra in ("cost_error.pdf", "cost_error_seconds.png", "cost_error_seconds.pdf",
                  "quality.pdf", "quality_seconds.png", "quality_seconds.pdf"):
        if (fig_dir / extra).exists():
            written.append(str(fig_dir / extra))
    return common.merge_summary(ctx.out, {"figures": written, "figures_skipped": skipped})


if __name__ == "__main__":
    from analysis import cli

    cli.stage_main(run)
