"""Shared pieces of the command-line entry points: bad input ends in one ``error:`` line."""

from __future__ import annotations

import sys

from absl import flags


def fail(message: object) -> None:
    """Print ``error: <message>`` on one line to stderr and exit with status 1."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)
    sys.exit(1)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns a bad flag or ``--config.a.b`` override into one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        fail(err)
    except (AttributeError, KeyError) as err:  # config_flags: unknown --config.a.b key
        while err.args and isinstance(err.args[0], BaseException):
            err = err.args[0]  # config_flags wraps the KeyError in an AttributeError
        key, _, hint = str(err.args[0] if err.args else err).partition("\n")
        overrides = " ".join(a for a in argv if a.startswith("--config."))
        fail(f"unknown config key {key} in {overrides}" + (f" ({hint})" if hint else ""))
