"""The paper's pipeline: train each ladder level, then fit γ, measure V_k(τ), sweep cost
against error and draw the figures (docs/design.md §3).

Shared by ``make demo`` (``experiments/mnist_cpu.py``, MNIST-5k on a CPU) and
``experiments/celeba64`` (GPU/TPU). Every stage is resumable: a level whose checkpoint has
reached ``training.num_steps`` is not trained again, and the analysis stages reuse what is on
disk in the results directory unless ``recompute`` is set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import jax
import ml_collections

from analysis import (
    common,
    cost_error,
    distributional,
    figures,
    fit_gamma,
    quality,
    samplers,
    variance,
)
from mlem import parallel
from mlem.config_files import load_config
from mlem.train import checkpoint, loop

STAGES = {"fit_gamma": fit_gamma.stage, "variance": variance.stage,
          "cost_error": cost_error.stage, "distributional": distributional.stage,
          "samplers": samplers.stage, "figures": figures.stage}
# What the demo's summary.json promises (docs/design.md §3), in the stage summaries' names.
HEADLINE = ("gamma", "gamma_ci", "best_method", "speedup_at_equal_mse",
            "wallclock_speedup_at_equal_mse", "mse_ratio_at_equal_cost",
            "top_level_evals_at_operating_point")


def level_configs(sample_config: ml_collections.ConfigDict,
                  overrides: Mapping[str, object] | None = None
                  ) -> dict[str, ml_collections.ConfigDict]:
    """``{level dir: training config}`` from ``sample_config.train_configs``, with dotted
    ``overrides`` (e.g. ``{'training.num_steps': 10}``) applied to each."""
    if len(sample_config.train_configs) != len(sample_config.levels):
        raise ValueError("config.train_configs: need one training config per entry of "
                         f"config.levels ({len(sample_config.levels)})")
    configs = {}
    for level, path in zip(sample_config.levels, sample_config.train_configs):
        config = load_config(path)
        for dotted, value in (overrides or {}).items():
            set_field(config, dotted, value)
        configs[level] = config
    return configs


def trained_step(workdir: Path) -> int:
    """Newest checkpointed step in ``workdir`` (0 when there is none)."""
    if not (workdir / checkpoint.CHECKPOINT_DIR).is_dir():
        return 0
    manager = checkpoint.make_manager(workdir, keep=None)
    try:
        return manager.latest_step() or 0
    finally:
        manager.close()


def training_order(configs: Mapping[str, ml_collections.ConfigDict]) -> list[str]:
    """The level dirs of ``configs`` with every distilled level after its teacher (when the
    teacher is a level of the same tree), otherwise in the given order."""
    order, pending = [], list(configs)
    while pending:
        ready = [lv for lv in pending
                 if configs[lv].get("distill", {}).get("teacher_workdir", "") not in pending]
        if not ready:
            raise ValueError(f"config.train_configs: the distillation teachers of {pending} "
                             f"form a cycle")
        order.append(ready[0])
        pending.remove(ready[0])
    return order


IN_MEMORY = ("mnist5k", "synthetic")  # datasets whose levels may train at once


def train_ladder(configs: Mapping[str, ml_collections.ConfigDict], workdir: Path,
                 also: Callable[[], object] | None = None) -> dict:
    """Train every level not yet at ``training.num_steps``; returns seconds per level.

    On one CPU host with in-memory data (:data:`IN_MEMORY`), levels are independent
    computations, so they train concurrently
    (:func:`mlem.parallel.map_concurrently`, the last and largest level first, then ``also``,
    another job such as the feature classifier): each level's weights are those it gets
    alone. A ladder with distilled levels trains in order, teachers first."""
    order = training_order(configs)
    todo = []
    for level in order:
        steps, level_dir = configs[level].training.num_steps, workdir / level
        if trained_step(level_dir) >= steps:
            print(f"[train] {level}: done ({steps} steps), reusing {level_dir}")
        else:
            todo.append(level)

    def train(level):
        k, config = order.index(level) + 1, configs[level]
        print(f"[train] level {k}/{len(configs)}: {config.model.level} -> {workdir / level}",
              flush=True)
        start = time.perf_counter()
        loop.train_and_evaluate(config, workdir / level)
        return level, time.perf_counter() - start

    # at once only on a CPU with in-memory data and no distillation: an accelerator's memory
    # holds one training at a time, CelebA's readers (tfds, zip files) are not shared between
    # trainings, and a student waits for its teacher (map_concurrently itself runs one at a
    # time on several hosts)
    alone = (jax.default_backend() != "cpu"
             or any(configs[lv].data.name not in IN_MEMORY
                    or configs[lv].get("distill", {}).get("teacher_workdir", "") for lv in todo))
    jobs = [*(todo if alone else todo[::-1]), *([also] if also is not None else [])]
    done = parallel.map_concurrently(lambda j: train(j) if isinstance(j, str) else j(), jobs,
                                     1 if alone else None, first_alone=False)
    seconds = dict(r for j, r in zip(jobs, done) if isinstance(j, str))
    return {level: seconds[level] for level in todo}


def analyse(sample_config: ml_collections.ConfigDict, workdir: Path, out: Path,
            recompute: bool = False) -> dict:
    """Run the analysis stages in order on one loaded ladder (so they share its compiled
    solvers); returns seconds per stage (``prepare``: loading and measuring the ladder)."""
    start = time.perf_counter()
    ctx = common.prepare(sample_config, workdir, out, recompute)
    seconds = {"prepare": time.perf_counter() - start}
    for name, stage in STAGES.items():
        print(f"[analysis] {name} -> {out}", flush=True)
        start = time.perf_counter()
        stage(ctx)
        seconds[name] = time.perf_counter() - start
    return seconds


def run(sample_config: ml_collections.ConfigDict, workdir: str | Path, out: str | Path, *,
        train_configs: Mapping[str, ml_collections.ConfigDict] | None = None,
        recompute: bool = False) -> dict:
    """Train the ladder, analyse it, and write the headline numbers into ``out/summary.json``.

    ``train_configs`` (``{level dir: config}``) defaults to ``level_configs(sample_config)``.
    """
    start = time.perf_counter()
    workdir, out = Path(workdir), Path(out)
    quality.check_files(sample_config)  # before hours of training, not after
    configs = level_configs(sample_config) if train_configs is None else train_configs
    train_seconds = train_ladder(configs, workdir,
                                 also=lambda: quality.prepare_features(sample_config, workdir))
    stage_seconds = analyse(sample_config, workdir, out, recompute)
    summary = json.loads((out / common.SUMMARY).read_text())
    missing = [key for key in HEADLINE if key not in summary]
    if missing:
        raise RuntimeError(f"the analysis stages did not produce {missing} in {out}")
    return common.merge_summary(out, timing(summary, time.perf_counter() - start,
                                            train_seconds, stage_seconds))


def timing(summary: Mapping, seconds: float, train_seconds: dict, stage_seconds: dict) -> dict:
    """Timing fields of a run. ``total_wall_seconds`` belongs to the run that computed the
    results: a run that trained nothing and whose cost-error sweep had nothing left to do
    keeps it and records its own time as ``last_run_wall_seconds`` (and a run that only
    finished the stages after a sweep computed by an interrupted run records no total)."""
    computed = (bool(train_seconds)
                or summary.get("cost_error_runs_computed_last_call", 0) > 0)
    record = {"last_run_wall_seconds": seconds, "last_run_train_seconds": train_seconds,
              "last_run_stage_seconds": stage_seconds}
    if computed:
        record.update({"total_wall_seconds": seconds, "train_seconds": train_seconds,
                       "stage_seconds": stage_seconds})
    return record


# ... and, when config.analysis.quality names features, sample quality (docs/quality.md)
QUALITY_HEADLINE = ("top_level_kid", "kid_best_minus_em_at_operating_cost")


def headline(summary: Mapping) -> str:
    """The promised summary numbers (with KID when measured) and the total wall time, as
    indented JSON."""
    quality = tuple(k for k in QUALITY_HEADLINE if k in summary)
    return json.dumps({k: summary.get(k) for k in (*HEADLINE, *quality, "total_wall_seconds")},
                      indent=1)


def set_field(config: ml_collections.ConfigDict, dotted: str, value: object) -> None:
    """``config.a.b = value`` for ``dotted = 'a.b'``; an unknown field is an error."""
    *parents, leaf = dotted.split(".")
    for name in parents:
        config = config[name]
    if leaf not in config:
        raise ValueError(f"override {dotted}: no such config field")
    config[leaf] = value
