"""The experiment pipelines: the CelebA --smoke run exercises every stage end to end."""

import json

import pytest

from experiments import pipeline
from experiments.celeba64 import __main__ as celeba64
from mlem.config_files import load_config


def test_celeba64_smoke_runs_every_stage_and_resumes(tmp_path):
    """Mock CelebA at 8×8, three smoke levels: train, γ, V_k, sweep, figures."""
    summary = celeba64.main(["--smoke", "--workdir", str(tmp_path)])
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
    again = celeba64.main(["--smoke", "--workdir", str(tmp_path)])
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


def test_celeba64_without_inception_weights_stops_before_training(tmp_path, capsys):
    """The FID/KID files are checked first: a missing one is one error line, nothing trained."""
    with pytest.raises(SystemExit) as exit_:
        celeba64.main(["--workdir", str(tmp_path / "runs"), "--out", str(tmp_path / "out")])
    assert exit_.value.code != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "inception_weights" in last and "features=''" in last
    assert not (tmp_path / "runs").exists()
