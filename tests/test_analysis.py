"""Analysis numerics: envelopes, speedup interpolation, γ fits, results-dir guard, tiny sweep."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from analysis import common, cost_error, fit_gamma

# --- envelope and speedup on constructed curves -------------------------------------------


def test_lower_envelope_keeps_only_pareto_points():
    costs = np.array([1.0, 2.0, 2.0, 3.0, 4.0, 5.0])
    mses = np.array([5.0, 3.0, 4.0, 3.5, 1.0, 1.0])
    idx = common.lower_envelope(costs, mses)
    assert idx.tolist() == [0, 1, 4]  # (2,4) dominated at equal cost, (3,3.5), (5,1) dominated
    assert np.all(np.diff(costs[idx]) > 0) and np.all(np.diff(mses[idx]) < 0)


def _power_law_envelope(rng, scale, exponent, mses, dominated=3):
    """Points on ``cost = scale·mse^-exponent`` plus points dominated by some of them."""
    costs = scale * mses**-exponent
    pick = rng.choice(mses.size, dominated, replace=False)
    extra_mse, extra_cost = mses[pick] * 1.5, costs[pick] * 1.3
    return np.concatenate([costs, extra_cost]), np.concatenate([mses, extra_mse])


def test_speedup_and_mse_ratio_match_power_laws():
    """cost_em = a·m^-1.5, cost_ml = b·m^-1 ⇒ speedup(m) = (a/b)·m^-0.5,
    mse_em(c) / mse_ml(c) = (c/a)^(-2/3) / (c/b)^(-1)."""
    rng = np.random.default_rng(0)
    a, b = 2.0e6, 5.0e6
    em = _power_law_envelope(rng, a, 1.5, np.geomspace(1e-4, 1e-1, 7))
    ml = _power_law_envelope(rng, b, 1.0, np.geomspace(3e-5, 3e-2, 5))
    envs = []
    for costs, mses in (em, ml):
        idx = common.lower_envelope(costs, mses)
        envs.append((costs[idx], mses[idx]))
        assert len(idx) == len(costs) - 3  # every dominated point dropped
    grid, speedup = common.speedup_curve(envs[0], envs[1], num=50)
    assert grid[0] == pytest.approx(1e-4) and grid[-1] == pytest.approx(3e-2)
    np.testing.assert_allclose(speedup, (a / b) * grid**-0.5, rtol=1e-9)
    cost_grid, ratio = common.mse_ratio_curve(envs[0], envs[1], num=50)
    expected = (cost_grid / a) ** (-1 / 1.5) / (cost_grid / b) ** -1.0
    np.testing.assert_allclose(ratio, expected, rtol=1e-9)
    assert np.isnan(common.loglog_interp([1e-5], envs[0][1], envs[0][0])[0])  # no extrapolation


def test_analyse_reports_max_and_operating_point_from_rows():
    """The full row → summary path on constructed curves (two seeds of ML-EM)."""
    a, b = 2.0e6, 5.0e6
    rows = []
    for steps, m in zip((8, 16, 32, 64), (1e-1, 1e-2, 1e-3, 1e-4)):
        rows.append({"method": "em", "schedule": "", "level": 2, "c": float("nan"),
                     "steps": steps, "seed": 0, "mse": m, "mse_se": 0.1 * m,
                     "flops": a * m**-1.5, "wall_s": 1e-9 * a * m**-1.5})
    for steps, m in zip((4, 8, 16), (3e-2, 3e-3, 3e-4)):
        for seed, wobble in enumerate((0.9, 1.1)):
            rows.append({"method": "mlem", "schedule": "variance", "level": 2, "c": 1.0,
                         "steps": steps, "seed": seed, "mse": m * wobble, "mse_se": 0.1 * m,
                         "flops": b * m**-1.0, "wall_s": 2e-9 * b * m**-1.0})

    class Config(dict):
        __getattr__ = dict.__getitem__

    config = Config(analysis=Config(operating_point="auto"), sampling=Config(steps=32))
    result = cost_error.analyse(rows, config, num_levels=2, gamma=3.0)
    assert result["operating_point_mse"] == pytest.approx(1e-3)
    # seed-averaged ML-EM points sit exactly on b·m^-1, so the speedup is (a/b)·m^-0.5
    assert result["speedup_at_operating_point"] == pytest.approx((a / b) * 1e-3**-0.5)
    assert result["speedup_at_equal_mse_max"] == pytest.approx((a / b) * 3e-4**-0.5)
    # at ML-EM's cost for the operating MSE (b / 1e-3), EM reaches (c / a)^(-2/3)
    assert result["mse_ratio_at_equal_cost"] == pytest.approx((b / 1e-3 / a) ** (-2 / 3) / 1e-3)
    assert result["wallclock_speedup_over_flops_speedup"] == pytest.approx(0.5)
    assert result["em_envelope_slope"] == pytest.approx(-1.5)
    assert result["mlem_envelope_slope"] == pytest.approx(-1.0)
    assert result["predicted_em_slope"] == -2.0 and result["predicted_mlem_slope"] == -1.5


# --- γ fits on noisy synthetic points -----------------------------------------------------


def test_loss_floor_fit_recovers_gamma_and_ci_covers_it():
    gamma, loss_inf, amp = 2.5, 0.05, 0.4
    costs = 1e6 * 2.0 ** (gamma * np.arange(6))
    truth = loss_inf + amp * (costs / costs[0]) ** (-2 / gamma)
    rng = np.random.default_rng(1)
    n = 2000  # per-example losses: a large part shared by the levels plus one per level
    per_example = truth + rng.normal(0, 0.05, (n, 1)) + rng.normal(0, 0.02, (n, costs.size))
    losses = per_example.mean(0)
    fit = fit_gamma.fit_loss_power_law(costs, losses)
    assert fit["gamma"] == pytest.approx(gamma, rel=0.05)
    assert fit["loss_inf"] == pytest.approx(loss_inf, abs=2e-3) and not fit["at_bound"]
    boot = fit_gamma.bootstrap_loss_gamma(costs, losses, per_example, 200, seed=0)
    lo, hi = common.percentile_interval(boot)
    assert lo <= gamma <= hi and hi - lo < 0.5
    with pytest.raises(ValueError, match="needs >= 3 levels"):
        fit_gamma.fit_loss_power_law(costs[:2], losses[:2])


def test_drift_error_fit_recovers_gamma_and_ci_covers_it():
    gamma, num_levels = 3.0, 5
    costs = 1e5 * 2.0 ** (gamma * np.arange(num_levels))
    delta = 2.0 * (costs / costs[0]) ** (-1 / gamma)
    rng = np.random.default_rng(2)
    # per-sample squared errors with mean δ_k² (Gamma distributed, shape 4) for k < K; 0 for K
    error_sq = rng.gamma(4.0, 1.0 / 4.0, (3000, num_levels)) * delta**2
    error_sq[:, -1] = 0.0
    estimate, errors = fit_gamma.fit_drift_gamma(costs, error_sq)
    assert estimate == pytest.approx(gamma, rel=0.05)
    np.testing.assert_allclose(errors[:-1], delta[:-1], rtol=0.05)
    lo, hi = common.percentile_interval(fit_gamma.bootstrap_drift_gamma(costs, error_sq, 200))
    assert lo <= gamma <= hi and hi - lo < 0.5


def test_summary_uses_drift_gamma_when_available():
    result = {"loss_fit": {"gamma": 2.0, "ci": [1.0, 3.0]},
              "drift_fit": {"gamma": 2.6, "ci": [2.4, 2.8]},
              "level_flops": [1, 2, 3], "heldout_losses": [3, 2, 1], "drift_errors": [3, 2, 0]}
    summary = fit_gamma.summarise(result)
    assert (summary["gamma"], summary["gamma_source"]) == (2.6, "drift_error")
    result["drift_fit"] = {"error": "needs K >= 3"}
    summary = fit_gamma.summarise(result)
    assert (summary["gamma"], summary["gamma_ci"]) == (2.0, [1.0, 3.0])


# --- the results directory ----------------------------------------------------------------


def _fake_ladder(root, names, image_size=8):
    for i, name in enumerate(names):
        (root / name / "checkpoints" / str(10 * (i + 1))).mkdir(parents=True)
        record = {"model": {"level": f"tiny_level{i + 1}"}, "sde": {"beta_min": 0.1},
                  "data": {"name": "synthetic", "image_size": image_size, "num_channels": 1}}
        (root / name / "config.json").write_text(json.dumps(record))


class _Levels:
    def __init__(self, names):
        self.levels = tuple(names)


def test_results_dir_refuses_to_mix_configs(tmp_path):
    _fake_ladder(tmp_path / "a", ["level1", "level2"])
    _fake_ladder(tmp_path / "b", ["level1", "level2"], image_size=16)
    out = tmp_path / "results"
    manifest_a = common.make_manifest(_Levels(["level1", "level2"]), tmp_path / "a")
    common.open_results(out, manifest_a, recompute=False)
    common.merge_summary(out, {"gamma": 2.5})
    common.merge_summary(out, {"speedup": 3.0})
    assert json.loads((out / "summary.json").read_text()) == {"gamma": 2.5, "speedup": 3.0}
    common.open_results(out, manifest_a, recompute=False)  # same config: fine
    manifest_b = common.make_manifest(_Levels(["level1", "level2"]), tmp_path / "b")
    with pytest.raises(common.ResultsMismatchError, match="produced by a different config"):
        common.open_results(out, manifest_b, recompute=False)
    with pytest.raises(FileNotFoundError, match="level level3: no trained run"):
        common.make_manifest(_Levels(["level1", "level3"]), tmp_path / "a")
    common.save_stage(out, "stage", {"n": 1}, {"x": 1})
    assert common.load_stage(out, "stage", {"n": 1}) == {"x": 1}
    assert common.load_stage(out, "stage", {"n": 2}) is None  # other settings: recompute
    common.open_results(out, manifest_b, recompute=True)  # taken over; old summary set aside
    assert not (out / "summary.json").exists() and (out / "summary.previous.json").exists()
    assert common.load_stage(out, "stage", {"n": 1}) is None  # made under the old manifest


# --- the pipeline on the tiny trained ladder ----------------------------------------------


def _tiny_config():
    import ml_collections

    config = ml_collections.ConfigDict()
    config.levels = ("level1", "level2")
    config.sampling = ml_collections.ConfigDict(
        {"method": "mlem", "steps": 4, "seed": 0, "variance_file": ""})
    config.analysis = ml_collections.ConfigDict({
        "ref_steps": 8, "em_steps": (2, 8), "mlem_steps": (2, 8), "c_values": (300.0,),
        "seeds": 2, "num_samples": 8, "batch_size": 4, "num_time_bins": 2,
        "variance_samples": 8, "gamma_bootstrap": 10, "operating_point": "auto"})
    return config


@pytest.fixture(scope="module")
def tiny_results(tiny_ladder, tmp_path_factory):
    """variance + cost_error on the tiny ladder, sharing one loaded ladder (and its compiles)."""
    from analysis import variance

    ctx = common.prepare(_tiny_config(), tiny_ladder, tmp_path_factory.mktemp("results"), False)
    variance.stage(ctx)
    return ctx, cost_error.stage(ctx)


def test_fit_gamma_on_two_levels_reports_why_there_is_no_gamma(tiny_results):
    ctx, _ = tiny_results
    summary = fit_gamma.stage(ctx)
    assert summary["gamma"] is None and summary["gamma_source"] is None
    result = json.loads((ctx.out / "fit_gamma" / "stage.json").read_text())["result"]
    assert "needs >= 3 levels" in result["loss_fit"]["error"]
    assert "needs K >= 3" in result["drift_fit"]["error"]
    # the per-example losses (for the bootstrap) reproduce the logged held-out losses
    np.testing.assert_allclose(result["heldout_losses_recomputed"], result["heldout_losses"],
                               rtol=1e-5)
    assert result["drift_errors"][-1] == 0.0 and result["drift_errors"][0] > 0


def test_variance_file_is_the_agreed_format(tiny_results):
    from mlem import generation

    ctx, _ = tiny_results
    config, out = ctx.config, ctx.out
    record = json.loads((out / "variance" / "variances.json").read_text())
    assert set(record) == {"levels", "level_flops", "bin_edges", "variances", "num_samples"}
    assert np.asarray(record["variances"]).shape == (2, 2) and record["num_samples"] == 8
    assert np.all(np.asarray(record["variances"]) > 0)
    edges, variances = generation.load_variances(out / "variance" / "variances.json",
                                                 config.levels)
    assert edges[0] == 0.0 and len(edges) == 3
    # python -m sample --schedule variance reads the same file (regression: level names).
    from analysis.ladder import load_config

    variance_file = str(out / "variance" / "variances.json")
    sample_config = generation.with_overrides(load_config("configs/tiny_sample.py"),
                                              method="mlem", schedule="variance", c=300.0,
                                              variance_file=variance_file)
    stats = generation.run(sample_config, ctx.workdir, out / "sample_variance", progress=False)
    assert stats["schedule"] == "variance"
    assert stats["evals_per_level"][0] == sample_config.sampling.steps


def test_cost_error_reads_a_given_variance_file_and_checks_its_levels(tiny_results):
    ctx, _ = tiny_results
    path = ctx.out / "variance" / "variances.json"
    record = json.loads(path.read_text())
    config = ctx.config.copy_and_resolve_references()
    config.sampling.variance_file = str(path)
    got = cost_error._variances(dataclasses.replace(ctx, config=config))
    np.testing.assert_allclose(got["variances"], record["variances"])
    np.testing.assert_allclose(got["bin_edges"], record["bin_edges"])
    config.levels = list(reversed(config.levels))
    with pytest.raises(ValueError, match="rerun python -m analysis.variance"):
        cost_error._variances(dataclasses.replace(ctx, config=config))


def test_tiny_sweep_envelope_is_monotone_and_seed_averaged(tiny_results):
    ctx, summary = tiny_results
    out = ctx.out
    rows = cost_error.read_points(out / "cost_error" / "points.csv")
    assert len(rows) == 2 * 2 + 2 * 2  # EM: 2 levels × 2 steps; ML-EM: 2 steps × 2 seeds
    top_at_ref = [r for r in rows if r["method"] == "em" and r["level"] == 2 and r["steps"] == 8]
    assert top_at_ref[0]["mse"] == 0.0  # same noise and path as the reference: coupled
    envs = json.loads((out / "cost_error" / "envelopes.json").read_text())
    averaged = cost_error.seed_average(rows)
    for name, env in envs.items():
        assert np.all(np.diff(env["flops"]) > 0) and np.all(np.diff(env["mse"]) < 0)
        for p in (p for p in averaged if cost_error.curve_name(p) == name and p["mse"] > 0):
            cheaper = np.asarray(env["flops"]) <= p["flops"] * (1 + 1e-12)
            assert np.min(np.asarray(env["mse"])[cheaper]) <= p["mse"]  # nothing below it
    for point, mse in zip(envs["mlem-variance"]["points"], envs["mlem-variance"]["mse"]):
        seeds = [r["mse"] for r in rows if r["method"] == "mlem" and r["steps"] == point["steps"]]
        assert len(seeds) == 2
        assert mse == pytest.approx(np.mean(seeds))  # the seed mean, never the best seed
    assert summary["operating_point_mse"] == pytest.approx(  # sampling.steps=4: nearest is 2
        next(r["mse"] for r in rows if r["method"] == "em" and r["level"] == 2
             and r["steps"] == 2))
    assert (out / "cost_error" / "cost_error.png").exists()
    assert (out / "cost_error" / "cost_error.pdf").exists()


def test_tiny_sweep_reuses_points_and_refuses_other_ladder(tiny_results, tiny_ladder):
    ctx, summary = tiny_results
    out = ctx.out
    before = (out / "cost_error" / "points.csv").read_text()
    again = cost_error.stage(ctx)  # everything on disk: nothing recomputed
    assert (out / "cost_error" / "points.csv").read_text() == before
    assert again["speedup_at_operating_point"] == summary["speedup_at_operating_point"]
    other = _tiny_config()
    other.levels = ("level1",)
    with pytest.raises(common.ResultsMismatchError, match="use another --out or --recompute"):
        cost_error.run(other, tiny_ladder, out)
