"""A damaged checkpoint ends a command in one ``error:`` line, with nothing left to print.

When one array read of a damaged checkpoint fails, orbax closes the restore's event loop with
the other reads still pending; left there, they printed hundreds of tracebacks at exit, after
the error line, in some runs (it depends on thread timing). :mod:`mlem.train.checkpoint` finishes
them before the loop closes. Checked two ways:

* deterministically: the reads that succeed are held back (orbax's read of one shard,
  wrapped to sleep after it), so a failing read always comes first. In process, every read
  is done once the restore has raised; the commands, run so, print one line (without the fix:
  about 500 tracebacks, every time);
* the commands as a user runs them, output to a pipe (not a terminal, where the flood
  showed): ``sample`` on a ladder whose level 2 has its newest checkpoint damaged,
  ``train`` in a workdir whose every checkpoint is damaged, ``sample`` on the intact ladder.
  Every run exits as it should and prints no traceback; a failure is at most two lines, the
  last its ``error:`` line. Once here, 10 times each in the slow tier.

The damage is the issue's: the largest data file of a step truncated to 16 bytes.
"""

from __future__ import annotations

import asyncio
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from orbax.checkpoint._src.serialization import serialization

from mlem.train import checkpoint

# Uses the session's tiny trained ladder: one xdist worker (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("tiny_ladder")

ROOT = Path(__file__).resolve().parents[1]
RUNS = 10  # of each command in the slow tier
SAMPLE = ("sample", "--config", "configs/tiny_sample.py", "--method", "em", "--steps", "2",
          "--num_samples", "8", "--batch_size", "8")


def damage(workdir: Path, step: int) -> None:
    """Truncate the largest data file of ``step`` in ``workdir`` to 16 bytes."""
    files = glob.glob(str(workdir / "checkpoints" / str(step) / "**" / "d" / "*"),
                      recursive=True)
    largest = max(files, key=os.path.getsize)
    with open(largest, "r+b") as f:
        f.truncate(16)


@pytest.fixture(scope="module")
def damaged_ladder(tiny_ladder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny ladder whose level 2 has a damaged newest checkpoint (step 4)."""
    root = tmp_path_factory.mktemp("damaged") / "ladder"
    shutil.copytree(tiny_ladder, root)
    damage(root / "level2", 4)
    return root


def unreadable_run(tiny_ladder: Path, tmp_path: Path) -> Path:
    """A copy of the tiny level 2 workdir with every checkpoint (steps 2, 4) damaged."""
    workdir = tmp_path / "level2"
    shutil.copytree(tiny_ladder / "level2", workdir)
    for step in (2, 4):
        damage(workdir, step)
    return workdir


# ``python -c HELD_BACK <module> <args>``: ``python -m <module> <args>`` with the shard reads
# that succeed held back, as in test_a_failed_restore_leaves_no_read_running.
HELD_BACK = """
import asyncio, runpy, sys
from orbax.checkpoint._src.serialization import serialization
read_shard = serialization._read_shard
async def held_back(*args, **kwargs):
    shard = await read_shard(*args, **kwargs)
    await asyncio.sleep(0.2)
    return shard
serialization._read_shard = held_back
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def run_cli(*args: str, held_back: bool = False) -> subprocess.CompletedProcess:
    """``python -m <args>`` from the repository root, stdout and stderr into one pipe."""
    python = [sys.executable, "-c", HELD_BACK] if held_back else [sys.executable, "-m"]
    return subprocess.run([*python, *args], cwd=ROOT,
                          env={**os.environ, "WANDB_MODE": "disabled"},
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=300)


def assert_clean(proc: subprocess.CompletedProcess, returncode: int) -> None:
    assert proc.returncode == returncode, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert "Exception ignored" not in proc.stdout, proc.stdout[-3000:]


def assert_one_error(proc: subprocess.CompletedProcess, *names: str) -> str:
    """Exit 1, no traceback, at most 2 lines, the last the ``error:`` line naming
    ``names`` and quoting the library's exception in one short line."""
    assert_clean(proc, 1)
    lines = proc.stdout.splitlines()
    assert 1 <= len(lines) <= 2 and lines[-1].startswith("error: "), proc.stdout[-3000:]
    for name in names:
        assert name in lines[-1], lines[-1]
    quoted = re.search(r"restored \((?:step \d+: )?(\w+: .*?)\); ", lines[-1])
    assert quoted and len(quoted.group(1)) <= 200, lines[-1]
    return lines[-1]


def check_sample_fails(ladder: Path, out: Path, held_back: bool = False) -> None:
    proc = run_cli(*SAMPLE, "--workdir", str(ladder), "--out", str(out), held_back=held_back)
    assert_one_error(proc, "level 2 (level2)", "step 4",
                     str(ladder / "level2" / "checkpoints" / "4"), "--allow_older_checkpoints")
    assert not out.exists()


def check_train_fails(workdir: Path, held_back: bool = False) -> None:
    proc = run_cli("train", "--config", "configs/tiny.py:2", "--workdir", str(workdir),
                   held_back=held_back)
    assert_one_error(proc, "none of the checkpoints [2, 4]", str(workdir / "checkpoints"),
                     "--restart")
    assert sorted(p.name for p in (workdir / "corrupt_checkpoints").iterdir()) == ["2", "4"]


# --- the cause, in process ------------------------------------------------------------------

@pytest.mark.parametrize("allow_older", [False, True])
def test_a_failed_restore_leaves_no_read_running(damaged_ladder, monkeypatch, allow_older):
    reads, finished = [], []
    read_shard = serialization._read_shard

    async def held_back(*args, **kwargs):
        reads.append(asyncio.current_task())
        shard = await read_shard(*args, **kwargs)  # a read of the damaged file raises here
        await asyncio.sleep(0.2)
        finished.append(shard)
        return shard

    monkeypatch.setattr(serialization, "_read_shard", held_back)
    if allow_older:
        assert checkpoint.load_level(damaged_ladder / "level2", allow_older=True)[2] == 2
    else:
        with pytest.raises(checkpoint.UnreadableCheckpointError, match="step 4"):
            checkpoint.load_level(damaged_ladder / "level2")
    assert len(reads) > 1
    assert all(task.done() for task in reads)  # nothing left running, ...
    assert 0 < len(finished) < len(reads)  # ... of reads that succeeded and reads that failed


# --- the commands ---------------------------------------------------------------------------

def test_sample_on_a_damaged_checkpoint_prints_one_line(damaged_ladder, tmp_path):
    check_sample_fails(damaged_ladder, tmp_path / "out")


def test_sample_prints_one_line_when_the_failing_read_comes_first(damaged_ladder, tmp_path):
    check_sample_fails(damaged_ladder, tmp_path / "out", held_back=True)


@pytest.mark.slow
def test_train_prints_one_error_when_the_failing_read_comes_first(tiny_ladder, tmp_path):
    check_train_fails(unreadable_run(tiny_ladder, tmp_path), held_back=True)


@pytest.mark.slow
def test_sample_on_a_damaged_checkpoint_prints_one_line_every_time(damaged_ladder, tmp_path):
    for run in range(RUNS):
        check_sample_fails(damaged_ladder, tmp_path / f"out{run}")


@pytest.mark.slow
def test_train_on_unreadable_checkpoints_prints_one_error_every_time(tiny_ladder, tmp_path):
    for run in range(RUNS):
        check_train_fails(unreadable_run(tiny_ladder, tmp_path / str(run)))


@pytest.mark.slow
def test_sample_on_the_intact_ladder_prints_no_traceback(tiny_ladder, tmp_path):
    for run in range(RUNS):
        assert_clean(run_cli(*SAMPLE, "--workdir", str(tiny_ladder),
                             "--out", str(tmp_path / f"out{run}")), 0)


@pytest.mark.slow
def test_verbosity_shows_the_whole_chain(damaged_ladder, tmp_path):
    proc = run_cli(*SAMPLE, "--workdir", str(damaged_ladder), "--out", str(tmp_path / "out"),
                   "--verbosity=1")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "\nerror: level 2 (level2)" in proc.stdout  # (then JAX's INFO line at exit)
    chain = proc.stdout[proc.stdout.index("Traceback"):]
    for name in ("ValueError: OUT_OF_RANGE", "Exception: Encountered error while reading",
                 "UnreadableCheckpointError: the newest checkpoint", "direct cause"):
        assert name in chain, proc.stdout[-3000:]
