"""Training: a real run on tiny data, exact resume in a new process, checkpoint fallback,
refusals, NaN handling and the CLI's one-line errors.

XLA compiles the tiny UNet slowly on a busy 2-core CPU, so the tests share one persistent
compilation cache (also handed to the subprocesses) and one 4-step run (``trained``).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from PIL import Image

from configs import tiny
from mlem import data, files
from mlem.sde import VPSDE, gaussian_eps
from mlem.train import checkpoint, loop, objective
from mlem.train import records as train_metrics

# After a failed read of a corrupt checkpoint, orbax/tensorstore leaves an asyncio callback
# behind that fails later with "Event loop is closed" (harmless; reported at garbage collection).
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ROOT = Path(__file__).resolve().parents[1]
# The run every test starts from: tiny config, 4 steps, checkpoints at 2 and 4.
OVERRIDES = {"training.num_steps": 4, "training.checkpoint_every": 2,
             "training.keep_checkpoints": 3, "training.eval_every": 2, "training.log_every": 1,
             "training.num_sample_images": 0, "wandb.mode": "disabled"}


def tiny_config(**changes):
    """configs/tiny.py with OVERRIDES and ``changes`` (keys like ``training__num_steps``)."""
    config = tiny.get_config()
    for dotted, value in {**OVERRIDES, **{k.replace("__", "."): v
                                          for k, v in changes.items()}}.items():
        *path, name = dotted.split(".")
        holder = config
        for part in path:
            holder = holder[part]
        holder[name] = value
    return config


def cli_flags(**changes) -> list[str]:
    """The same config as ``tiny_config(**changes)`` as ``python -m train`` flags."""
    merged = {**OVERRIDES, **{k.replace("__", "."): v for k, v in changes.items()}}
    return ["--config", "configs/tiny.py"] + [f"--config.{k}={v}" for k, v in merged.items()]


@pytest.fixture(scope="session")
def compile_cache() -> dict:
    """Extra environment for subprocesses: none, the session's XLA cache is in os.environ
    (tests/conftest.py)."""
    return {}


def run_python(args: list[str], cache_env: dict, **env) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **cache_env, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled",
                **env}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=full_env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="session")
def trained(tmp_path_factory, compile_cache):
    """``(workdir, final_metrics)`` of the 4-step tiny run (never modified by tests)."""
    workdir = tmp_path_factory.mktemp("trained") / "run"
    return workdir, loop.train_and_evaluate(tiny_config(), workdir)


def records(workdir: Path) -> list[dict]:
    """metrics.jsonl without the (timing-dependent) steps_per_sec."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "steps_per_sec"} for line in lines]


def restore_state(workdir: Path, step: int | None = None) -> dict:
    manager = checkpoint.make_manager(workdir, keep=None)
    try:
        if step is None:
            return checkpoint.restore_latest(manager)[1]
        return manager.restore(step)
    finally:
        manager.close()


def copy_run(trained, tmp_path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained[0], dst)
    return dst


# --- a real run -----------------------------------------------------------------------------

def test_run_writes_metrics_checkpoints_and_samples(trained):
    workdir, final = trained
    recs = records(workdir)
    train = [r for r in recs if "train_loss" in r]
    heldout = [r for r in recs if "heldout_loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    assert [r["step"] for r in heldout] == [2, 4]
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["grad_norm"]) for r in train)
    assert heldout[1]["heldout_loss"] < heldout[0]["heldout_loss"] < 1.05
    assert final["step"] == 4 and final["heldout_loss"] == heldout[-1]["heldout_loss"]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir()) == [2, 4]
    assert not (workdir / "samples").exists()  # num_sample_images=0 (the slow test samples)
    assert json.loads((workdir / "config.json").read_text())["model"]["level"] == "tiny_level1"
    config, ema, _ = checkpoint.load_level(workdir)
    assert config.model.level == "tiny_level1"
    state = restore_state(workdir)
    assert int(state["step"]) == 4
    leaves = jax.tree.leaves(ema)
    assert leaves and all(np.all(np.isfinite(x)) for x in leaves)
    moved = [np.any(e != p) for e, p in zip(leaves, jax.tree.leaves(state["params"]))]
    assert any(moved)  # EMA lags the raw parameters


@pytest.mark.integration
def test_resume_in_a_new_process_is_bitwise_exact(trained, tmp_path, compile_cache):
    """2 steps in-process + a new `python -m train` process for 2 more == 4 steps at once.

    Tolerance: none (bitwise) on this CPU; both processes run the same XLA executable.
    """
    workdir = tmp_path / "resumed"
    loop.train_and_evaluate(tiny_config(training__num_steps=2), workdir)
    assert restore_state(workdir)["step"] == 2
    proc = run_python(["-m", "train", "--workdir", str(workdir), *cli_flags()], compile_cache)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming from step 2 ({workdir})" in proc.stdout
    resumed, straight = restore_state(workdir), restore_state(trained[0])
    assert int(resumed["step"]) == int(straight["step"]) == 4
    for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(straight), strict=True):
        np.testing.assert_array_equal(a, b)
    assert records(workdir) == records(trained[0])  # same losses, one line per (step, metric)


# --- checkpoints ----------------------------------------------------------------------------

def _corrupt(workdir: Path, step: int) -> None:
    files = glob.glob(str(workdir / "checkpoints" / str(step) / "**" / "d" / "*"), recursive=True)
    assert files
    for name in files:
        Path(name).write_bytes(b"not a checkpoint")


def test_corrupt_latest_checkpoint_falls_back_to_previous(trained, tmp_path, caplog):
    workdir = copy_run(trained, tmp_path)
    _corrupt(workdir, 4)
    # Loading a level is exact: the newest step or an error naming it and the fix ...
    with pytest.raises(checkpoint.UnreadableCheckpointError,
                       match=r"step 4 \(.*checkpoints/4\).*--allow_older_checkpoints"):
        checkpoint.load_level(workdir)
    # ... or, when allowed, the newest readable step, which it returns.
    with caplog.at_level(logging.WARNING, logger="mlem.train.checkpoint"):
        config, ema, step = checkpoint.load_level(workdir, allow_older=True)
    assert step == 2 and "step 4" in caplog.text and "falling back" in caplog.text
    good = restore_state(trained[0], step=2)
    for a, b in zip(jax.tree.leaves(ema), jax.tree.leaves(good["ema_params"]), strict=True):
        np.testing.assert_array_equal(a, b)

    # Training from the damaged workdir resumes at 2, keeps step 4's files aside, recomputes
    # step 4 exactly, and keeps the history that step 4 had reached (nothing is cut).
    loop.train_and_evaluate(tiny_config(), workdir)
    assert (workdir / "corrupt_checkpoints" / "4").is_dir()
    for a, b in zip(jax.tree.leaves(restore_state(workdir)),
                    jax.tree.leaves(restore_state(trained[0])), strict=True):
        np.testing.assert_array_equal(a, b)
    assert records(workdir) == records(trained[0])


def test_no_restorable_checkpoint_stops_with_a_message(trained, tmp_path):
    workdir = copy_run(trained, tmp_path)
    for step in (2, 4):
        _corrupt(workdir, step)
    with pytest.raises(checkpoint.UnreadableCheckpointError, match="newest checkpoint, step 4"):
        checkpoint.load_level(workdir)
    with pytest.raises(checkpoint.CheckpointNotFoundError, match="none of the checkpoints"):
        checkpoint.load_level(workdir, allow_older=True)
    with pytest.raises(checkpoint.CheckpointNotFoundError, match="not a training workdir"):
        checkpoint.load_level(workdir / "checkpoints")
    (tmp_path / "fresh").mkdir()
    shutil.copy(workdir / "config.json", tmp_path / "fresh")
    with pytest.raises(checkpoint.CheckpointNotFoundError, match="no checkpoint in"):
        checkpoint.load_level(tmp_path / "fresh")
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]


def test_unreadable_run_is_quarantined_once_and_restarts_only_when_asked(trained, tmp_path):
    """Every checkpoint unreadable: training moves them aside and stops; a rerun does not
    silently start from scratch; --restart does, keeping the old history in previous_runs/."""
    workdir = copy_run(trained, tmp_path)
    history = records(workdir)
    for step in (2, 4):
        _corrupt(workdir, step)
    with pytest.raises(checkpoint.CheckpointNotFoundError, match="none of the checkpoints.*"
                       "corrupt_checkpoints.*--restart"):
        loop.train_and_evaluate(tiny_config(), workdir)
    assert sorted(p.name for p in (workdir / "corrupt_checkpoints").iterdir()) == ["2", "4"]
    with pytest.raises(checkpoint.CheckpointNotFoundError, match="reached step 4.*--restart"):
        loop.train_and_evaluate(tiny_config(), workdir)
    assert records(workdir) == history  # metrics.jsonl is never cut
    with pytest.raises(ValueError, match="--restart: .*readable checkpoint"):
        loop.train_and_evaluate(tiny_config(), trained[0], restart=True)

    loop.train_and_evaluate(tiny_config(), workdir, restart=True)
    previous = workdir / "previous_runs" / "1"
    assert records(previous) == history
    assert sorted(p.name for p in (previous / "corrupt_checkpoints").iterdir()) == ["2", "4"]
    assert not (workdir / "corrupt_checkpoints").exists()
    assert records(workdir) == history  # the restarted run recomputes the same numbers
    for a, b in zip(jax.tree.leaves(restore_state(workdir)),
                    jax.tree.leaves(restore_state(trained[0])), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.integration
def test_metrics_after_a_resume_equal_an_uninterrupted_run(tmp_path, monkeypatch):
    """log_every (3) does not divide checkpoint_every (2): the run dies at step 5, resumes
    from the checkpoint at 4, and its line at step 6 still averages steps 4–6."""
    changes = {"training__num_steps": 6, "training__log_every": 3, "training__eval_every": 6}
    loop.train_and_evaluate(tiny_config(**changes), tmp_path / "straight")
    make_step = objective.make_train_step

    def dying_step(*args, **kwargs):
        step_fn = make_step(*args, **kwargs)

        def step(state, x0):
            if int(state.step) == 4:
                raise RuntimeError("killed")  # while computing step 5
            return step_fn(state, x0)

        return step

    with monkeypatch.context() as patch:
        patch.setattr(objective, "make_train_step", dying_step)
        with pytest.raises(RuntimeError, match="killed"):
            loop.train_and_evaluate(tiny_config(**changes), tmp_path / "resumed")
    assert [r["step"] for r in records(tmp_path / "resumed")] == [3]
    loop.train_and_evaluate(tiny_config(**changes), tmp_path / "resumed")
    assert records(tmp_path / "resumed") == records(tmp_path / "straight")


def test_config_json_is_the_record_of_the_weights(trained, tmp_path):
    """Weight-defining fields cannot change on a resume (all differences listed, nothing
    written); other changes go to config_history.jsonl and config.json stays as written."""
    workdir = copy_run(trained, tmp_path)
    record = (workdir / "config.json").read_text()
    with pytest.raises(checkpoint.WorkdirMismatchError,
                       match=r"model.dropout=0.0 \(config: 0.1\), sde.beta_max=20.0 "
                             r"\(config: 5.0\).*another --workdir"):
        loop.train_and_evaluate(tiny_config(sde__beta_max=5.0, model__dropout=0.1), workdir)
    with pytest.raises(ValueError, match="training.keep_checkpoints: must be a positive"):
        loop.train_and_evaluate(tiny_config(training__keep_checkpoints=0), workdir)
    assert not (workdir / "config_history.jsonl").exists()
    loop.train_and_evaluate(tiny_config(training__num_steps=6), workdir)
    assert (workdir / "config.json").read_text() == record
    history = [json.loads(line) for line in
               (workdir / "config_history.jsonl").read_text().splitlines()]
    assert [(h["step"], h["changes"]) for h in history] == [(4, {"training.num_steps": 6})]
    assert checkpoint.load_record(workdir).training.num_steps == 4


@pytest.mark.parametrize("field, value", [
    ("training.num_steps", -5), ("training.num_steps", 0), ("optim.learning_rate", -1e-3),
    ("training.batch_size", 0), ("training.log_every", 0), ("eval.num_batches", 0),
    ("optim.learning_rate", float("nan")), ("training.ema_decay", 1.0)])
def test_invalid_values_are_refused_before_anything_is_written(field, value, tmp_path):
    with pytest.raises(ValueError, match=field):
        loop.train_and_evaluate(tiny_config(**{field.replace(".", "__"): value}),
                                    tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_workdir_of_another_model_is_refused_and_untouched(trained, tmp_path):
    workdir = copy_run(trained, tmp_path)
    before = sorted(str(p) for p in workdir.rglob("*"))
    with pytest.raises(checkpoint.WorkdirMismatchError,
                       match="model.level='tiny_level1'.*'tiny_level2'.*another --workdir"):
        loop.train_and_evaluate(tiny_config(model__level="tiny_level2"), workdir)
    with pytest.raises(checkpoint.WorkdirMismatchError, match="data.image_size=8.*16"):
        loop.train_and_evaluate(tiny_config(data__image_size=16), workdir)
    assert sorted(str(p) for p in workdir.rglob("*")) == before


def test_record_sections_exist_in_every_config():
    """The sections the workdir guard compares are present in the shipped configs, and the
    fields allowed to change on a resume exist."""
    from configs import celeba64_level3, mnist_level1

    for module in (tiny, mnist_level1, celeba64_level3):
        fields = checkpoint.flatten(module.get_config())
        for section in checkpoint.RECORD_SECTIONS:
            assert any(f.startswith(section + ".") for f in fields), (module.__name__, section)
        assert set(checkpoint.RESUMABLE_FIELDS) <= set(fields), module.__name__


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(trained, tmp_path, monkeypatch):
    workdir = copy_run(trained, tmp_path)
    real_get_source = data.get_source

    def nan_train_data(data_config, split):
        source = real_get_source(data_config, split)
        if split != "train":
            return source
        return data.ArraySource(np.full_like(source[np.arange(len(source))], np.nan))

    monkeypatch.setattr(data, "get_source", nan_train_data)
    with pytest.raises(train_metrics.NonFiniteLossError,
                       match="non-finite training loss .* step 5; "
                             r"the last good checkpoint \(step 4\) is kept"):
        loop.train_and_evaluate(tiny_config(training__num_steps=8), workdir)
    # With no checkpoint yet, the message says so.
    with pytest.raises(train_metrics.NonFiniteLossError, match="step 1; no checkpoint had been "
                       "written yet"):
        loop.train_and_evaluate(tiny_config(), tmp_path / "fresh")
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    state = restore_state(workdir)
    assert int(state["step"]) == 4
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state))


def test_non_finite_parameters_stop_the_run_before_any_save(trained, tmp_path, monkeypatch):
    """Weights that overflow while the last loss was still finite are caught at the next
    event (here: step 6, due for logging and a checkpoint) and never written."""
    workdir = copy_run(trained, tmp_path)
    make_step = objective.make_train_step

    def overflowing_step(*args, **kwargs):
        step_fn = make_step(*args, **kwargs)

        def step(state, x0):
            state, metrics = step_fn(state, x0)
            if int(state.step) >= 6:
                state = state.replace(params=jax.tree.map(lambda p: p + np.inf, state.params))
            return state, metrics

        return step

    monkeypatch.setattr(objective, "make_train_step", overflowing_step)
    with pytest.raises(train_metrics.NonFiniteLossError, match="non-finite by step 6"):
        loop.train_and_evaluate(tiny_config(training__num_steps=8), workdir)
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    assert max(r["step"] for r in records(workdir)) == 5


# --- the command line -----------------------------------------------------------------------

@pytest.mark.parametrize("flag, message", [
    ("--config.training.nm_steps=3", "key 'nm_steps' in --config.training.nm_steps=3"),
    ("--config.data.image_size=9", "image_size 9x9 is not divisible"),
    ("--config.training.num_steps=-5", "training.num_steps: must be a positive number, got -5"),
])
@pytest.mark.integration
def test_cli_bad_input_is_one_line_and_exit_1(flag, message, tmp_path, compile_cache):
    workdir = tmp_path / "run"
    proc = run_python(["-m", "train", "--config", "configs/tiny.py", "--workdir",
                       str(workdir), flag], compile_cache)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert not workdir.exists()


@pytest.mark.integration
def test_cli_missing_config_file_is_named(tmp_path, compile_cache):
    proc = run_python(["-m", "train", "--config", "configs/nope.py", "--workdir",
                       str(tmp_path / "run")], compile_cache)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "error: --config: no such file 'configs/nope.py'; give a config file such as "
        "configs/mnist_level1.py (run from the repository root)"]


def test_wandb_mode_from_env_or_config(monkeypatch):
    config = tiny_config(wandb__mode="offline")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert train_metrics.wandb_mode(config) == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert train_metrics.wandb_mode(config) == "disabled"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="wandb.mode"):
        train_metrics.wandb_mode(config)


def test_sampler_reproduces_a_gaussian_with_the_exact_eps():
    """The sample-grid sampler (reverse-SDE EM + final denoising) on N(0.3, 0.2²) data."""
    sde = VPSDE()
    exact = gaussian_eps(sde, 0.3, 0.2)

    class ExactModel:
        def apply(self, variables, x, t, train=False):
            return exact(x, t)

    x = np.asarray(loop.make_sampler(ExactModel(), sde)({}, jax.random.key(0),
                                                               (2000, 2, 2, 1)))
    assert abs(x.mean() - 0.3) < 0.01 and abs(x.std() - 0.2) < 0.01


def test_save_grid_writes_a_png(tmp_path):
    images = np.linspace(-1, 1, 5 * 4 * 4 * 3, dtype=np.float32).reshape(5, 4, 4, 3)
    files.save_grid(images, tmp_path / "grid.png")
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.shape == (8, 12, 3)  # ceil(sqrt(5)) = 3 columns, 2 rows
    np.testing.assert_array_equal(grid[:4, :4], np.round((images[0] + 1) * 127.5))
    np.testing.assert_array_equal(grid[4:, 4:8], np.round((images[4] + 1) * 127.5))
    assert grid[4:, 8:].max() == 0  # the sixth cell is empty


@pytest.mark.slow
def test_heldout_loss_falls_on_a_learnable_problem(tmp_path, compile_cache):
    config = tiny_config(training__num_steps=300, training__eval_every=100,
                         training__log_every=100, training__checkpoint_every=300,
                         training__sample_every=300, training__num_sample_images=4,
                         optim__learning_rate=3e-3)
    loop.train_and_evaluate(config, tmp_path / "run")
    losses = [r["heldout_loss"] for r in records(tmp_path / "run") if "heldout_loss" in r]
    assert len(losses) == 3 and losses[0] > losses[1] > losses[2]
    assert losses[2] < 0.6  # the untrained network (zero output layer) scores ~1
    assert (tmp_path / "run" / "samples" / "step_0000300.png").stat().st_size > 0


@pytest.mark.integration
def test_levels_trained_concurrently_are_those_trained_alone(tiny_ladder, tmp_path,
                                                             monkeypatch):
    """experiments.pipeline.train_ladder trains independent levels at once (wandb on, as in
    the demo); each level's weights are bitwise those of training it alone (the tiny_ladder
    fixture, one by one)."""
    from experiments import pipeline
    from mlem.ladder import param_digest

    monkeypatch.setenv("WANDB_MODE", "offline")  # each level keeps its own wandb run
    configs = {}
    for k, level in enumerate(("tiny_level1", "tiny_level2"), start=1):
        config = tiny.get_config()
        config.model.level = level
        config.training.num_sample_images = 0
        configs[f"level{k}"] = config
    seconds = pipeline.train_ladder(configs, tmp_path)
    assert list(seconds) == ["level1", "level2"]
    for name in configs:
        _, alone, step = checkpoint.load_level(tiny_ladder / name)
        _, together, step_together = checkpoint.load_level(tmp_path / name)
        assert step_together == step
        assert param_digest(together) == param_digest(alone)
    assert pipeline.train_ladder(configs, tmp_path) == {}  # trained: nothing to do


def test_two_levels_training_at_once_keep_their_own_wandb_runs(tmp_path, monkeypatch):
    """Levels train concurrently in one process (experiments.pipeline): a second run's
    wandb.init must not finish the first's, whose next log would then raise."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    config = tiny.get_config()
    writers = []
    for name in ("level1", "level2"):
        (tmp_path / name).mkdir()
        writers.append(train_metrics.MetricsWriter(tmp_path / name, config, keep_through=0))
    try:
        assert all(w.wandb is not None for w in writers)
        assert writers[0].wandb is not writers[1].wandb  # not one shared run
        writers[1].write(1, loss=0.25)
        writers[1].close()  # the second level finishes first ...
        writers[0].write(1, loss=0.5)  # ... and the first one's run is still active
    finally:
        writers[0].close()
