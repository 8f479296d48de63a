"""The experiment pipelines: the CelebA --smoke run exercises every stage end to end."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments import pipeline
from experiments.celeba64 import __main__ as celeba64
from mlem.config_files import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_celeba64_smoke_runs_every_stage_and_resumes(tmp_path):
    """Mock CelebA at 8×8, three smoke levels: train, γ, V_k, sweep, figures."""
    config = load_config(celeba64.SAMPLE_CONFIG)
    summary = celeba64.smoke(config, tmp_path, tmp_path / "results")
    for key in (*pipeline.HEADLINE, "total_wall_seconds"):
        assert key in summary
    out = tmp_path / "results"
    assert (out / "cost_error" / "points.csv").is_file()
    variances = json.loads((out / "variance" / "variances.json").read_text())
    assert variances["levels"] == [f"level{k}" for k in range(1, 4)]
    assert sorted(summary["train_seconds"]) == [f"level{k}" for k in range(1, 4)]
    pngs = list(out.rglob("*.png"))
    assert len(pngs) >= 3, pngs
    oracle = summary["oracle"]  # the paper's framing: prefix ladder 1-2, level 3 the oracle
    assert oracle["levels"] == [1, 2] and len(oracle["targets"]) == 5
    for name, by_ruler in oracle["comparisons"].items():
        assert set(by_ruler) == {"flops", "seconds"}, name
    assert (out / "cost_error" / "oracle.json").is_file()
    assert (out / "cost_error" / "oracle.png").is_file()
    # A second run reuses every finished level and stage, and keeps the first run's time.
    again = celeba64.smoke(load_config(celeba64.SAMPLE_CONFIG), tmp_path, tmp_path / "results")
    assert again["last_run_train_seconds"] == {} and again["train_seconds"] == summary[
        "train_seconds"]
    assert again["speedup_at_equal_mse"] == summary["speedup_at_equal_mse"]
    assert again["total_wall_seconds"] == summary["total_wall_seconds"]
    assert again["last_run_wall_seconds"] != summary["total_wall_seconds"]


def test_plan_counts_flops_of_every_stage():
    rows = celeba64.plan(load_config("configs/mnist_sample.py"))
    assert [r["stage"].split(" (")[0] for r in rows[:4]] == [f"train level{k}" for k in range(1, 5)]
    assert all(r["flops"] > 0 for r in rows)
    train = [r["flops"] for r in rows[:4]]
    assert train == sorted(train)  # bigger levels cost more to train


def test_override_of_an_unknown_field_is_refused():
    config = load_config("configs/mnist_level1.py")
    with pytest.raises(ValueError, match="no such config field"):
        pipeline.set_field(config, "training.num_stepz", 3)


def test_celeba64_without_inception_weights_stops_before_training(tmp_path):
    """The FID/KID files are checked first: a missing one stops the run with an error naming
    the fix, nothing trained (the command line prints it as its one last line:
    tests/test_cli_quiet.py)."""
    with pytest.raises(FileNotFoundError, match="inception_weights") as err:
        pipeline.run(load_config(celeba64.SAMPLE_CONFIG), tmp_path / "runs", tmp_path / "out")
    assert "features=''" in str(err.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.integration
@pytest.mark.parametrize("args,message", [
    (["experiments.celeba64", "--workdir", "{tmp}/runs", "--out", "{tmp}/out"],
     "inception_weights"),
    (["analysis.ladder_table", "configs/tiny.py", "configs/tiny.py"],
     "error: levels: must be listed cheapest first"),
    (["analysis.report", "{tmp}/missing"], "error: {tmp}/missing: no summary.json"),
])
def test_entry_points_end_bad_input_in_one_error_line(tmp_path, args, message):
    """As a user meets them: one ``error:`` line, the last printed, and a non-zero exit."""
    args = [a.format(tmp=tmp_path) for a in args]
    proc = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "JAX_PLATFORMS": "cpu", "WANDB_MODE": "disabled"})
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message.format(tmp=tmp_path) in last, proc.stderr
    assert not (tmp_path / "runs").exists()
