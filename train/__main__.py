"""Train one ladder level.

    python -m train --config configs/mnist_level1.py --workdir runs/mnist/level1 \\
        [--config.training.num_steps=2000 ...]

Flags → :func:`mlem.train.loop.train_and_evaluate`. Bad input (unknown config key, missing
dataset, image size the model cannot take, workdir of another config, batch size not
divisible by the device count, a non-positive step count, rate, batch size or interval,
NaN loss, no restorable checkpoint) prints one
``error: ...`` line and exits with status 1; ``--verbosity=1`` also logs the traceback.
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mlem import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py); override fields with --config.a.b=value.")
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints/, config.json, metrics.jsonl, samples/.")
_RESTART = flags.DEFINE_bool(
    "restart", False, "Train from step 0 in a workdir whose checkpoints are all unreadable; "
    "its metrics, unreadable checkpoints and sample grids move to previous_runs/<n>/.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments {argv[1:]}; config overrides look like --config.a.b=value")
    cli.quiet_background_errors(verbose=flags.FLAGS["verbosity"].present)
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
    from mlem import data, parallel  # after flag parsing: a bad flag fails fast

    parallel.maybe_initialize_distributed()
    from mlem.train import loop

    try:
        metrics = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value, _RESTART.value)
    except (ValueError, OSError, FloatingPointError, data.DatasetNotFoundError) as err:
        cli.fail(err)
    except KeyboardInterrupt:
        print(f"interrupted; finished checkpoints are kept in {_WORKDIR.value}/checkpoints: "
              f"rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    print(json.dumps(metrics))


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
