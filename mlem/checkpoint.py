"""Checkpoints of a training run and loading trained ladder levels.

A workdir holds ``config.json`` (the run's config) and ``checkpoints/<step>/`` written by an
async orbax :class:`~orbax.checkpoint.CheckpointManager` that keeps the newest
``keep_checkpoints`` steps. A checkpoint that cannot be restored (corrupt or partial files)
is skipped with a warning in favour of the previous one; during training it is moved to
``corrupt_checkpoints/<step>/`` (kept for inspection, never deleted) so that the step can be
written again.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from mlem import parallel

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"

# Config fields that define what a run learns: a workdir holding another value is refused.
# (The compute dtype, dataset location and all training knobs may change on resume.)
IDENTITY_FIELDS = ("model.level", "model.dropout", "data.name", "data.image_size",
                   "data.num_channels")

log = logging.getLogger(__name__)


class WorkdirMismatchError(ValueError):
    """The workdir holds a run of another model or dataset."""


class CheckpointNotFoundError(FileNotFoundError):
    """No restorable checkpoint in a workdir that must have one."""


# --- config.json --------------------------------------------------------------------------

def _lookup(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config.get(part) if hasattr(config, "get") else None
    return config


def check_workdir(workdir: str | Path, config: ml_collections.ConfigDict) -> None:
    """Raise :class:`WorkdirMismatchError` if ``workdir/config.json`` names another model/data."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    for field in IDENTITY_FIELDS:
        old, new = _lookup(saved, field), _lookup(config, field)
        if old != new:
            raise WorkdirMismatchError(
                f"workdir {workdir} holds a run with {field}={old!r}, but the config has "
                f"{field}={new!r}; use another --workdir")


def save_config(workdir: str | Path, config: ml_collections.ConfigDict) -> None:
    """Write ``workdir/config.json`` (the latest config of the run) from process 0."""
    if jax.process_index() != 0:
        return
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2) + "\n")


def load_config(workdir: str | Path) -> ml_collections.ConfigDict:
    """The config saved in ``workdir/config.json``."""
    path = Path(workdir) / CONFIG_FILE
    if not path.exists():
        raise CheckpointNotFoundError(
            f"{path} does not exist: {workdir} is not a training workdir; train it with "
            f"python -m train --config ... --workdir {workdir}")
    return ml_collections.ConfigDict(json.loads(path.read_text()))


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
                   quarantine: bool = False) -> tuple[int, Any] | None:
    """Restore the newest restorable step as ``(step, state)``; ``None`` if there is none.

    ``target`` is a pytree of arrays or ``jax.ShapeDtypeStruct`` (shapes, dtypes and
    shardings of the result); without it the saved tree comes back as nested dicts of arrays
    replicated over the current devices (whatever devices it was saved from). A step
    whose files are corrupt or missing is skipped with a warning and, with ``quarantine``,
    moved to ``<workdir>/corrupt_checkpoints/<step>``. If steps exist but none restores,
    raises :class:`CheckpointNotFoundError`.
    """
    steps = sorted(manager.all_steps(), reverse=True)
    for step in steps:
        try:
            abstract = _abstract(target) if target is not None else _saved_abstract(manager, step)
            return step, manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax/tensorstore raise many types for damaged files
            reason = " ".join(str(err).split())[:300]
            log.warning("checkpoint step %d in %s cannot be restored (%s: %s); falling back "
                        "to the previous one", step, manager.directory, type(err).__name__,
                        reason)
            if quarantine:
                _move_aside(manager, step)
    if steps:
        raise CheckpointNotFoundError(
            f"none of the checkpoints {sorted(steps)} in {manager.directory} can be restored; "
            f"inspect or move them away, or use another --workdir")
    return None


def _abstract(target: Any) -> Any:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, target)


def _saved_abstract(manager: ocp.CheckpointManager, step: int) -> Any:
    """The saved tree's shapes and dtypes, replicated over the current devices."""
    sharding = parallel.replicated(parallel.make_mesh())
    return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
                        manager.item_metadata(step).tree)


def _move_aside(manager: ocp.CheckpointManager, step: int) -> None:
    src = Path(manager.directory) / str(step)
    dst = Path(manager.directory).parent / CORRUPT_DIR / str(step)
    if jax.process_index() == 0:
        if dst.exists():
            dst = dst.with_name(f"{step}.{len(list(dst.parent.iterdir()))}")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(src), str(dst))
        log.warning("moved the unreadable checkpoint to %s", dst)
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"mlem_move_aside_{step}")
    manager.reload()


# --- loading a trained level --------------------------------------------------------------

def load_level(workdir: str | Path) -> tuple[ml_collections.ConfigDict, Any, int]:
    """``(config, ema_params, step)`` of the newest restorable checkpoint in ``workdir``.

    The EMA parameters are the ones sampling uses; build the network with
    ``mlem.training.build_model(config)``.
    """
    config = load_config(workdir)
    if not (Path(workdir) / CHECKPOINT_DIR).is_dir():
        raise CheckpointNotFoundError(f"no checkpoint in {workdir}: train it first with "
                                      f"python -m train --config ... --workdir {workdir}")
    manager = make_manager(workdir, keep=None)
    try:
        restored = restore_latest(manager)
    finally:
        manager.close()
    if restored is None:
        raise CheckpointNotFoundError(f"no checkpoint in {workdir}: train it first with "
                                      f"python -m train --config ... --workdir {workdir}")
    return config, restored[1]["ema_params"], int(restored[0])
