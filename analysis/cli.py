"""The command line of the analysis stages and of the experiment pipelines (absl + config_flags).

    python -m analysis.<stage> --config C --workdir W --out DIR [--recompute] [--config.a.b=x]
    python -m experiments.mnist_cpu [--config C] [--workdir W] [--out DIR] [--config.a.b=x]

Every entry point that takes a sample/analysis config shares the flags of
:func:`define_results_flags`. Flags are defined when a command line is parsed
(:func:`parse`, once per process, by ``python -m ...``), not when a module is imported, so
importing several entry points (the tests call their library functions) never defines a
flag twice. Bad input ends in one ``error:`` line (:func:`mlem.cli.parse_flags`,
:func:`mlem.cli.fail`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from analysis.common import jsonable
from mlem import cli as mlem_cli

FLAGS = flags.FLAGS


def parse(argv: Sequence[str], define: Callable[[list[str]], None]) -> list[str]:
    """Define an entry point's flags with ``define(argv)`` and parse ``argv`` (absl's
    ``flags_parser``: once per process; ``argv`` starts with the program name). Returns the
    positional arguments (program name first); bad input exits with one ``error:`` line."""
    argv = list(argv)
    before = set(FLAGS)
    define(argv)
    for name in set(FLAGS) - before:  # listed by --help of `python -m ...`
        FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
    return mlem_cli.parse_flags(argv)


def with_default_config(argv: Sequence[str], config: str) -> list[str]:
    """``argv`` with ``--config=config`` inserted after the program name if it has none, so
    that ``--config.a.b=x`` overrides of the default config are checked while parsing."""
    argv = list(argv)
    if not any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
        argv.insert(1, f"--config={config}")
    return argv


def define_results_flags(argv: Sequence[str], *, config_help: str, workdir: str | None = None,
                         out: str | None = None) -> None:
    """``--config`` (with ``--config.a.b=x`` overrides), ``--workdir``, ``--out``,
    ``--recompute`` and ``--allow_older_checkpoints``; those without a default are required."""
    config_flags.DEFINE_config_file("config", None, config_help, sys_argv=list(argv))
    flags.DEFINE_string("workdir", workdir, "root holding one training workdir per "
                        "config.levels (WORKDIR/levelK)")
    flags.DEFINE_string("out", out, "results directory: summary.json, manifest.json, one "
                        "subdirectory per stage")
    flags.DEFINE_bool("recompute", False, "recompute the analysis stage(s) instead of reusing "
                      "results on disk (and take over a results directory made by another "
                      "config)")
    flags.DEFINE_bool("allow_older_checkpoints", False, "use the newest readable checkpoint of "
                      "a level whose newest one is unreadable (recorded in the manifest)")
    flags.mark_flags_as_required(["config"] + [name for name, default in
                                               (("workdir", workdir), ("out", out))
                                               if default is None])


def start(argv: Sequence[str]) -> None:
    """After parsing: no positional arguments; the checkpoint library kept quiet unless
    ``--verbosity`` is given (then its tracebacks and INFO logs show)."""
    if len(argv) > 1:
        mlem_cli.fail(f"unexpected arguments {list(argv[1:])}; config overrides look like "
                      f"--config.a.b=value")
    verbose = FLAGS["verbosity"].present
    mlem_cli.quiet_background_errors(verbose=verbose)
    if not verbose:
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO


def stage_main(run: Callable[[Any, Path, Path, bool], Mapping]) -> None:
    """``python -m analysis.<stage> --config C --workdir W --out DIR [--recompute]``: parse,
    ``run(config, workdir, out, recompute)`` and print its summary as JSON.

    Bad input (``ValueError``, ``FileNotFoundError``) ends with a one-line error, exit 1.
    """
    def define(argv: list[str]) -> None:
        define_results_flags(argv, config_help="sample/analysis config, e.g. "
                             "configs/mnist_sample.py (fields may be overridden: "
                             "--config.analysis.seeds=2)")

    def main(argv: Sequence[str]) -> None:
        start(argv)
        if FLAGS.allow_older_checkpoints:
            FLAGS.config.allow_older_checkpoints = True
        try:
            summary = run(FLAGS.config, Path(FLAGS.workdir), Path(FLAGS.out), FLAGS.recompute)
        except (ValueError, FileNotFoundError) as err:
            mlem_cli.fail(f"{type(err).__name__}: {err}")
        print(json.dumps(jsonable(dict(summary)), indent=1, sort_keys=True))

    app.run(main, flags_parser=lambda argv: parse(argv, define))
