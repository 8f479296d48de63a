"""Distillation of a ladder level from a trained teacher level (a ladder built as control
variates, docs/training.md).

ML-EM is unbiased for the top level whatever the lower levels are; they matter only through
the increments ``V_k = E‖fᵏ − fᵏ⁻¹‖²``. A distilled level is trained to match the teacher's
``ε̂`` on the same forward-process sample:

    loss = (1 − w)·mean (ε̂ − ε)² + w·mean (ε̂ − sg[ε̂_teacher(x_t, t)])²

with the teacher's EMA parameters, deterministic (no dropout). The teacher is the newest
checkpoint of ``config.distill.teacher_workdir`` (relative to the parent of the student's
workdir, i.e. a sibling in the same ladder tree, or absolute), loaded exactly
(:func:`mlem.train.checkpoint.load_level`); its step and parameter digest are written into the
student's config (``distill.teacher_step``, ``distill.teacher_param_sha256``), so they land in
``config.json`` and a resume with another teacher is refused like any weight-defining field.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import flax.linen as nn
import ml_collections

from mlem.ladder import param_digest
from mlem.models import registry
from mlem.train import checkpoint

__all__ = ["RECORDED_FIELDS", "SHARED_FIELDS", "Teacher", "enabled", "load_teacher", "teacher_path",
           "validate", "with_record"]

# Filled in by training from the teacher's checkpoint; a config file leaves them unset.
RECORDED_FIELDS = ("teacher_step", "teacher_param_sha256")
# What the student and the teacher must share.
SHARED_FIELDS = ("data.name", "data.image_size", "data.num_channels", "sde.beta_min",
                 "sde.beta_max", "sde.t_min")


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A loaded teacher level: ``model.apply({'params': params}, x, t, train=False) → ε̂``."""

    workdir: Path
    model: nn.Module
    params: Any
    step: int
    digest: str


def enabled(config: ml_collections.ConfigDict) -> bool:
    """Whether ``config`` names a teacher (``distill.teacher_workdir`` non-empty)."""
    return bool(config.get("distill", {}).get("teacher_workdir", ""))


def validate(config: ml_collections.ConfigDict) -> None:
    """Raise ``ValueError`` for a distillation config that cannot make a run."""
    d = config.distill
    if not 0.0 <= d.weight <= 1.0:
        raise ValueError(f"distill.weight: must be in [0, 1], got {d.weight}")
    if d.weight > 0 and not d.teacher_workdir:
        raise ValueError(f"distill.weight={d.weight} needs a teacher: set "
                         f"--config.distill.teacher_workdir=...")
    for name in RECORDED_FIELDS:
        if d.get(name) is not None:
            raise ValueError(f"distill.{name}: recorded from the teacher's checkpoint, "
                             f"not set by a config (got {d.get(name)!r})")
    if enabled(config) and registry.gaussian_rank(config.model.level) is not None:
        raise ValueError(f"distill.teacher_workdir: the analytic level {config.model.level!r} "
                         f"is fitted, not trained; leave it empty")


def teacher_path(config: ml_collections.ConfigDict, workdir: str | Path) -> Path:
    """The teacher's workdir: ``distill.teacher_workdir`` if absolute, else relative to the
    parent of the student's ``workdir`` (its sibling in the ladder tree)."""
    path = Path(config.distill.teacher_workdir)
    return path if path.is_absolute() else Path(workdir).absolute().parent / path


def load_teacher(config: ml_collections.ConfigDict, workdir: str | Path) -> Teacher:
    """The newest checkpoint of the teacher of ``config`` (student in ``workdir``).

    Raises :class:`~mlem.train.checkpoint.CheckpointNotFoundError` if it has none (or its newest is
    unreadable) and ``ValueError`` if it was trained on other data, SDE or image shape.
    """
    path = teacher_path(config, workdir)
    if path.absolute() == Path(workdir).absolute():
        raise ValueError(f"distill.teacher_workdir: {path} is the student's own workdir")
    try:
        record, params, step = checkpoint.load_level(path)
    except checkpoint.CheckpointNotFoundError as err:
        raise type(err)(f"distill.teacher_workdir: {err}") from err
    theirs, ours = checkpoint.flatten(record), checkpoint.flatten(config)
    differ = [f"{f}={theirs.get(f)!r} (student: {ours.get(f)!r})" for f in SHARED_FIELDS
              if theirs.get(f) != ours.get(f)]
    if differ:
        raise ValueError(f"distill.teacher_workdir: the teacher {path} was trained with "
                         f"{', '.join(differ)}; a teacher must share the student's data, "
                         f"SDE and image shape")
    return Teacher(path, registry.get_level(record), params, step, param_digest(params))


def with_record(config: ml_collections.ConfigDict, teacher: Teacher
                ) -> ml_collections.ConfigDict:
    """A copy of ``config`` with the teacher's step and parameter digest recorded."""
    config = copy.deepcopy(config)
    config.distill.teacher_step = teacher.step
    config.distill.teacher_param_sha256 = teacher.digest
    return config

