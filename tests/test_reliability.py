"""Nothing stale, nothing lost (as a user meets it): a level whose newest checkpoint is
unreadable stops sampling and analysis with one line, unless ``--allow_older_checkpoints``,
which records the step used; results made from another step are refused; malformed files and
missing configs are named."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis import common
from configs import tiny_sample
from mlem import generation, schedules
from mlem import ladder as ladders
from mlem.train import checkpoint

# Uses the session's tiny trained ladder: one xdist worker (tests/conftest.py).
pytestmark = [pytest.mark.xdist_group("tiny_ladder"),
              pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")]

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def last_line(proc: subprocess.CompletedProcess) -> str:
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def stale_ladder(tiny_ladder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny ladder whose level 2 has an unreadable newest checkpoint (step 4)."""
    root = tmp_path_factory.mktemp("stale") / "ladder"
    shutil.copytree(tiny_ladder, root)
    files = glob.glob(str(root / "level2" / "checkpoints" / "4" / "**" / "d" / "*"),
                      recursive=True)
    assert files
    for name in files:
        Path(name).write_bytes(b"not a checkpoint")
    return root


def test_sampling_stops_on_a_stale_level_or_records_the_older_step(stale_ladder, tmp_path):
    em = ("--method", "em", "--steps", "2", "--num_samples", "8", "--batch_size", "8")
    args = ("sample", "--config", "configs/tiny_sample.py", "--workdir", str(stale_ladder))
    refused = run_cli(*args, "--out", str(tmp_path / "refused"), *em)
    assert refused.returncode == 1
    line = last_line(refused)
    assert line.startswith("error: level 2 (level2): the newest checkpoint, step 4"), line
    assert "--allow_older_checkpoints" in line
    assert not (tmp_path / "refused").exists()

    allowed = run_cli(*args, "--out", str(tmp_path / "allowed"), *em,
                      "--allow_older_checkpoints")
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    stats = json.loads((tmp_path / "allowed" / "sample_stats.json").read_text())
    assert stats["level_steps_restored"] == [4, 2] and stats["allow_older_checkpoints"]


def test_results_record_the_restored_step_and_refuse_to_mix(tiny_ladder, stale_ladder,
                                                            tmp_path):
    """The manifest holds what was restored, not what the directory lists: a results
    directory of the intact ladder refuses the older level 2."""
    config = tiny_sample.get_config()
    intact = ladders.load_ladder(config, tiny_ladder)
    out = common.open_results(tmp_path / "results",
                              common.make_manifest(config, tiny_ladder, intact), False)
    with pytest.raises(checkpoint.UnreadableCheckpointError, match="level 2 .*step 4"):
        ladders.load_ladder(config, stale_ladder)
    config.allow_older_checkpoints = True
    older = ladders.load_ladder(config, stale_ladder)
    assert older.steps == (4, 2) and older.digests[0] == intact.digests[0]
    assert older.digests[1] != intact.digests[1]
    manifest = common.make_manifest(config, stale_ladder, older)
    assert [lv["checkpoint_step"] for lv in manifest["levels"]] == [4, 2]
    with pytest.raises(common.ResultsMismatchError, match="levels"):
        common.open_results(out, manifest, False)


def test_analysis_cli_stops_on_a_stale_level(stale_ladder, tmp_path):
    proc = run_cli("analysis.variance", "--config", "configs/tiny_sample.py", "--workdir",
                   str(stale_ladder), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    line = last_line(proc)
    assert line.startswith("error:") and "level 2 (level2)" in line and "step 4" in line, line


def test_malformed_files_are_named(tmp_path):
    bad = tmp_path / "schedule.json"
    bad.write_text('{"probs": [1.0, 0.5]\n"x": 1}')
    with pytest.raises(ValueError, match=f"schedule file {bad} is not valid JSON"):
        schedules.load(bad, 2, np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match=f"variance file {bad} is not valid JSON"):
        generation.load_variances(bad, ("level1", "level2"))
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text("{")
    with pytest.raises(ValueError, match="config record .*config.json is not valid JSON"):
        checkpoint.load_record(workdir)
