"""Distillation (mlem/train/distill.py): a student of the teacher's architecture learns the
teacher's ε̂, w = 0 is the plain step bit for bit, the teacher is recorded and pinned, and a
missing or incompatible teacher fails with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import tiny
from mlem import parallel
from mlem.ladder import param_digest
from mlem.sde import VPSDE
from mlem.train import checkpoint, loop, objective

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
ROOT = Path(__file__).resolve().parents[1]


def config(**changes):
    """configs/tiny.py, no sample grids, with dotted ``changes`` (``a__b=value``)."""
    c = tiny.get_config()
    c.training.num_sample_images = 0
    for dotted, value in changes.items():
        *path, name = dotted.split("__")
        holder = c
        for part in path:
            holder = holder[part]
        holder[name] = value
    return c


@pytest.fixture(scope="module")
def ladder(tmp_path_factory) -> Path:
    """A tree with ``teacher/``: tiny level 1 trained 40 steps at a high rate (so its ε̂ is
    far from the zero output of an untrained network)."""
    root = tmp_path_factory.mktemp("distill")
    loop.train_and_evaluate(
        config(training__num_steps=40, training__eval_every=40, training__log_every=20,
               training__checkpoint_every=40, optim__learning_rate=3e-3, seed=7),
        root / "teacher")
    return root


def distilled(weight: float, **changes):
    return config(**{"distill__teacher_workdir": "teacher", "distill__weight": weight,
                     **changes})


def records(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow  # 37 s: the fast tier keeps the exactness and refusal checks
def test_student_of_the_teachers_architecture_learns_its_eps(ladder):
    """w = 1: the held-out gap E‖ε̂ − ε̂_teacher‖² falls every evaluation, ends far below both
    its start and the gap of a student trained on the denoising loss alone (w = 0, the same
    draws), and the run records the teacher's step and parameter digest."""
    steps = dict(training__num_steps=150, training__eval_every=50, training__log_every=50,
                 training__checkpoint_every=150, optim__learning_rate=3e-3)
    loop.train_and_evaluate(distilled(1.0, **steps), ladder / "student")
    loop.train_and_evaluate(distilled(0.0, **steps), ladder / "plain")
    gaps = [r["heldout_distill_gap"] for r in records(ladder / "student")
            if "heldout_distill_gap" in r]
    plain = [r["heldout_distill_gap"] for r in records(ladder / "plain")
             if "heldout_distill_gap" in r]
    assert len(gaps) == 3 and gaps[0] > gaps[1] > gaps[2], gaps
    assert gaps[2] < 0.5 * gaps[0] and gaps[2] < 0.1 * plain[2], (gaps, plain)
    train = [r for r in records(ladder / "student") if "train_distill_loss" in r]
    assert train[-1]["train_loss"] == pytest.approx(train[-1]["train_distill_loss"])
    _, teacher_params, teacher_step = checkpoint.load_level(ladder / "teacher")
    record = checkpoint.load_record(ladder / "student").distill
    assert (record.teacher_workdir, record.weight, record.teacher_step) == ("teacher", 1.0, 40)
    assert record.teacher_param_sha256 == param_digest(teacher_params)


def test_weight_zero_is_the_plain_training_step_exactly(ladder):
    """With a teacher and w = 0 one train step gives the plain step's parameters, EMA,
    optimiser state and loss bit for bit (the teacher changes nothing but the metrics)."""
    c = config()
    mesh = parallel.make_mesh()
    model, tx = objective.build_model(c), objective.make_optimizer(c.optim)
    state = objective.init_state(model, tx, jax.random.key(0), (8, 8, 3))
    x0 = jax.random.normal(jax.random.key(1), (8, 8, 8, 3))
    _, teacher_params, _ = checkpoint.load_level(ladder / "teacher")
    args = (model, tx, VPSDE(), 0.9, jax.random.key(2), mesh)
    plain_state, plain = objective.make_train_step(*args)(state, x0)
    with_teacher = objective.make_train_step(*args, teacher=(model, teacher_params), weight=0.0)
    state_w0, metrics = with_teacher(state, x0)
    for a, b in zip(jax.tree.leaves(plain_state), jax.tree.leaves(state_w0)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert float(metrics["loss"]) == float(plain["loss"]) == float(metrics["denoise_loss"])
    assert float(metrics["distill_loss"]) > 0


def test_resume_with_another_teacher_is_refused(ladder, tmp_path):
    """The teacher's path, weight, step and digest define the student's weights."""
    shutil.copytree(ladder / "teacher", tmp_path / "teacher")
    short = dict(training__num_steps=2, training__eval_every=2, training__checkpoint_every=2)
    loop.train_and_evaluate(distilled(1.0, **short), tmp_path / "student")
    shutil.copytree(ladder / "teacher", tmp_path / "other")
    with pytest.raises(checkpoint.WorkdirMismatchError,
                       match=r"distill.teacher_workdir='teacher' \(config: 'other'\)"):
        loop.train_and_evaluate(
            distilled(1.0, distill__teacher_workdir="other", **short), tmp_path / "student")
    with pytest.raises(checkpoint.WorkdirMismatchError, match=r"distill.weight=1.0 \(config: 0.5"):
        loop.train_and_evaluate(distilled(0.5, **short), tmp_path / "student")
    # the same path, retrained further: another step and digest
    loop.train_and_evaluate(
        config(training__num_steps=42, training__eval_every=42, training__checkpoint_every=42,
               optim__learning_rate=3e-3, seed=7), tmp_path / "teacher")
    with pytest.raises(checkpoint.WorkdirMismatchError,
                       match=r"distill.teacher_param_sha256=.*distill.teacher_step=40 "
                             r"\(config: 42\)"):
        loop.train_and_evaluate(distilled(1.0, **short), tmp_path / "student")


def test_plain_record_without_a_distill_section_still_resumes(ladder, tmp_path):
    """A config.json written before distillation existed means 'no teacher'."""
    workdir = tmp_path / "old"
    shutil.copytree(ladder / "teacher", workdir)
    record = json.loads((workdir / "config.json").read_text())
    del record["distill"]
    (workdir / "config.json").write_text(json.dumps(record))
    checkpoint.check_workdir(workdir, config(training__num_steps=40, seed=7))
    with pytest.raises(checkpoint.WorkdirMismatchError, match="distill.teacher_workdir=''"):
        checkpoint.check_workdir(workdir, distilled(1.0, seed=7))


def test_incompatible_teacher_is_refused_before_anything_is_written(ladder, tmp_path):
    (tmp_path / "teacher").mkdir()
    shutil.copy(ladder / "teacher" / "config.json", tmp_path / "teacher")
    with pytest.raises(checkpoint.CheckpointNotFoundError,
                       match="distill.teacher_workdir: no checkpoint in .*teacher"):
        loop.train_and_evaluate(distilled(1.0), tmp_path / "student")
    shutil.rmtree(tmp_path / "teacher")
    shutil.copytree(ladder / "teacher", tmp_path / "teacher")
    with pytest.raises(ValueError, match=r"sde.beta_max=20.0 \(student: 5.0\)"):
        loop.train_and_evaluate(distilled(1.0, sde__beta_max=5.0), tmp_path / "student")
    with pytest.raises(ValueError, match=r"distill.weight: must be in \[0, 1\], got 1.5"):
        loop.train_and_evaluate(distilled(1.5), tmp_path / "student")
    with pytest.raises(ValueError, match="distill.weight=0.5 needs a teacher"):
        loop.train_and_evaluate(config(distill__weight=0.5), tmp_path / "student")
    assert not (tmp_path / "student").exists()


def test_cli_missing_teacher_is_one_line_and_exit_1(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "train", "--config", "configs/tiny.py", "--workdir",
         str(tmp_path / "level1"), "--config.distill.teacher_workdir=level2",
         "--config.distill.weight=1.0"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: distill.teacher_workdir: "), lines
    assert "level2" in lines[0]
    assert not (tmp_path / "level1").exists()


def test_distilled_mnist_ladder_trains_teachers_first():
    """configs/mnist.py:KdT names the sibling levelT; the pipeline orders teachers first."""
    from configs import mnist, mnist_distilled_sample
    from experiments import pipeline

    assert mnist.get_config("2d3").distill.to_dict() == {
        "teacher_workdir": "level3", "weight": 1.0, "teacher_step": None,
        "teacher_param_sha256": None}
    assert mnist.get_config("2").distill.teacher_workdir == ""
    for bad in ("4d3", "2d2", "2d5", "2dx"):
        with pytest.raises(ValueError, match=f"got '{bad}'"):
            mnist.get_config(bad)
    for teachers, order in (("top", ["level4", "level1", "level2", "level3"]),
                            ("above", ["level4", "level3", "level2", "level1"])):
        configs = pipeline.level_configs(mnist_distilled_sample.get_config(teachers))
        assert pipeline.training_order(configs) == order
