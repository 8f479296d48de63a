"""The paper's pipeline on CelebA 64×64 (GPU/TPU): train levels 1–5, then fit γ, measure
V_k(τ), sweep cost against error and draw the figures.

    python -m experiments.celeba64 --plan                  # compute each stage needs (FLOPs)
    python -m experiments.celeba64 [--workdir runs/celeba64] [--out results/celeba64]
    python -m experiments.celeba64 --smoke                 # every stage, mock CelebA, tiny, CPU
    python -m experiments.celeba64 ... --config.analysis.realisations=4  # override a field

Each level trains in its own workdir (``WORKDIR/levelK``) and resumes where it stopped;
finished levels and analysis stages are reused. ``--smoke`` runs the same code on
``tfds.testing.mock_data`` at 8×8 with the first three ``smoke_level`` UNets (three levels
exercise every stage, the γ fits included), a few steps each.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import ml_collections
from absl import app, flags

from analysis import cli
from experiments import pipeline
from mlem import cli as mlem_cli
from mlem import cost
from mlem.models import registry

SAMPLE_CONFIG = "configs/celeba64_sample.py"
SMOKE_LEVELS = 3
SMOKE_TRAIN = {"model.dropout": 0.0, "data.image_size": 8,
               "data.source": "tfds", "training.batch_size": 8, "training.num_steps": 4,
               "training.log_every": 2, "training.eval_every": 4, "training.checkpoint_every": 4,
               "training.sample_every": 4, "training.num_sample_images": 0,
               "optim.warmup_steps": 2, "eval.batch_size": 8,
               "eval.num_batches": 1, "wandb.mode": "disabled"}
SMOKE_SAMPLE = {"sampling.steps": 2, "sampling.path_steps": 8, "sampling.num_samples": 8,
                "sampling.batch_size": 8, "analysis.ref_steps": 8, "analysis.em_steps": (1, 2),
                "analysis.mlem_steps": (2,), "analysis.top_evals": (0.5, 1.0),
                "analysis.realisations": 3, "analysis.selection_realisations": 2,
                "analysis.pattern_search": 2, "analysis.pattern_steps": (2,),
                "analysis.batch_size": 4, "analysis.timing_batch_size": 4,
                "analysis.speedup_bootstrap": 20, "analysis.num_time_bins": 2,
                "analysis.variance_samples": 8, "analysis.gamma_bootstrap": 20,
                "analysis.prefix_tops": (2,),  # the oracle framing: level 3 is the oracle
                "analysis.quality.features": "",  # no Inception weights offline, so ...
                "analysis.distributional.enabled": False,  # ... no FD: these two stages
                "analysis.samplers.enabled": False}  # are tested on the tiny ladder


def plan(sample_config: ml_collections.ConfigDict) -> list[dict]:
    """FLOPs of each stage, from XLA's count of one forward pass of each level.

    Training: 3 × forward (forward + backward) × batch × steps. Reference: ``ref_steps``
    top-level evaluations per sample. EM sweep: ``Σ_k Σ_N N·c_k`` per sample. ML-EM sweep: at
    most the EM cost of all levels at each step count, per configuration (schedule, cost
    model, top-level evaluations). Samples: (evaluation + selection realisations) × batch size.
    Pattern search: per searched point, ``M × S`` candidate solves and ``2R`` evaluation solves
    (the winner and top-level EM), each at most every level on every step. Deployed timing:
    ``1 + timing_repeats`` solves of ``timing_batch_size`` samples per configuration, each at
    most every level on every step.
    """
    configs = pipeline.level_configs(sample_config)
    flops = [_forward_flops(config) for config in configs.values()]
    rows = [{"stage": f"train {level} ({config.model.level})",
             "flops": 3 * f * config.training.batch_size * config.training.num_steps}
            for (level, config), f in zip(configs.items(), flops)]
    a = sample_config.analysis
    samples = (a.realisations + a.selection_realisations) * a.batch_size
    mlem_configs = len(a.schedules) * len(a.cost_models)
    rows.append({"stage": "cost_error: reference",
                 "flops": a.ref_steps * flops[-1] * samples})
    rows.append({"stage": "cost_error: EM sweep",
                 "flops": sum(a.em_steps) * sum(flops) * samples})
    rows.append({"stage": "cost_error: ML-EM sweep (bound)",
                 "flops": sum(n * sum(t <= n for t in a.top_evals) for n in a.mlem_steps)
                 * sum(flops) * samples * mlem_configs})
    searched = sum(sum(t <= n for t in a.top_evals) for n in a.pattern_steps
                   if a.pattern_search)
    if searched:
        rows.append({"stage": "cost_error: pattern search (bound)",
                     "flops": searched * max(a.pattern_steps) * sum(flops) * a.batch_size
                     * (a.pattern_search * a.selection_realisations
                        + 2 * a.realisations)})
    em_configs = len(flops) * len(a.em_steps)
    ml_configs = sum(sum(t <= n for t in a.top_evals) for n in a.mlem_steps) * mlem_configs
    steps = max((*a.em_steps, *a.mlem_steps))
    rows.append({"stage": "cost_error: deployed timing (bound: every configuration)",
                 "flops": (em_configs + ml_configs) * steps * sum(flops)
                 * a.timing_batch_size * (1 + a.timing_repeats)})
    return rows


def _forward_flops(config: ml_collections.ConfigDict) -> float:
    import jax
    import jax.numpy as jnp

    model = registry.get_model(config.model.level)
    size, channels = config.data.image_size, config.data.num_channels
    x, t = jnp.zeros((1, size, size, channels)), jnp.full((1,), 0.5)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t))["params"]
    return cost.flops_per_sample(lambda p, x, t: model.apply({"params": p}, x, t), params, x, t,
                                 batch_size=1)


def smoke(sample_config: ml_collections.ConfigDict, workdir: Path, out: Path) -> dict:
    """Every stage on mock CelebA (``tfds.testing.mock_data``) at 8×8 with the smoke levels;
    ``SMOKE_SAMPLE`` replaces those fields of ``sample_config``."""
    import tensorflow_datasets as tfds

    for dotted, value in SMOKE_SAMPLE.items():
        pipeline.set_field(sample_config, dotted, value)
    sample_config.levels = sample_config.levels[:SMOKE_LEVELS]
    sample_config.train_configs = sample_config.train_configs[:SMOKE_LEVELS]
    configs = pipeline.level_configs(
        sample_config, {**SMOKE_TRAIN, "data.data_dir": str(workdir / "tfds")})
    for k, config in enumerate(configs.values(), start=1):
        config.model.level = f"smoke_level{k}"
    with tfds.testing.mock_data(num_examples=16):
        return pipeline.run(sample_config, workdir, out, train_configs=configs)


def define_flags(argv: list[str]) -> None:
    """The flags of :func:`analysis.cli.define_results_flags` plus ``--plan`` and
    ``--smoke``."""
    cli.define_results_flags(
        argv, config_help=f"sample/analysis config (default {SAMPLE_CONFIG}); override "
        "fields with --config.a.b=value", workdir="runs/celeba64", out="results/celeba64")
    flags.DEFINE_bool("plan", False, "print each stage's FLOPs and exit")
    flags.DEFINE_bool("smoke", False, "every stage on mock CelebA, tiny, CPU-sized "
                      "(default --workdir: a temporary directory, --out: WORKDIR/results)")


def parse_flags(argv: Sequence[str]) -> list[str]:
    return cli.parse(cli.with_default_config(argv, SAMPLE_CONFIG), define_flags)


def run(argv: Sequence[str]) -> dict | list:
    """Run with the parsed flags (``argv``: the positional arguments, none)."""
    cli.start(argv)
    f = flags.FLAGS
    try:
        if f.plan:
            rows = plan(f.config)
            print("| stage | PFLOP |\n|---|---:|")
            for row in rows:
                print(f"| {row['stage']} | {row['flops'] / 1e15:.4g} |")
            return rows
        if f.smoke:
            workdir = Path(f.workdir if f["workdir"].present
                           else tempfile.mkdtemp(prefix="celeba64_smoke_"))
            out = Path(f.out if f["out"].present else workdir / "results")
            summary = smoke(f.config, workdir, out)
        else:
            f.config.allow_older_checkpoints = f.allow_older_checkpoints
            summary = pipeline.run(f.config, f.workdir, f.out, recompute=f.recompute)
    except (ValueError, FileNotFoundError) as err:
        mlem_cli.fail(err)
    print(pipeline.headline(summary))
    return summary


def _app_main(argv: Sequence[str]) -> None:
    run(argv)


if __name__ == "__main__":
    app.run(_app_main, flags_parser=parse_flags)
