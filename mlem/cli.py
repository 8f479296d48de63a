"""Shared pieces of the command-line entry points: bad input ends in one ``error:`` line.

:func:`fail` prints that line (with ``--verbosity=1``, after the traceback of the exception
being handled and its whole chain of causes); :func:`quote` is how the line quotes a library
exception: its type and first line.

The checkpoint library can be noisy when it fails. A failed restore leaves nothing behind
any more (:mod:`mlem.train.checkpoint` finishes the reads still in flight before orbax closes
their event loop; abandoned, they called back into the closed loop and were finalised at
exit, hundreds of tracebacks after the ``error:`` line). A failed async save (a full disk)
still has orbax log the same traceback three or four times, from its save threads and again
when the error reaches our code. :func:`quiet_background_errors` turns such noise into at
most one warning line plus one line per orbax log record, and :func:`fail` makes sure that
nothing of it is printed after the ``error:`` line.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from absl import flags
from absl import logging as absl_logging

__all__ = ["fail", "parse_flags", "quiet_background_errors", "quote"]

_LIBRARY_DIRS = tuple(f"{os.sep}{name}{os.sep}" for name in ("orbax", "tensorstore"))
_HINT = "--verbosity=1 shows the tracebacks"

# Orders a warning line before the error line; re-entrant because garbage collection can log
# (an abandoned asyncio task) in the middle of the print that holds it.
_lock = threading.RLock()
_state = {"installed": False, "quiet": False, "warned": False, "failed": False,
          "last_noise": 0.0}


def fail(message: object) -> None:
    """Print ``error: <message>`` on one line to stderr and exit with status 1.

    Called while an exception is handled, ``--verbosity=1`` (absl verbosity >= 1) logs its
    traceback first, with every cause and context.

    Noise from the checkpoint library's background threads that would arrive after this
    line (closed-loop tracebacks, orbax and asyncio log records, whatever ``--verbosity``)
    is dropped, so the error line stays the last one (a safety net: a failed restore leaves
    nothing running, see the module docstring). That is done with the hooks of
    :func:`quiet_background_errors` rather than by closing stderr or ``os._exit``: any other
    problem at interpreter exit still prints, and exit handlers still run. Callbacks that
    would only arrive while the interpreter shuts down (when the hooks are gone) are waited
    for first: garbage is collected and the line is printed once no library noise has come
    for ``_SETTLE`` seconds (at most ``_DRAIN`` seconds).
    """
    if sys.exc_info()[1] is not None:
        absl_logging.debug("the traceback of the error below:", exc_info=True)
    _install_hooks()
    _drain()
    sys.stdout.flush()
    with _lock:
        print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
        _state["failed"] = True
    sys.exit(1)


_SETTLE, _DRAIN = 0.3, 3.0  # seconds: see fail()


def _drain() -> None:
    """Let in-flight checkpoint-library callbacks arrive (and meet the hooks) before exiting."""
    start = time.monotonic()
    gc.collect()  # abandoned asyncio tasks report now, not during shutdown
    while time.monotonic() - start < _DRAIN:
        if time.monotonic() - max(_state["last_noise"], start) >= _SETTLE:
            return
        time.sleep(0.05)
        gc.collect()


def quiet_background_errors(verbose: bool) -> None:
    """Reduce the checkpoint library's background tracebacks to single lines (CLI start-up).

    Unless ``verbose`` (``--verbosity`` given), from now on: the ``Event loop is closed``
    errors that tensorstore threads report through ``sys.unraisablehook`` and the asyncio
    "Task exception was never retrieved" records become one warning line in all; log
    records of orbax/tensorstore code lose their traceback (the first line of their message
    stays, with the exception's type); an exception escaping a thread inside orbax or
    tensorstore is one line. Everything else (our own code and its threads, other
    libraries) is untouched. With ``verbose`` this changes nothing. The CLIs call it as
    ``quiet_background_errors(verbose=flags.FLAGS["verbosity"].present)``.
    """
    if verbose:
        return
    _state["quiet"] = True
    _install_hooks()


# --- the hooks ----------------------------------------------------------------------------

def _warn_once(what: str) -> None:
    """Print one warning line for the first background error; later ones are dropped."""
    with _lock:
        if _state["warned"] or _state["failed"]:
            return
        _state["warned"] = True
        print(f"warning: ignoring {what} from the checkpoint library's background threads "
              f"({_HINT})", file=sys.stderr, flush=True)


def _from_library(tb: TracebackType | None) -> bool:
    """Whether a traceback passes through orbax or tensorstore code."""
    return any(any(d in frame.f_code.co_filename for d in _LIBRARY_DIRS)
               for frame, _ in traceback.walk_tb(tb))


def quote(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of the exception at the root of ``exc``'s causes, in one line of
    at most ``limit`` characters: what an ``error:`` line quotes of a library failure.

    The root (following ``raise ... from``) is the library's own words: for a damaged
    checkpoint, tensorstore's ``ValueError`` naming the array and the byte range, not
    orbax's wrapper that embeds a many-line TensorStore repr. ``--verbosity=1`` shows the
    whole chain (:func:`fail`).
    """
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class _LibraryRecordFilter(logging.Filter):
    """Shortens (quiet) or drops (after :func:`fail`) records of the checkpoint library."""

    def filter(self, record: logging.LogRecord) -> bool:
        from_asyncio = record.name == "asyncio" or record.name.startswith("asyncio.")
        if not (from_asyncio or any(d in (record.pathname or "") for d in _LIBRARY_DIRS)):
            return True
        _state["last_noise"] = time.monotonic()
        if _state["failed"]:
            return False
        if not _state["quiet"] or not record.exc_info:
            return True
        if from_asyncio:  # tasks orbax abandoned when a read failed: same story as the loop
            _warn_once("unretrieved asyncio task errors")
            return False
        lines = record.getMessage().strip().splitlines() or [""]
        short = lines[0] if len(lines) == 1 and len(lines[0]) <= 200 else lines[0][:200] + "..."
        exc = record.exc_info[1] if isinstance(record.exc_info, tuple) else None
        kind = f"{type(exc).__name__}; " if exc is not None else ""
        record.msg, record.args = f"{short} ({kind}{_HINT})", None
        record.exc_info, record.exc_text = None, None
        return True


def _install_hooks() -> None:
    """Install the hooks once; what they do follows ``_state`` (quiet, failed)."""
    if _state["installed"]:
        return
    _state["installed"] = True
    record_filter = _LibraryRecordFilter()
    # orbax logs through absl's logger (imported above, so that it is absl's own class) and a
    # little through the root logger; asyncio through its own.
    for logger in (absl_logging.get_absl_logger(), logging.getLogger(),
                   logging.getLogger("asyncio")):
        logger.addFilter(record_filter)

    previous_unraisable: Callable[[sys.UnraisableHookArgs], object] = sys.unraisablehook

    def unraisable(info: sys.UnraisableHookArgs) -> None:
        closed_loop = (isinstance(info.exc_value, RuntimeError)
                       and str(info.exc_value) == "Event loop is closed")
        if closed_loop:
            _state["last_noise"] = time.monotonic()
        if closed_loop and (_state["quiet"] or _state["failed"]):
            _warn_once("'RuntimeError: Event loop is closed' errors")
            return
        with _lock:  # a traceback being printed ends before fail() prints its line
            if not (closed_loop and _state["failed"]):
                previous_unraisable(info)

    previous_thread: Callable[[threading.ExceptHookArgs], object] = threading.excepthook

    def thread_exception(args: threading.ExceptHookArgs) -> None:
        if not _from_library(args.exc_traceback):
            previous_thread(args)
            return
        with _lock:
            if _state["failed"]:
                return
            if not _state["quiet"]:
                previous_thread(args)
                return
            name = args.thread.name if args.thread else "?"
            what = quote(args.exc_value) if args.exc_value else args.exc_type.__name__
            print(f"warning: checkpoint library thread {name} failed: {what} ({_HINT})",
                  file=sys.stderr, flush=True)

    sys.unraisablehook = unraisable
    threading.excepthook = thread_exception


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that turns a bad flag, a missing ``--config`` file or a
    ``--config.a.b`` override of an unknown key into one line."""
    for i, arg in enumerate(argv):
        value = (argv[i + 1] if arg == "--config" and i + 1 < len(argv)
                 else arg.partition("=")[2] if arg.startswith("--config=") else None)
        if value is not None and not Path(value.split(":", 1)[0]).is_file():
            fail(f"--config: no such file {value.split(':', 1)[0]!r}; give a config file such "
                 f"as configs/mnist_level1.py (run from the repository root)")
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
