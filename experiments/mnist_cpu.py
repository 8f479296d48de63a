"""``make demo``: the whole pipeline on the embedded MNIST-5k data, sized for a 2-core CPU.

    python -m experiments.mnist_cpu [--workdir runs/mnist] [--out results/mnist_cpu] [--recompute]
        [--config configs/mnist_sample.py] [--config.analysis.realisations=4 ...]

Trains ``configs/mnist.py:1`` … ``:4`` (each resumable in ``WORKDIR/levelK``), then runs
``analysis.fit_gamma``, ``analysis.variance``, ``analysis.cost_error`` and
``analysis.figures`` with ``configs/mnist_sample.py``. A second run reuses finished stages.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from analysis import cli
from experiments import pipeline
from mlem import cli as mlem_cli

SAMPLE_CONFIG = "configs/mnist_sample.py"


def define_flags(argv: list[str]) -> None:
    """``--config`` (default ``configs/mnist_sample.py``, ``--config.a.b=x`` overrides),
    ``--workdir``, ``--out``, ``--recompute``, ``--allow_older_checkpoints``."""
    cli.define_results_flags(
        argv, config_help=f"sample/analysis config (default {SAMPLE_CONFIG}); override "
        "fields with --config.a.b=value, e.g. --config.analysis.realisations=4",
        workdir="runs/mnist", out="results/mnist_cpu")


def parse_flags(argv: Sequence[str]) -> list[str]:
    return cli.parse(cli.with_default_config(argv, SAMPLE_CONFIG), define_flags)


def run(argv: Sequence[str]) -> dict:
    """Run the pipeline with the parsed flags (``argv``: the positional arguments, none)."""
    cli.start(argv)
    f = flags.FLAGS
    f.config.allow_older_checkpoints = f.allow_older_checkpoints
    try:
        summary = pipeline.run(f.config, f.workdir, f.out, recompute=f.recompute)
    except (ValueError, FileNotFoundError) as err:
        mlem_cli.fail(err)
    print(pipeline.headline(summary))
    return summary


def _app_main(argv: Sequence[str]) -> None:
    run(argv)


if __name__ == "__main__":
    app.run(_app_main, flags_parser=parse_flags)
