"""Checkpoints of a training run and loading trained ladder levels.

A workdir holds:

* ``config.json``: the record of the weights, written once when the run starts (after
  validation). A later call whose model, data, SDE or distillation (teacher) fields differ is
  refused
  (:func:`check_workdir`); the fields that may change on a resume (training, optimiser,
  evaluation and logging knobs, the dataset's location, the compute dtype) are appended to
  ``config_history.jsonl`` instead (:func:`record_config`).
* ``checkpoints/<step>/``: written by an async orbax :class:`~orbax.checkpoint.CheckpointManager`
  that keeps the newest ``keep_checkpoints`` steps.
* ``corrupt_checkpoints/<step>/``: checkpoints that training found unreadable, moved aside
  (never deleted) so that the step can be written again.
* ``previous_runs/<n>/``: what ``python -m train --restart`` set aside (metrics, unreadable
  checkpoints, sample grids) before training from step 0 again.

Loading a trained level (:func:`load_level`) is exact: it restores the newest checkpoint or
raises :class:`UnreadableCheckpointError`; ``allow_older=True`` falls back to the newest
readable step, which the caller records.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mlem import cli, parallel
from mlem.files import read_json

__all__ = ["ABSENT_MEANS", "CHECKPOINT_DIR", "CONFIG_FILE", "CONFIG_HISTORY", "CORRUPT_DIR",
           "PREVIOUS_DIR", "RECORD_SECTIONS", "RESUMABLE_FIELDS", "CheckpointNotFoundError",
           "UnreadableCheckpointError", "WorkdirMismatchError", "check_workdir", "flatten",
           "load_level", "load_record", "make_manager", "quarantined_steps", "record_config",
           "restore_latest", "save", "set_aside_for_restart"]

CONFIG_FILE = "config.json"
CONFIG_HISTORY = "config_history.jsonl"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"
PREVIOUS_DIR = "previous_runs"

# Sections of config.json that define the weights: a call with other values is refused.
RECORD_SECTIONS = ("model", "data", "sde", "distill")
# ... except these, which say how the same thing is computed or where the same data lives.
RESUMABLE_FIELDS = ("model.dtype", "data.source", "data.data_dir", "data.local_path")
# What a record written before a field existed means by its absence (no distillation).
ABSENT_MEANS = {"distill.teacher_workdir": "", "distill.weight": 0.0,
                "distill.teacher_step": None, "distill.teacher_param_sha256": None}

log = logging.getLogger(__name__)


class WorkdirMismatchError(ValueError):
    """The workdir holds a run of another model, dataset or SDE."""


class CheckpointNotFoundError(FileNotFoundError):
    """No restorable checkpoint in a workdir that must have one."""


class UnreadableCheckpointError(CheckpointNotFoundError):
    """The newest checkpoint exists but cannot be restored (and no fallback was allowed)."""


# --- config.json: the record of the weights ----------------------------------------------

def flatten(record: Any, prefix: str = "") -> dict[str, Any]:
    """``{'a.b': value}`` for a nested dict / ConfigDict (JSON values: tuples become lists)."""
    if isinstance(record, ml_collections.ConfigDict):
        record = json.loads(record.to_json_best_effort())
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_workdir(workdir: str | Path, config: ml_collections.ConfigDict) -> None:
    """Raise :class:`WorkdirMismatchError` listing every model/data/SDE field of ``config``
    that differs from the record ``workdir/config.json`` (nothing is written)."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return
    saved, new = _with_absent(flatten(read_json(path, "config record"))), flatten(config)
    fields = sorted(f for f in set(saved) | set(new)
                    if f.split(".")[0] in RECORD_SECTIONS and f not in RESUMABLE_FIELDS
                    and saved.get(f) != new.get(f))
    if fields:
        listing = ", ".join(f"{f}={saved.get(f)!r} (config: {new.get(f)!r})" for f in fields)
        raise WorkdirMismatchError(
            f"workdir {workdir} holds weights trained with {listing}; these fields define the "
            f"weights and cannot change on a resume: use another --workdir")


def _with_absent(record: dict[str, Any]) -> dict[str, Any]:
    """A flattened record with :data:`ABSENT_MEANS` filled in where it lacks them."""
    return {**ABSENT_MEANS, **record}


def record_config(workdir: str | Path, config: ml_collections.ConfigDict, step: int) -> None:
    """Write ``config.json`` if the run is new; otherwise append the fields that changed
    since the last call (``{"time", "step", "changes": {field: value}}``) to
    ``config_history.jsonl``. Process 0 only; call after validation."""
    if jax.process_index() != 0:
        return
    workdir = Path(workdir)
    path, history = workdir / CONFIG_FILE, workdir / CONFIG_HISTORY
    if not path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(config.to_json_best_effort(indent=2) + "\n")
        return
    current = _with_absent(flatten(read_json(path, "config record")))
    if history.exists():
        for line in filter(None, history.read_text().splitlines()):
            current.update(json.loads(line)["changes"])
    new = flatten(config)
    changes = {f: new.get(f) for f in sorted(set(current) | set(new))
               if current.get(f) != new.get(f)}
    if changes:
        entry = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "step": step, "changes": changes}
        with history.open("a") as f:
            f.write(json.dumps(entry) + "\n")


def load_record(workdir: str | Path) -> ml_collections.ConfigDict:
    """The record ``workdir/config.json`` (what the weights were trained as)."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointNotFoundError(
            f"{path} does not exist: {workdir} is not a training workdir; train it with "
            f"python -m train --config ... --workdir {workdir}")
    return ml_collections.ConfigDict(read_json(path, "config record"))


# --- the checkpoint manager ---------------------------------------------------------------

def make_manager(workdir: str | Path, keep: int | None) -> ocp.CheckpointManager:
    """An async orbax manager over ``workdir/checkpoints`` keeping the newest ``keep`` steps.

    ``keep=None``: for reading only; it neither creates the directory nor deletes steps.
    """
    if keep is not None and keep < 1:
        raise ValueError(f"training.keep_checkpoints: must be >= 1, got {keep}")
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=keep is not None)
    directory = (Path(workdir) / CHECKPOINT_DIR).absolute()
    return ocp.CheckpointManager(directory, options=options,
                                 item_handlers=ocp.StandardCheckpointHandler())


def save(manager: ocp.CheckpointManager, step: int, state: Any) -> None:
    """Start an async save of ``state`` (a pytree of arrays) at ``step``."""
    manager.save(step, args=ocp.args.StandardSave(state))


def restore_latest(manager: ocp.CheckpointManager, target: Any | None = None, *,
                   quarantine: bool = False, allow_older: bool = True
                   ) -> tuple[int, Any] | None:
    """Restore the newest restorable step as ``(step, state)``; ``None`` if there is none.

    ``target`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` (shapes, dtypes and
    shardings of the result); without it the saved tree comes back as nested dicts of arrays
    replicated over the current devices (whatever devices it was saved from).

    A step whose files are corrupt or missing raises :class:`UnreadableCheckpointError`
    unless ``allow_older``, which falls back to the previous step with one warning; with
    ``quarantine`` the unreadable step is moved to ``<workdir>/corrupt_checkpoints/<step>``.
    If steps exist but none restores, raises :class:`CheckpointNotFoundError`. The messages
    quote the library's error in one line (:func:`mlem.cli.quote`; the whole chain is the
    exception's cause), and a failed attempt leaves no read running
    (:func:`_finishing_event_loops`).
    """
    steps = sorted(manager.all_steps(), reverse=True)
    newest_reason = ""
    for older, step in zip([*steps[1:], None], steps):
        try:
            with _finishing_event_loops():
                abstract = (_abstract(target) if target is not None
                            else _saved_abstract(manager, step))
                return step, manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax/tensorstore raise many types for damaged files
            reason = cli.quote(err)
            newest_reason = newest_reason or f"step {step}: {reason}"
            where = Path(manager.directory) / str(step)
            if not allow_older:
                raise UnreadableCheckpointError(
                    f"the newest checkpoint, step {step} ({where}), cannot be restored "
                    f"({reason}); rerun its python -m train command (it moves the file aside "
                    f"and recomputes the step), or pass --allow_older_checkpoints to use the "
                    f"newest readable older step (the step used is recorded)") from err
            moved = f"; moved it to {_move_aside(manager, step)}" if quarantine else ""
            if older is not None:  # (after the oldest, the error below says it all)
                log.warning("checkpoint step %d in %s cannot be restored (%s)%s; falling back "
                            "to step %d", step, manager.directory, reason, moved, older)
    if steps:
        workdir = Path(manager.directory).parent
        fix = (f"they were moved to {workdir / CORRUPT_DIR}; rerun with --restart to train "
               f"from step 0 (the earlier history is kept in {workdir / PREVIOUS_DIR})"
               if quarantine else "retrain the level")
        raise CheckpointNotFoundError(
            f"none of the checkpoints {sorted(steps)} in {manager.directory} can be restored "
            f"({newest_reason}); {fix}, or use another --workdir")
    return None


# --- restoring without leftovers ----------------------------------------------------------

_FINISH_SECONDS = 60.0  # for the reads a failed restore left running; then they are cancelled


@contextlib.contextmanager
def _finishing_event_loops() -> Iterator[None]:
    """Inside, every new asyncio event loop finishes its pending tasks before it closes.

    orbax runs a restore as ``loop.run_until_complete(<gather of one read per array>)`` on a
    new loop and then closes it (``orbax.checkpoint._src.asyncio_utils``). When one read of
    a damaged checkpoint fails, the gather raises at once and the loop is closed with the
    other reads still pending (hundreds): their tensorstore futures call back into the closed
    loop (``RuntimeError: Event loop is closed``), and their suspended coroutines are
    finalised when garbage collected, at exit at the latest, where orbax's ``except
    BaseException: raise Exception(<TensorStore repr>)`` turns each ``GeneratorExit`` into a
    many-line traceback. Finished before the loop closes, they leave nothing behind.
    """
    previous = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(_FinishingPolicy())
    try:
        yield
    finally:
        asyncio.set_event_loop_policy(previous)


class _FinishingLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``close()`` first runs the tasks still pending on it to the end."""

    def close(self) -> None:
        if not (self.is_closed() or self.is_running()):
            while pending := asyncio.all_tasks(self):
                self.run_until_complete(_finish(pending))
            self.run_until_complete(self.shutdown_asyncgens())
        super().close()


class _FinishingPolicy(asyncio.DefaultEventLoopPolicy):
    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        return _FinishingLoop()


async def _finish(tasks: set[asyncio.Task]) -> None:
    """Wait for ``tasks`` (cancelling those still running after ``_FINISH_SECONDS``) and
    retrieve their exceptions, so that none is logged as never retrieved."""
    _, late = await asyncio.wait(tasks, timeout=_FINISH_SECONDS)
    for task in late:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def _abstract(target: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, target)


def _saved_abstract(manager: ocp.CheckpointManager, step: int) -> Any:
    """The saved tree's shapes and dtypes, replicated over the current devices."""
    sharding = parallel.replicated(parallel.make_mesh())
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                        manager.item_metadata(step).tree)


def _move_aside(manager: ocp.CheckpointManager, step: int) -> Path:
    src = Path(manager.directory) / str(step)
    dst = Path(manager.directory).parent / CORRUPT_DIR / str(step)
    if jax.process_index() == 0:
        if dst.exists():
            dst = dst.with_name(f"{step}.{len(list(dst.parent.iterdir()))}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"mlem_move_aside_{step}")
    manager.reload()
    return dst


def quarantined_steps(workdir: str | Path) -> list[int]:
    """Steps of the unreadable checkpoints in ``workdir/corrupt_checkpoints`` (sorted)."""
    folder = Path(workdir) / CORRUPT_DIR
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split(".")[0]) for p in folder.iterdir()
                  if p.name.split(".")[0].isdigit())


def set_aside_for_restart(workdir: str | Path, names: tuple[str, ...]) -> Path:
    """Move ``workdir/<name>`` for each existing name into a new ``previous_runs/<n>/``."""
    workdir = Path(workdir)
    parent = workdir / PREVIOUS_DIR
    dst = parent / str(len(list(parent.iterdir())) + 1 if parent.is_dir() else 1)
    if jax.process_index() == 0:
        dst.mkdir(parents=True)
        for name in names:
            if (workdir / name).exists():
                shutil.move(str(workdir / name), str(dst / name))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("mlem_restart")
    return dst


# --- loading a trained level --------------------------------------------------------------

def load_level(workdir: str | Path, allow_older: bool = False
               ) -> tuple[ml_collections.ConfigDict, Any, int]:
    """``(config, ema_params, step)`` of the newest checkpoint in ``workdir``.

    Raises :class:`UnreadableCheckpointError` if the newest checkpoint cannot be restored,
    unless ``allow_older`` (then the newest readable step is used and returned). The EMA
    parameters are the ones sampling uses; build the network with
    ``mlem.train.objective.build_model(config)``.
    """
    config = load_record(workdir)
    missing = CheckpointNotFoundError(f"no checkpoint in {workdir}: train it first with "
                                      f"python -m train --config ... --workdir {workdir}")
    if not (Path(workdir) / CHECKPOINT_DIR).is_dir():
        raise missing
    manager = make_manager(workdir, keep=None)
    try:
        restored = restore_latest(manager, allow_older=allow_older)
    finally:
        manager.close()
    if restored is None:
        raise missing
    return config, restored[1]["ema_params"], int(restored[0])
