"""``python -m sample`` and :mod:`mlem.generation` on the tiny trained ladder.

Three CLI runs start together (they are slow to start): EM with the top level at 4 steps in
batches of 8 and at 8 steps in one batch of 16, with the same seed (the second on 2 fake CPU
devices, so batches are sharded), and one bad-input run. Everything else calls the library
in-process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import tiny_sample
from mlem import generation, schedules
from mlem import ladder as ladders
from tests.conftest import XLA_FLAGS

# The tests that use the session's tiny trained ladder share one xdist worker (it is
# trained once): tests/conftest.py.
pytestmark = pytest.mark.xdist_group("tiny_ladder")

ROOT = Path(__file__).resolve().parents[1]
SEED, STEPS, SAMPLES = 3, 4, 16  # the CLI's runs: EM, top level, STEPS and 2·STEPS steps


def _sample_cmd(workdir: Path, out: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "sample", "--config", "configs/tiny_sample.py",
            "--workdir", str(workdir), "--out", str(out), *args]


@pytest.fixture(scope="module")
def cli(tiny_ladder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Outputs of the three CLI runs: ``'coarse'`` / ``'fine'`` dirs and ``'missing'`` result."""
    out = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    em = ("--method", "em", "--seed", str(SEED), "--num_samples", str(SAMPLES))
    runs = {
        "coarse": (_sample_cmd(tiny_ladder, out / "coarse", *em, "--steps", str(STEPS),
                               "--batch_size", "8"), env),
        "fine": (_sample_cmd(tiny_ladder, out / "fine", *em, "--steps", str(2 * STEPS),
                             "--batch_size", "16"),
                 {**env, "XLA_FLAGS": f"{XLA_FLAGS} --xla_force_host_platform_device_count=2"}),
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
def ladder(tiny_ladder: Path) -> ladders.Ladder:
    return ladders.load_ladder(tiny_sample.get_config(), tiny_ladder)


def _config(**sampling) -> ml_collections.ConfigDict:
    return generation.with_overrides(tiny_sample.get_config(), **sampling)


def test_cli_writes_grid_samples_and_stats(cli):
    stats = json.loads((cli["coarse"] / "sample_stats.json").read_text())
    samples = np.load(cli["coarse"] / "samples.npz")["samples"]
    assert samples.shape == (SAMPLES, 8, 8, 3) and samples.dtype == np.float32
    assert samples.min() >= -1.0 and samples.max() <= 1.0
    assert Image.open(cli["coarse"] / "samples.png").size == (32, 32)  # 4 × 4 grid of 8 × 8
    assert len(stats["level_param_sha256"]) == 2 and stats["level_steps_restored"] == [4, 4]
    assert stats["method"] == "em" and stats["em_level"] == 2 and stats["device"]["count"] == 1
    assert stats["evals_per_level"] == [0, STEPS]
    flops = np.asarray(stats["level_flops"])
    assert flops[0] < flops[1]
    assert stats["realised_flops_per_sample"] == pytest.approx(STEPS * flops[1])
    assert 0 < stats["wall_seconds_excluding_compile"] < stats["wall_seconds_including_compile"]
    fine = json.loads((cli["fine"] / "sample_stats.json").read_text())
    assert fine["device"]["count"] == 2 and fine["evals_per_level"] == [0, 2 * STEPS]


def test_cli_is_deterministic_and_a_sample_does_not_depend_on_its_batch(cli, tiny_ladder,
                                                                         tmp_path):
    """The library call behind the CLI, in this process, gives the CLI's samples bit for bit;
    generated in one batch of 16 instead of two of 8, sample 12 (and every other) is the
    same sample: same noise and path, equal to float rounding."""
    cli_run = np.load(cli["coarse"] / "samples.npz")
    for batch_size in (8, 16):
        config = _config(method="em", steps=STEPS, seed=SEED, num_samples=SAMPLES,
                         batch_size=batch_size)
        generation.run(config, tiny_ladder, tmp_path / str(batch_size), progress=False)
        again = np.load(tmp_path / str(batch_size) / "samples.npz")
        np.testing.assert_array_equal(again["ts"], cli_run["ts"])
        if batch_size == 8:
            np.testing.assert_array_equal(again["samples"], cli_run["samples"])
        else:
            np.testing.assert_allclose(again["samples"][12], cli_run["samples"][12], atol=1e-5)
            np.testing.assert_allclose(again["samples"], cli_run["samples"], atol=1e-5)


def test_same_seed_shares_noise_and_brownian_path_across_step_counts_and_batches():
    path_ts = np.linspace(0.0, 0.999, 17, dtype=np.float32)
    x0, path, key = generation.batch_inputs(SEED, 1, 2, (8, 8, 3), path_ts)
    coarse, fine = path.increments((8, 8, 3), STEPS), path.increments((8, 8, 3), 2 * STEPS)
    pairs = np.asarray(fine).reshape(STEPS, 2, 2, 8, 8, 3).sum(1)
    np.testing.assert_allclose(coarse, pairs, rtol=0, atol=1e-6)
    # Batch 1 of size 2 holds samples 2 and 3: the same as in one batch of 4.
    x_all, path_all, key_all = generation.batch_inputs(SEED, 0, 4, (8, 8, 3), path_ts)
    np.testing.assert_allclose(x0, x_all[2:], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(coarse, path_all.increments((8, 8, 3), STEPS)[:, 2:],
                               rtol=1e-6, atol=1e-7)
    assert not np.allclose(x0, x_all[:2])
    # The Bernoulli draws belong to the batch (one realisation): another batch, another key.
    assert not np.array_equal(jax.random.key_data(key), jax.random.key_data(key_all))


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
    mse = {name: np.mean((np.load(cli[name] / "samples.npz")["samples"][:4] - ref) ** 2)
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
    # All probabilities 1: level 1 has weight 1 − 1 = 0 and is never run; EM's samples.
    ones, stats = generation.generate(ladder, "mlem", schedules.constant((1.0, 1.0), 8), ts,
                                      num_samples=4, batch_size=2, seed=0, path_ts=path_ts)
    em, _ = generation.generate(ladder, "em", None, ts, num_samples=4, batch_size=2, seed=0,
                                path_ts=path_ts)
    np.testing.assert_array_equal(stats["evals_per_level"], [0, 8])
    np.testing.assert_allclose(ones, em, rtol=0, atol=1e-6)


def test_missing_level_is_one_line_naming_level_workdir_and_train_command(cli, tiny_ladder):
    code, stdout, stderr = cli["missing"]
    lines = stderr.strip().splitlines()
    assert code == 1 and len(lines) == 1, stderr
    assert lines[0].startswith("error: level 2 (level3): no trained checkpoint in ")
    assert str(tiny_ladder / "level3") in lines[0]
    assert "python -m train --config configs/tiny.py:2 --workdir" in lines[0]


def test_ladder_levels_are_numbered_from_one_with_minus_one_the_top(ladder):
    ts = np.linspace(0.0, 0.999, 5, dtype=np.float32)
    x0 = np.ones((2, *ladder.image_shape), np.float32)
    key = jax.random.key(0)
    top, _ = ladders.em(ladder, -1, x0, ts, key)
    np.testing.assert_array_equal(ladders.em(ladder, 2, x0, ts, key)[0], top)
    assert not np.array_equal(ladders.em(ladder, 1, x0, ts, key)[0], top)
    with pytest.raises(ValueError, match=r"level: must be in 1..2 \(or -1"):
        ladders.em(ladder, 0, x0, ts, key)


def test_levels_not_ordered_by_flops_are_refused(ladder):
    swapped = ladders.Ladder(ladder.names[::-1], ladder.models[::-1], ladder.params[::-1],
                            ladder.image_shape, ladder.sde)
    with pytest.raises(ValueError, match="cheapest first with strictly increasing FLOPs"):
        ladders.measure_flops(swapped, 4)


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
