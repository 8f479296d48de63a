"""``python -m sample`` and :mod:`mlem.generation` on the tiny trained ladder.

Three CLI runs start together (they are slow to start): EM with the top level at 4 and at 8
steps with the same seed (the second on 2 fake CPU devices, so batches are sharded), and
one bad-input run. Everything else calls the library in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import tiny_sample
from mlem import generation, levels, schedules

ROOT = Path(__file__).resolve().parents[1]
SEED, STEPS = 3, 4  # the CLI's runs: EM, top level, STEPS and 2·STEPS steps


def _sample_cmd(workdir: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sample", "--config", "configs/tiny_sample.py",
            "--workdir", str(workdir), "--out", str(out), *args]


@pytest.fixture(scope="module")
def cli(tiny_ladder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Outputs of the three CLI runs: ``'coarse'`` / ``'fine'`` dirs and ``'missing'`` result."""
    out = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    em = ("--method", "em", "--seed", str(SEED), "--num_samples", "4", "--batch_size", "4")
    runs = {
        "coarse": (_sample_cmd(tiny_ladder, out / "coarse", *em, "--steps", str(STEPS)), env),
        "fine": (_sample_cmd(tiny_ladder, out / "fine", *em, "--steps", str(2 * STEPS)),
                 {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}),
        "missing": (_sample_cmd(tiny_ladder, out / "missing", "--method", "mlem",
                                "--config.levels=('level1', 'level3')"), env),
    }
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True)
             for name, (cmd, env) in runs.items()}
    results = {name: (p.wait(timeout=600), *p.communicate()) for name, p in procs.items()}
    for name in ("coarse", "fine"):
        assert results[name][0] == 0, results[name][2][-2000:]
    return {"coarse": out / "coarse", "fine": out / "fine", "missing": results["missing"]}


@pytest.fixture(scope="module")
def ladder(tiny_ladder: Path) -> levels.Ladder:
    return generation.load_ladder(tiny_sample.get_config(), tiny_ladder)


def _config(**sampling) -> ml_collections.ConfigDict:
    return generation.with_overrides(tiny_sample.get_config(), **sampling)


def test_cli_writes_grid_samples_and_stats(cli):
    stats = json.loads((cli["coarse"] / "sample_stats.json").read_text())
    samples = np.load(cli["coarse"] / "samples.npz")["samples"]
    assert samples.shape == (4, 8, 8, 3) and samples.dtype == np.float32
    assert samples.min() >= -1.0 and samples.max() <= 1.0
    assert Image.open(cli["coarse"] / "samples.png").size == (16, 16)  # 2 × 2 grid of 8 × 8
    assert stats["method"] == "em" and stats["em_level"] == 2 and stats["device"]["count"] == 1
    assert stats["evals_per_level"] == [0, STEPS]
    flops = np.asarray(stats["level_flops"])
    assert flops[0] < flops[1]
    assert stats["realised_flops_per_sample"] == pytest.approx(STEPS * flops[1])
    assert 0 < stats["wall_seconds_excluding_compile"] < stats["wall_seconds_including_compile"]
    fine = json.loads((cli["fine"] / "sample_stats.json").read_text())
    assert fine["device"]["count"] == 2 and fine["evals_per_level"] == [0, 2 * STEPS]


def test_cli_is_deterministic(cli, tiny_ladder, tmp_path):
    """The library call behind the CLI, in this process, gives the CLI's samples bit for bit."""
    config = _config(method="em", steps=STEPS, seed=SEED, num_samples=4, batch_size=4)
    generation.run(config, tiny_ladder, tmp_path, progress=False)
    again, cli_run = np.load(tmp_path / "samples.npz"), np.load(cli["coarse"] / "samples.npz")
    np.testing.assert_array_equal(again["samples"], cli_run["samples"])
    np.testing.assert_array_equal(again["ts"], cli_run["ts"])


def test_same_seed_shares_noise_and_brownian_path_across_step_counts():
    path_ts = np.linspace(0.0, 0.999, 17, dtype=np.float32)
    shape = (2, 8, 8, 3)
    x_coarse, inc_coarse, _ = generation.batch_inputs(SEED, 1, shape, path_ts, STEPS)
    x_fine, inc_fine, _ = generation.batch_inputs(SEED, 1, shape, path_ts, 2 * STEPS)
    np.testing.assert_array_equal(x_coarse, x_fine)
    pairs = np.asarray(inc_fine).reshape(STEPS, 2, *shape).sum(1)
    np.testing.assert_allclose(inc_coarse, pairs, rtol=0, atol=1e-6)
    x_other, inc_other, _ = generation.batch_inputs(SEED, 2, shape, path_ts, STEPS)
    assert not np.allclose(x_other, x_coarse) and not np.allclose(inc_other, inc_coarse)


def test_cli_em_error_against_a_fine_reference_shrinks_with_steps(cli, ladder):
    """Coupled runs converge to the reference on the path grid; an uncoupled one does not."""
    config = tiny_sample.get_config()
    ts, path_ts = generation.time_grids(ladder, config.sampling.path_steps,
                                        config.sampling.path_steps)

    def reference(seed):
        x, _ = generation.generate(ladder, "em", None, ts, num_samples=4, batch_size=4,
                                   seed=seed, path_ts=path_ts)
        return np.clip(x, -1.0, 1.0)

    ref = reference(SEED)
    mse = {name: np.mean((np.load(cli[name] / "samples.npz")["samples"] - ref) ** 2)
           for name in ("coarse", "fine")}
    assert mse["fine"] < 0.8 * mse["coarse"], mse
    assert mse["coarse"] < 0.5 * np.mean((reference(SEED + 1) - ref) ** 2), mse


def test_mlem_stats_count_the_levels_evaluated(ladder):
    ts, path_ts = generation.time_grids(ladder, 8, 16)
    probs = schedules.constant((1.0, 0.5), 8)
    x, stats = generation.generate(ladder, "mlem", probs, ts, num_samples=4, batch_size=2,
                                   seed=0, path_ts=path_ts)
    evals = stats["evals_per_batch"]
    assert x.shape == (4, 8, 8, 3) and np.isfinite(x).all()
    assert evals.shape == (2, 2) and np.all(evals[:, 0] == 8)  # B_1 = 1 needs level 1
    assert np.all(evals[:, 1] <= 8) and evals[:, 1].sum() > 0  # B_2 ~ Bernoulli(0.5)
    np.testing.assert_allclose(stats["evals_per_level"], evals.mean(0))


def test_missing_level_is_one_line_naming_level_workdir_and_train_command(cli, tiny_ladder):
    code, stdout, stderr = cli["missing"]
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith("error: level 2 (level3): no trained checkpoint in ")
    assert str(tiny_ladder / "level3") in lines[0]
    assert "python -m train --config configs/tiny.py --config.model.level=tiny_level2" in lines[0]


def test_levels_not_ordered_by_flops_are_refused(ladder):
    swapped = levels.Ladder(ladder.names[::-1], ladder.models[::-1], ladder.params[::-1],
                            ladder.image_shape, ladder.sde)
    with pytest.raises(ValueError, match="cheapest first with strictly increasing FLOPs"):
        generation.measure_flops(swapped, 4)


def test_schedules_from_files_must_match_the_ladder(tmp_path):
    names, flops = ("tiny_level1", "tiny_level2"), np.array([1e5, 4e5])
    ts = np.linspace(0.0, 0.999, 9)
    schedules.save(tmp_path / "three.json", np.array([1.0, 0.5, 0.25]))
    config = _config(method="mlem", schedule="file")
    config.sampling.schedule_file = str(tmp_path / "three.json")
    with pytest.raises(ValueError, match="has 3 levels but the ladder has 2"):
        generation.build_schedule(config, names, flops, ts)

    variances = {"levels": list(names), "level_flops": flops.tolist(),
                 "bin_edges": [0.0, 0.5, 1.0], "variances": [[4.0, 2.0], [4.0, 0.02]]}
    (tmp_path / "variances.json").write_text(json.dumps(variances))
    config = _config(method="mlem", schedule="variance", c=100.0)
    config.sampling.variance_file = str(tmp_path / "variances.json")
    probs = generation.build_schedule(config, names, flops, ts)
    increment_costs = flops + np.array([0.0, flops[0]])
    p2_by_bin = 100.0 * np.sqrt(np.array([2.0, 0.02]) / increment_costs[1])
    np.testing.assert_allclose(probs[:, 0], 1.0)
    np.testing.assert_allclose(probs[:, 1], np.where(ts[:-1] < 0.5, *p2_by_bin))

    variances["variances"] = [[4.0, 2.0, 1.0]] * 2
    (tmp_path / "variances.json").write_text(json.dumps(variances))
    with pytest.raises(ValueError, match="has 3 levels but the ladder has 2"):
        generation.build_schedule(config, names, flops, ts)


@pytest.mark.parametrize("request_args, message", [
    (("sde", -1, 2, 4, 4, 1), "method: must be one of mlem, em"),
    (("em", 3, 2, 4, 4, 1), "em_level: must be in 1..2"),
    (("mlem", -1, 2, 6, 4, 1), "num_samples=6 must be a positive multiple of batch_size=4"),
    (("mlem", -1, 2, 6, 3, 2), "batch_size=3 is not divisible by the device count 2"),
])
def test_bad_requests_are_refused(request_args, message):
    with pytest.raises(ValueError, match=message):
        generation.check_request(*request_args)


def test_steps_must_divide_the_brownian_path_grid(ladder):
    with pytest.raises(ValueError, match="steps=5 must divide sampling.path_steps=16"):
        generation.time_grids(ladder, 5, 16)
