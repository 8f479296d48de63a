"""``make demo``: the whole pipeline on the embedded MNIST-5k data, sized for a 2-core CPU.

    python -m experiments.mnist_cpu [--workdir runs/mnist] [--out results/mnist_cpu] [--recompute]

Trains ``configs/mnist_level{1..4}.py`` (each resumable in ``WORKDIR/levelK``), then runs
``analysis.fit_gamma``, ``analysis.variance``, ``analysis.cost_error`` and
``analysis.figures`` with ``configs/mnist_sample.py``. A second run reuses finished stages.
"""

from __future__ import annotations

import argparse

from experiments import pipeline
from mlem import cli
from mlem.config_files import load_config


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/mnist_sample.py")
    parser.add_argument("--workdir", default="runs/mnist")
    parser.add_argument("--out", default="results/mnist_cpu")
    parser.add_argument("--verbosity", type=int, default=0,
                        help=">= 1: full tracebacks of the checkpoint library")
    parser.add_argument("--allow_older_checkpoints", action="store_true",
                        help="use the newest readable checkpoint of a level whose newest one "
                        "is unreadable (recorded in the manifest)")
    parser.add_argument("--recompute", action="store_true",
                        help="recompute the analysis stages instead of reusing them")
    args = parser.parse_args(argv)
    cli.quiet_background_errors(verbose=args.verbosity >= 1)
    try:
        config = load_config(args.config)
        config.allow_older_checkpoints = args.allow_older_checkpoints
        summary = pipeline.run(config, args.workdir, args.out, recompute=args.recompute)
    except (ValueError, FileNotFoundError) as err:
        cli.fail(err)
    print(pipeline.headline(summary))
    return summary


if __name__ == "__main__":
    main()
