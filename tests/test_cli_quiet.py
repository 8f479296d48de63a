"""The checkpoint library's background tracebacks do not drown a CLI's ``error:`` line.

Each check runs a short Python script in a subprocess, as a CLI would: it calls
:func:`mlem.cli.quiet_background_errors` (``verbose=False``: a CLI run without
``--verbosity``; ``verbose=True``: the control, nothing changed), meets a checkpoint failure
and ends in :func:`mlem.cli.fail`. Three failures:

* corrupt checkpoints read through :func:`mlem.train.checkpoint.load_level`. The flood of
  ``RuntimeError: Event loop is closed`` tracebacks came from the tensorstore reads that
  orbax left in flight when it gave up (in about one load in five here); the loads now
  finish them (tests/test_corrupt_checkpoint.py), so in ``ATTEMPTS`` loads none comes, with
  the hooks or without;
* that same tensorstore callback made deterministic: a ``ts.Future`` awaited on a loop that
  is closed before the future completes;
* a failed async save (a file-size limit stands in for a full disk): orbax logs the error
  with its traceback from several threads before the error reaches the caller.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ATTEMPTS = 5  # loads of the corrupt workdir (0.3 s each)
CLOSED = "Event loop is closed"

CORRUPT_LOAD = """
import sys, time
from mlem import cli
workdir, verbose = sys.argv[1], sys.argv[2] == "1"
cli.quiet_background_errors(verbose=verbose)
seen = 0
hook = sys.unraisablehook
def counting(info):  # count the flood, then let the hook installed above handle it
    global seen
    seen += "Event loop is closed" in str(info.exc_value)
    hook(info)
sys.unraisablehook = counting
from mlem.train import checkpoint
for attempt in range(1, int(sys.argv[3]) + 1):
    try:
        checkpoint.load_level(workdir)
    except checkpoint.CheckpointNotFoundError as err:
        error = err
    time.sleep(0.1)
print(f"attempts={attempt} closed_loop_errors={seen}", flush=True)
cli.fail(error)
"""

CLOSED_LOOP_CALLBACK = """
import asyncio, sys
import tensorstore as ts
from mlem import cli
cli.quiet_background_errors(verbose=sys.argv[1] == "1")
for _ in range(3):
    loop = asyncio.new_event_loop()
    promise, future = ts.Promise.new()
    async def await_later():
        return future.__await__()  # registers a callback that schedules onto `loop`
    pending = loop.run_until_complete(await_later())
    loop.close()
    promise.set_result(1)  # the callback meets the closed loop: sys.unraisablehook
cli.fail("checkpoint step 4 cannot be restored")
"""

FAILED_SAVE = """
import resource, signal, sys
import numpy as np
import orbax.checkpoint as ocp
from mlem import cli
from mlem.train import checkpoint
cli.quiet_background_errors(verbose=sys.argv[2] == "1")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
manager = checkpoint.make_manager(sys.argv[1], keep=1)
state = {"w": np.random.default_rng(0).standard_normal(1 << 18).astype(np.float32)}
try:
    manager.save(1, args=ocp.args.StandardSave(state))  # 1 MiB, incompressible
    manager.wait_until_finished()
except Exception as err:
    cli.fail(err)
"""


def run_script(script: str, *args: object) -> tuple[str, str]:
    """Run ``script`` like a CLI (repo root, this session's environment); ``(stdout, stderr)``
    after checking it exited with status 1."""
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], cwd=ROOT,
                          env={**os.environ, "WANDB_MODE": "disabled"}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    return proc.stdout, proc.stderr


def last_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def corrupt_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run (configs/tiny.py, 4 steps, checkpoints at 2 and 4) whose every checkpoint
    has its data files overwritten, as ``_corrupt`` in test_training.py does."""
    from configs import tiny
    from mlem.train import loop as train_loop

    workdir = tmp_path_factory.mktemp("quiet") / "run"
    config = tiny.get_config()
    config.training.num_steps, config.training.checkpoint_every = 4, 2
    config.training.keep_checkpoints = 3
    config.training.num_sample_images = 0
    config.wandb.mode = "disabled"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        train_loop.train_and_evaluate(config, workdir)
    files = glob.glob(str(workdir / "checkpoints" / "*" / "**" / "d" / "*"), recursive=True)
    assert {Path(f).relative_to(workdir / "checkpoints").parts[0] for f in files} == {"2", "4"}
    for name in files:
        Path(name).write_bytes(b"not a checkpoint")
    return workdir


@pytest.mark.parametrize("verbose", [False, True])
def test_corrupt_checkpoints_end_in_the_error_line(corrupt_workdir, verbose):
    stdout, stderr = run_script(CORRUPT_LOAD, corrupt_workdir, int(verbose), ATTEMPTS)
    assert f"attempts={ATTEMPTS} closed_loop_errors=0" in stdout, stdout
    assert last_line(stderr).startswith("error: "), stderr[-3000:]
    assert "cannot be restored" in last_line(stderr)
    assert CLOSED not in stderr and "Traceback" not in stderr, stderr[-3000:]
    assert len(stderr.splitlines()) == 1, stderr[-3000:]


@pytest.mark.parametrize("verbose", [False, True])
def test_tensorstore_callback_on_a_closed_loop(verbose):
    _, stderr = run_script(CLOSED_LOOP_CALLBACK, int(verbose))
    assert last_line(stderr) == "error: checkpoint step 4 cannot be restored"
    if verbose:
        assert stderr.count(f"RuntimeError: {CLOSED}") == 3 and "Traceback" in stderr
    else:
        lines = stderr.splitlines()
        assert len(lines) == 2 and lines[0].startswith("warning: ") and CLOSED in lines[0]


@pytest.mark.parametrize("verbose", [False, True])
def test_failed_save_logs_one_line_per_record(tmp_path, verbose):
    _, stderr = run_script(FAILED_SAVE, tmp_path / "run", int(verbose))
    assert last_line(stderr).startswith("error: "), stderr[-3000:]
    records = [line for line in stderr.splitlines() if "Failed to run" in line]
    assert records, stderr[-3000:]  # orbax's background save thread reported the failure
    if verbose:
        assert stderr.count("Traceback (most recent call last)") >= 2
    else:
        assert "Traceback" not in stderr, stderr[-3000:]
        assert all("--verbosity=1" in line for line in records)
        assert len(stderr.splitlines()) <= 6, stderr
