"""Analysis numerics: envelopes, speedup interpolation, γ fits, results-dir guard, tiny sweep."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from analysis import common, comparison, cost_error, fit_gamma, quality
from mlem.eval import metrics as mlem_quality
from mlem.eval import speedup

_REAL_FEATURES_FOR = quality.features_for  # the tiny fixture patches it

# The tests that use the session's tiny trained ladder share one xdist worker (it is
# trained once): tests/conftest.py.
pytestmark = pytest.mark.xdist_group("tiny_ladder")

# --- the sweep's statistics on constructed rows ---------------------------------------------


def _rows(realisations=4):
    """EM at cost a·m^-1.5 and the FLOP-priced ML-EM at b·m^-1, per realisation (rows as
    points.csv holds them); ML-EM's errors wobble by realisation, EM's do not. Realisations
    ``realisations`` and ``realisations + 1`` (selection) repeat the first and the last, so
    the selection means are exact too."""
    a, b = 2.0e6, 5.0e6
    rows = []
    wobble = np.linspace(0.8, 1.2, realisations)
    for r in range(realisations + 2):
        w = wobble[r] if r < realisations else wobble[0 if r == realisations else -1]
        for steps, m in zip((8, 16, 32, 64), (1e-1, 1e-2, 1e-3, 1e-4)):
            rows.append({"curve": "em", "method": "em", "level": 2, "top": 2, "top_evals": 0.0,
                         "c": np.nan, "steps": steps, "realisation": r, "mse": m,
                         "expected_flops": a * m**-1.5, "flops": a * m**-1.5,
                         "seconds": 1e-9 * a * m**-1.5})
        for steps, m in zip((4, 8, 16, 32), (3e-2, 3e-3, 3e-4, 3e-5)):
            rows.append({"curve": "mlem-variance-flops", "method": "mlem", "level": 2, "top": 2,
                         "top_evals": 1.0, "c": 1.0, "steps": steps, "realisation": r,
                         "mse": m * w, "expected_flops": b * m**-1.0,
                         "flops": b * m**-1.0 / w, "seconds": 2e-9 * b * m**-1.0})
    return rows, a, b


class Config(dict):
    __getattr__ = dict.__getitem__


def _config(**analysis):
    fields = dict(operating_point="auto", speedup_bootstrap=200, schedules=("variance",),
                  cost_models=("flops",), realisations=4, target_ratios=(2.0, 1.0, 0.5))
    return Config(analysis=Config({**fields, **analysis}), sampling=Config(steps=32))


def test_analyse_reports_the_headline_at_predeclared_targets_from_rows():
    rows, a, b = _rows()
    result = comparison.analyse(rows, _config(), num_levels=2)
    flops, wall = result["speedup_at_equal_mse"], result["wallclock_speedup_at_equal_mse"]
    assert flops["operating_point_mse"] == pytest.approx(1e-3)  # EM's, on the selection ones
    # realisation-averaged ML-EM errors sit exactly on b·m^-1 (the wobble averages to 1)
    assert flops["at_operating_point"] == pytest.approx((a / b) * 1e-3**-0.5)
    for name, m in (("2x operating MSE", 2e-3), ("0.5x operating MSE", 5e-4)):
        assert flops["targets"][name]["value"] == pytest.approx((a / b) * m**-0.5)
    assert not {"max", "max_ci", "max_at_mse"} & set(flops)  # no maximum anywhere
    lo, hi = flops["at_operating_point_ci"]
    assert lo < flops["at_operating_point"] < hi  # the realisations' spread, resampled
    assert flops["not_reached_fraction"] == {"base": 0.0, "other": 0.0}
    assert "realisations" in flops["chosen_on"] and "Hesterberg" in flops["interval"]
    # ML-EM's seconds are twice its FLOPs' worth: the wall-clock speedup is half
    assert wall["at_operating_point"] == pytest.approx(0.5 * flops["at_operating_point"])
    assert wall["curve"] == flops["curve"] == "mlem-variance-flops"  # the only curve swept
    ratio = result["mse_ratio_at_equal_cost"]  # at EM's operating FLOPs, a·1e-3^-1.5
    assert ratio["at_cost_flops"] == pytest.approx(a * 1e-3**-1.5)
    assert ratio["value"] == pytest.approx(1e-3 / (b / (a * 1e-3**-1.5)))
    assert result["num_realisations"] == 4 and result["num_selection_realisations"] == 2
    # ML-EM's cost at the operating MSE in calls of the top level (EM's 32 steps: a·1e-3^-1.5)
    evals = result["top_level_evals_at_operating_point"]["value"]
    assert evals == pytest.approx((b / 1e-3) / (a * 1e-3**-1.5 / 32))
    assert result["best_method"] == "mlem-variance-flops"


def test_a_target_the_evaluation_realisations_miss_is_not_reached_and_counted():
    rows, _, _ = _rows()
    for r in rows:  # ML-EM's dearest points are bad on the evaluation realisations only
        if r["curve"] != "em" and r["steps"] >= 16 and r["realisation"] < 4:
            r["mse"] *= 100
    result = comparison.analyse(rows, _config(), num_levels=2)
    head = result["speedup_at_equal_mse"]
    assert head["at_operating_point"] is None  # "not reached": no value ...
    assert head["at_operating_point_ci"][0] == 0.0  # ... and failures in the interval
    assert head["not_reached_fraction"]["other"] > 0.5
    with pytest.raises(ValueError, match="selection_realisations"):
        comparison.analyse([r for r in rows if r["realisation"] < 4], _config(), num_levels=2)


def test_best_variant_is_chosen_on_selection_realisations_and_judged_on_the_others():
    """Two ML-EM variants: 'constant' is 4x cheaper on the evaluation realisations but far
    worse on the selection ones; the headline must report 'variance' (chosen on selection)
    with statistics from the evaluation realisations only."""
    rows, a, b = _rows()
    for r in [dict(r) for r in rows if r["curve"] == "mlem-variance-flops"]:
        r["curve"], r["schedule"] = "mlem-constant-flops", "constant"
        r["expected_flops"] /= 4
        if r["realisation"] >= 4:
            r["mse"] *= 100
        rows.append(r)
    result = comparison.analyse(rows, _config(speedup_bootstrap=50), num_levels=2)
    assert result["best_method"] == result["best_method_seconds"] == "mlem-variance-flops"
    assert result["num_realisations"] == 4 and result["num_selection_realisations"] == 2
    scores = result["best_method_selection"]["scores"]["flops"]["scores"]
    assert scores["mlem-constant-flops"] < scores["mlem-variance-flops"]
    flops = result["speedup_at_equal_mse"]
    assert flops["curve"] == "mlem-variance-flops"
    assert flops["at_operating_point"] == pytest.approx((a / b) * 1e-3**-0.5)  # evaluation only
    constant = result["comparisons"]["mlem-constant-flops"]["flops"]["targets"]
    assert constant["operating point"]["speedup"]["value"] == pytest.approx(
        4 * flops["at_operating_point"])


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
    lo, hi = speedup.percentile_interval(boot)
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
    lo, hi = speedup.percentile_interval(fit_gamma.bootstrap_drift_gamma(costs, error_sq, 200))
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


class _Loaded:
    """What make_manifest reads of a loaded ladder: restored steps and parameter digests."""

    def __init__(self, digests=("aa", "bb")):
        self.steps, self.digests = (10, 20), digests


def test_results_dir_refuses_to_mix_configs(tmp_path):
    _fake_ladder(tmp_path / "a", ["level1", "level2"])
    _fake_ladder(tmp_path / "b", ["level1", "level2"], image_size=16)
    out = tmp_path / "results"
    manifest_a = common.make_manifest(_Levels(["level1", "level2"]), tmp_path / "a", _Loaded())
    common.open_results(out, manifest_a, recompute=False)
    common.merge_summary(out, {"gamma": 2.5})
    common.merge_summary(out, {"speedup": 3.0})
    assert json.loads((out / "summary.json").read_text()) == {"gamma": 2.5, "speedup": 3.0}
    common.open_results(out, manifest_a, recompute=False)  # same config: fine
    manifest_b = common.make_manifest(_Levels(["level1", "level2"]), tmp_path / "b", _Loaded())
    with pytest.raises(common.ResultsMismatchError, match="produced by a different config"):
        common.open_results(out, manifest_b, recompute=False)
    retrained = common.make_manifest(_Levels(["level1", "level2"]), tmp_path / "a",
                                     _Loaded(("aa", "cc")))  # same configs, other weights
    with pytest.raises(common.ResultsMismatchError, match="levels differ"):
        common.open_results(out, retrained, recompute=False)
    common.save_stage(out, "stage", {"n": 1}, {"x": 1})
    assert common.load_stage(out, "stage", {"n": 1}) == {"x": 1}
    assert common.load_stage(out, "stage", {"n": 2}) is None  # other settings: recompute
    common.open_results(out, manifest_b, recompute=True)  # taken over; old summary set aside
    assert not (out / "summary.json").exists() and (out / "summary.previous.json").exists()
    assert common.load_stage(out, "stage", {"n": 1}) is None  # made under the old manifest


# --- the pipeline on the tiny trained ladder ----------------------------------------------


def _tiny_config():
    from configs import tiny_sample

    config = tiny_sample.get_config()
    config.sampling.steps, config.sampling.path_steps = 2, 8
    a = config.analysis
    a.ref_steps, a.em_steps, a.mlem_steps, a.top_evals = 8, (1, 2), (2,), (0.5, 1.0)
    a.realisations, a.batch_size, a.speedup_bootstrap = 3, 4, 50
    a.selection_realisations, a.pattern_search, a.pattern_steps = 2, 3, (2,)
    a.num_time_bins, a.variance_samples, a.gamma_bootstrap = 2, 8, 10
    return config


def _projection_features() -> quality.Features:
    """Quality features for the tiny (synthetic 8×8×3) ladder: a fixed random projection of
    the pixels, judged against projected noise images (the plumbing, not the values)."""
    w = np.random.default_rng(0).normal(size=(8 * 8 * 3, 6)).astype(np.float32) / 8.0
    fn = lambda x: np.asarray(x, np.float32).reshape(len(x), -1) @ w
    data = fn(np.random.default_rng(1).uniform(-1, 1, (40, 8, 8, 3)))
    return quality.Features("projection", fn, data, mlem_quality.gaussian_stats(data),
                            {"features": "projection", "data": "40 noise images"})


@pytest.fixture(scope="session")
def tiny_results(tiny_ladder, tmp_path_factory):
    """variance + cost_error (with KID/FD on projection features) on the tiny ladder, sharing
    one loaded ladder (and its compiles). Session-scoped: under pytest-xdist the worker that
    runs the ``tiny_ladder`` group may interleave this module's tests with the group's other
    modules, which would tear a module-scoped fixture down and compute it again."""
    from analysis import variance

    ctx = common.prepare(_tiny_config(), tiny_ladder, tmp_path_factory.mktemp("results"), False)
    variance.stage(ctx)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(quality, "features_for", lambda ctx: _projection_features())
        yield ctx, cost_error.stage(ctx)


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
    from mlem.config_files import load_config

    variance_file = str(out / "variance" / "variances.json")
    sample_config = generation.with_overrides(load_config("configs/tiny_sample.py"),
                                              method="mlem", schedule="variance", c=300.0,
                                              variance_file=variance_file)
    stats = generation.run(sample_config, ctx.workdir, out / "sample_variance", progress=False)
    assert stats["schedule"] == "variance" and stats["cost_model"] == "time"
    assert len(stats["level_seconds_per_call"]) == 2 and min(stats["level_seconds_per_call"]) > 0
    assert 0 < stats["evals_per_level"][1] <= sample_config.sampling.steps


def test_cost_error_reads_a_given_variance_file_and_checks_its_levels(tiny_results):
    ctx, _ = tiny_results
    path = ctx.out / "variance" / "variances.json"
    record = json.loads(path.read_text())
    config = ctx.config.copy_and_resolve_references()
    config.sampling.variance_file = str(path)
    got = cost_error.variances_for(dataclasses.replace(ctx, config=config))
    np.testing.assert_allclose(got["variances"], record["variances"])
    np.testing.assert_allclose(got["bin_edges"], record["bin_edges"])
    config.levels = list(reversed(config.levels))
    with pytest.raises(ValueError, match="rerun python -m analysis.variance"):
        cost_error.variances_for(dataclasses.replace(ctx, config=config))


def test_tiny_sweep_rows_envelopes_and_headline(tiny_results):
    ctx, summary = tiny_results
    stage = ctx.out / "cost_error"
    rows = cost_error.read_points(stage / "points.csv")
    # EM: 2 levels × 2 grids; ML-EM: 2 cost models × 1 grid × 2 top_evals; switching: level 1
    # then the top, 1 switch time × 2 grids; pattern search: 1 grid × 2 top_evals;
    # × (3 evaluation + 2 selection) realisations
    assert len(rows) == (2 * 2 + 2 * 2 + 2 + 2) * 5
    rows = [r for r in rows if r["realisation"] < 3]  # the statistics use only these
    assert {r["curve"] for r in rows} == {"em", "mlem-variance-flops", "mlem-variance-time",
                                          "switch", "mlem-pattern"}
    for r in rows:  # seconds: timed as deployed, or NaN off every seconds path
        assert not r["seconds"] <= 0 and r["expected_flops"] > 0 and r["mse"] > 0
        if r["method"] in ("em", "switch", "pattern"):  # deterministic cost
            assert r["flops"] == r["expected_flops"]
        if r["method"] == "switch":  # level 1 on the steps starting in the first half
            first = -(-r["steps"] // 2)
            assert r["evals"] == f"{first};{r['steps'] - first}"
    searched = summary["pattern_search"]  # one report per searched point, its row's numbers
    assert len(searched) == 2
    for report in searched.values():
        assert report["num_patterns"] == 3 and 0 <= report["index"] < 3
        mine = [r for r in rows if r["method"] == "pattern"
                and r["top_evals"] == report["point"]["top_evals"]]
        assert report["evaluation_mse"] == pytest.approx(np.mean([r["mse"] for r in mine]),
                                                         rel=1e-5)
        assert report["expected_flops"] == pytest.approx(mine[0]["expected_flops"])
        assert report["bias_against_top_level_em"]["difference_sq"] > 0
    assert "mlem-pattern" not in summary["best_method_selection"]["scores"]["flops"]["scores"]
    from analysis import report

    printed = report.report([ctx.out])  # README's table: the searched points and the headline
    assert printed.count("| steps=2,top_evals=") == 2
    assert f"variant {summary['best_method']}" in printed
    envs = json.loads((stage / "envelopes.json").read_text())
    configs, sweep = comparison.table(rows)
    mse, _ = sweep.means(np.arange(3))
    for curve, by_ruler in envs.items():
        for env in by_ruler.values():
            assert np.all(np.diff(env["cost"]) > 0) and np.all(np.diff(env["mse"]) < 0)
            for point, m in zip(env["points"], env["mse"]):  # the realisation mean, never the best
                i = next(i for i, c in enumerate(configs) if c["curve"] == curve
                         and c["steps"] == point["steps"] and c["level"] == point["level"]
                         and c["top_evals"] == point["top_evals"])
                assert m == pytest.approx(mse[i]) and m > sweep.error[i].min()
    for key in ("speedup_at_equal_mse", "wallclock_speedup_at_equal_mse"):
        head = summary[key]
        assert {"at_operating_point", "at_operating_point_ci", "operating_point_mse",
                "not_reached_fraction", "targets", "interval", "chosen_on"} <= set(head)
        assert "max" not in head
        lo, hi = head["at_operating_point_ci"]  # failures counted: 0 or inf may bound it
        assert head["at_operating_point"] is None or lo <= head["at_operating_point"] <= hi
    assert summary["num_realisations"] == 3 and summary["num_selection_realisations"] == 2
    assert summary["best_method"] == summary["speedup_at_equal_mse"]["curve"]  # chosen on 3, 4
    assert summary["best_method_seconds"] == summary["wallclock_speedup_at_equal_mse"]["curve"]
    evals = summary["top_level_evals_at_operating_point"]["value"]  # undefined iff the speedup is
    assert (evals is None) == (summary["speedup_at_equal_mse"]["at_operating_point"] is None)
    assert evals is None or evals > 0
    assert set(summary["mse_ratio_at_equal_cost"]) >= {"value", "ci", "at_cost_flops"}
    versus = summary["speedup_over_switching_at_equal_mse"]  # ML-EM against the baseline
    assert versus["curve"] == summary["best_method"] and versus["against"] == "switch"
    selection = [r for r in cost_error.read_points(stage / "points.csv") if r["realisation"] >= 3]
    top_em = [r for r in selection if r["curve"] == "em" and r["level"] == 2 and r["steps"] == 2]
    assert summary["speedup_at_equal_mse"]["operating_point_mse"] == pytest.approx(
        np.mean([r["mse"] for r in top_em]))  # the target comes from the selection ones
    timings = json.loads((stage / "timings.json").read_text())  # seconds as deployed
    wanted = cost_error.timed_configurations(  # chosen on the selection realisations only
        cost_error.read_points(stage / "points.csv"), ctx.config, ctx.seconds, 2)
    assert set(timings) == {"|".join(comparison.config_key(c)) for c in wanted}
    for r in rows:  # a row's seconds are its configuration's median, NaN when not timed
        record = timings.get("|".join(comparison.config_key(r)))
        assert r["seconds"] == record["seconds"] if record else np.isnan(r["seconds"])
    speedups = json.loads((stage / "speedup.json").read_text())
    configs_all, _ = comparison.table(cost_error.read_points(stage / "points.csv"))
    for by_ruler in speedups["comparisons"].values():  # every seconds path is timed
        for path in by_ruler["seconds"]["paths"].values():
            for i in path:
                assert "|".join(comparison.config_key(configs_all[i])) in timings
    for record in timings.values():
        assert record["batch_size"] == 4 and record["repeats"] == 3 and len(record["calls"]) == 3
        assert record["seconds_min"] <= record["seconds"] <= record["seconds_max"]
    assert "batch 4, median of 3 calls" in summary["timing_record"]
    for name in ("cost_error.png", "cost_error.pdf", "cost_error_seconds.png"):
        assert (stage / name).exists()


def test_ml_em_points_sit_at_their_expected_cost_for_the_requested_top_level_evaluations(
        tiny_results):
    from mlem import cost, schedules

    ctx, _ = tiny_results
    rows = cost_error.read_points(ctx.out / "cost_error" / "points.csv")
    variances = json.loads((ctx.out / "variance" / "variances.json").read_text())
    ts = np.asarray(ctx.ladder.sde.time_grid(8))[::4]
    for r in (r for r in rows if r["curve"] == "mlem-variance-flops"):
        c, probs = cost_error.make_probs("variance", ctx.flops, ts, variances, None,
                                         r["top_evals"])
        assert c == pytest.approx(r["c"]) and schedules.top_evals(probs) == pytest.approx(
            r["top_evals"])
        assert r["expected_flops"] == pytest.approx(cost.expected_cost(probs, ctx.flops))


def test_reference_is_keyed_and_the_grid_rule_is_enforced(tiny_results, capsys):
    ctx, _ = tiny_results
    stage = ctx.out / "cost_error"
    good = np.load(stage / "reference.npy")
    key = json.loads((stage / "reference.json").read_text())
    assert key["ref_steps"] == 8 and key["realisations"] == 5 and key["param_sha256"]
    np.save(stage / "reference.npy", np.zeros_like(good))  # stale values under the right key
    stale = dict(key, steps=[0, 0])  # ... then under a key of other checkpoints
    (stage / "reference.json").write_text(json.dumps(stale))
    from mlem import parallel

    coupling = cost_error.Coupling(0, np.asarray(ctx.ladder.sde.time_grid(8), np.float32), 4,
                                   ctx.ladder.image_shape, parallel.make_mesh())
    again = cost_error.reference(ctx, ctx.ladder, coupling, 5)
    assert "recomputing it" in capsys.readouterr().out
    np.testing.assert_allclose(again, good, rtol=1e-6)
    assert json.loads((stage / "reference.json").read_text()) == key
    config = _tiny_config()
    config.analysis.ref_steps = 4
    with pytest.raises(ValueError, match="at least 4x finer than the finest swept grid"):
        cost_error.check_grids(config)


def test_tiny_sweep_reuses_points_and_refuses_other_ladder(tiny_results, tiny_ladder):
    ctx, summary = tiny_results
    out = ctx.out
    before = (out / "cost_error" / "points.csv").read_text()
    again = cost_error.stage(ctx)  # everything on disk: nothing recomputed
    assert (out / "cost_error" / "points.csv").read_text() == before
    assert again["cost_error_runs_computed_last_call"] == 0
    assert again["speedup_at_equal_mse"] == summary["speedup_at_equal_mse"]
    other = _tiny_config()
    other.levels = ("level1",)
    with pytest.raises(common.ResultsMismatchError, match="use another --out or --recompute"):
        cost_error.run(other, tiny_ladder, out)


def test_report_prints_the_tables_from_the_results_dir(tiny_results, capsys):
    from analysis import report

    ctx, summary = tiny_results
    text = report.report([ctx.out])
    head = summary["speedup_at_equal_mse"]
    row = next(line for line in text.splitlines() if "at operating point (MSE" in line)
    assert report.fmt_ci(head["at_operating_point_ci"]) in row  # value, interval, failures
    assert report.fmt_value(head["at_operating_point"], "×") in row
    assert f"{head['against']} " in row and f"{head['curve']} " in row  # failure fractions
    assert "Hesterberg" in text and "selection realisations" in text
    assert "maximum" not in text and "| mlem-variance-time | seconds |" in text
    assert text.strip().splitlines()[-1].startswith("In wall-clock time")
    with pytest.raises(FileNotFoundError):
        report.report([ctx.out / "missing"])


def test_tiny_sweep_keeps_features_of_every_solve_and_reports_kid(tiny_results):
    from analysis import report

    ctx, summary = tiny_results
    stage = ctx.out / "cost_error"
    rows = cost_error.read_points(stage / "points.csv")
    store = quality.load_row_features(stage / quality.FEATURES_FILE)
    assert set(store) == {quality.row_id(r) for r in rows}  # one (B, d) array per solve
    assert all(v.shape == (4, 6) for v in store.values())
    methods = {"em", "em-level1", "em-level2", "mlem-variance-flops", "mlem-variance-time",
               "switch", "mlem-pattern"}
    assert set(summary["kid_at_operating_cost"]) == methods
    assert set(summary["cost_to_reach_top_level_kid"]) == methods
    top = summary["top_level_kid"]
    assert top["lo"] <= top["value"] <= top["hi"]
    em = summary["kid_at_operating_cost"]["em-level2"]  # the operating point itself: 2 steps
    assert em["steps"] == 2 and em["flops"] == pytest.approx(2 * ctx.flops[-1])
    # the features of that point's evaluation realisations give its KID
    f = [store[quality.row_id({"curve": "em", "level": 2, "top": 2, "top_evals": 0, "switch_at": 0,
                               "steps": 2, "realisation": r})] for r in range(3)]
    data = quality.features_for(ctx).data
    assert em["kid"]["value"] == pytest.approx(mlem_quality.kid(np.concatenate(f), data, 50,
                                                                1000))
    for ruler in ("", "_seconds"):
        assert (stage / f"quality{ruler}.png").is_file()
    assert "first reaches the top level's KID" in report.report([ctx.out])


def test_tiny_sweep_recomputes_a_solve_whose_features_are_missing(tiny_results):
    ctx, summary = tiny_results
    path = ctx.out / "cost_error" / quality.FEATURES_FILE
    store = quality.load_row_features(path)
    dropped = "|".join(comparison.config_key({"curve": "em", "level": 1, "top": 1, "top_evals": 0,
                                              "switch_at": 0, "steps": 1})) + "|r4"
    np.savez(path, **{k: v for k, v in store.items() if k != dropped})
    again = cost_error.stage(ctx)
    assert again["cost_error_runs_computed_last_call"] == 5  # that configuration, 5 realisations
    assert set(quality.load_row_features(path)) == set(store)
    assert again["speedup_at_equal_mse"] == summary["speedup_at_equal_mse"]


def test_quality_features_say_what_to_set(tiny_results, tmp_path):
    ctx, _ = tiny_results
    config = ctx.config.copy_and_resolve_references()
    features_for = _REAL_FEATURES_FOR
    for kind, error, message in (
            ("classifier", ValueError, "the ladder is trained on synthetic"),
            ("inception", FileNotFoundError, "inception_weights: Inception weights file"),
            ("pixels", ValueError, "choose '', classifier, inception")):
        config.analysis.quality.features = kind
        with pytest.raises(error, match=message):
            features_for(dataclasses.replace(ctx, config=config))
    weights = tmp_path / "w.npz"
    np.savez(weights, x=np.zeros(1))
    config.analysis.quality.features, config.analysis.quality.inception_weights = (
        "inception", str(weights))
    with pytest.raises(FileNotFoundError, match="python -m analysis.reference_stats"):
        features_for(dataclasses.replace(ctx, config=config))
    config.analysis.quality.features = ""
    assert features_for(dataclasses.replace(ctx, config=config)) is None


def test_inception_features_read_the_reference_file(tiny_results, tmp_path):
    """'inception' features: the weights and the file of analysis.reference_stats, read once
    (its KID rows and saved (μ, Σ)); the record pins both files by digest."""
    from analysis import reference_stats
    from mlem import files
    from mlem.eval import inception
    from tests import helpers

    ctx, _ = tiny_results
    weights, reference = tmp_path / "w.npz", tmp_path / "ref.npz"
    np.savez(weights, **helpers.inception_state_dict(inception.random_variables(seed=0)))
    rows = np.random.default_rng(0).normal(size=(5, inception.FEATURES))
    mu, sigma = mlem_quality.gaussian_stats(rows)
    reference_stats.save_reference(reference, reference_stats.ReferenceStats(
        mu, sigma, np.arange(5), rows.astype(np.float32), 5), {"num_images": 5})
    config = ctx.config.copy_and_resolve_references()
    q = config.analysis.quality
    q.features, q.inception_weights, q.reference = "inception", str(weights), str(reference)
    feats = _REAL_FEATURES_FOR(dataclasses.replace(ctx, config=config))
    np.testing.assert_array_equal(feats.data, rows.astype(np.float32))
    np.testing.assert_array_equal(feats.data_stats[1], sigma)
    assert feats.record["reference_sha256"] == files.file_sha256(reference)


def _quality_rows(shift_b: float):
    """Rows and features of EM (2 grids) and one ML-EM curve (2 points) on 4 evaluation and 2
    selection realisations; ML-EM's features are the data's shifted by ``shift_b``."""
    rng = np.random.default_rng(0)
    rows, store = [], {}
    points = [("em", "em", 2, 4, 0.0, 4e6, (1e-2, 1e-2)),
              ("em", "em", 2, 8, 0.0, 8e6, (1e-3, 1e-3)),
              ("mlem-variance-flops", "mlem", 2, 8, 1.0, 3e6, (2e-3, 9e-3)),
              ("mlem-variance-flops", "mlem", 2, 16, 2.0, 3.5e6, (5e-3, 1e-3))]
    for curve, method, level, steps, top, flops, (mse_eval, mse_select) in points:
        for r in range(6):
            row = {"curve": curve, "method": method, "level": level, "top": level,
                   "top_evals": top,
                   "switch_at": 0.0, "steps": steps, "realisation": r, "c": 1.0,
                   "mse": mse_eval if r < 4 else mse_select, "expected_flops": flops,
                   "flops": flops, "seconds": flops * 1e-9}
            rows.append(row)
            store[quality.row_id(row)] = rng.normal(size=(30, 5)) + (
                shift_b if method == "mlem" else 0.0)
    data = rng.normal(size=(200, 5))
    feats = quality.Features("test", lambda x: x, data, mlem_quality.gaussian_stats(data),
                             {"features": "test", "data": "normal"})
    # the reference solves: EM's 4-step samples (so its KID is the top level's exactly)
    reference = [store[quality.row_id({**rows[0], "realisation": r})] for r in range(4)]
    return rows, store, reference, feats


def test_quality_envelope_is_chosen_on_selection_realisations_and_the_verdict_is_paired():
    config = _tiny_config()
    config.analysis.realisations, config.analysis.selection_realisations = 4, 2
    config.sampling.steps = 8
    config.analysis.quality.bootstrap, config.analysis.quality.kid_subsets = 40, 10
    rows, store, reference, feats = _quality_rows(shift_b=1.5)
    result = quality.analyse(rows, store, reference, feats, config, 2, "mlem-variance-flops")
    ml = result["methods"]["mlem-variance-flops"]["flops"]
    # on the evaluation MSE the 8-step point would be the better one; the selection MSE (9e-3
    # vs 1e-3) keeps both, in cost order, and the operating FLOPs (8e6) take the costlier
    assert [p["steps"] for p in ml["envelope"]] == [8, 16]
    assert ml["at_operating_cost"]["steps"] == 16
    assert result["methods"]["em"]["flops"]["at_operating_cost"]["steps"] == 8
    worse = result["best_minus_em_at_operating_cost"]
    assert worse["lo"] > 0 and "is worse than EM in KID" in worse["verdict"]
    assert ml["reaches_top_level_kid_at"] is None  # shifted: never as good as the top level
    assert result["methods"]["em"]["flops"]["reaches_top_level_kid_at"]["steps"] == 4
    rows, store, reference, feats = _quality_rows(shift_b=0.0)
    same = quality.analyse(rows, store, reference, feats, config, 2, "mlem-variance-flops")
    d = same["best_minus_em_at_operating_cost"]
    assert d["lo"] < 0 < d["hi"] and "equal to EM within the interval" in d["verdict"]


def test_pattern_search_needs_selection_realisations_and_swept_grids():
    config = _tiny_config()
    points = cost_error.configurations(config, 2)
    assert [p["steps"] for p in points if p["method"] == "pattern"] == [2, 2]
    config.analysis.pattern_steps = (8,)
    with pytest.raises(ValueError, match="pattern_steps: list grids of mlem_steps"):
        cost_error.configurations(config, 2)
    config.analysis.selection_realisations = 0
    with pytest.raises(ValueError, match="selection_realisations >= 1"):
        cost_error.configurations(config, 2)
    config.analysis.pattern_search = 0  # off: no pattern points, whatever the other fields
    assert not [p for p in cost_error.configurations(config, 2) if p["method"] == "pattern"]


def test_timed_configurations_are_the_selection_envelopes_in_predicted_seconds():
    """Only configurations that a seconds path can use are timed: chosen on the selection
    realisations (the evaluation ones cannot change the choice), by predicted seconds."""
    config = _tiny_config()  # 3 evaluation + 2 selection realisations, operating point 2 steps

    def rows(selection_mse, evaluation_mse=1.0):
        out = []
        for level, steps, mse in ((2, 1, 4.0), (2, 2, 2.0), (1, 2, 3.0), (1, 1, 5.0)):
            for r in range(5):
                out.append({"curve": "em", "method": "em", "level": level, "top": level,
                            "top_evals": 0.0,
                            "switch_at": 0.0, "steps": steps, "realisation": r,
                            "mse": selection_mse.get((level, steps), mse) if r >= 3
                            else evaluation_mse, "seconds": np.nan, "flops": 1.0,
                            "expected_flops": 1.0, "evals": f"{steps}"})
        return out

    key = lambda c: (c["level"], c["steps"])
    level_seconds = np.array([1.0, 3.0])  # predicted: (2,1) 3, (2,2) 6, (1,2) 2, (1,1) 1
    # envelope: (1,1) 1 s/5, (1,2) 2 s/3, (2,2) 6 s/2; (2,1) 3 s/4 is dominated by (1,2)
    got = cost_error.timed_configurations(rows({}), config, level_seconds, 2)
    assert sorted(map(key, got)) == [(1, 1), (1, 2), (2, 2)]
    got = cost_error.timed_configurations(rows({}, evaluation_mse=9.0), config, level_seconds, 2)
    assert sorted(map(key, got)) == [(1, 1), (1, 2), (2, 2)]  # evaluation rows change nothing
    # the operating point (top level, 2 steps) is timed even when off the envelope
    got = cost_error.timed_configurations(rows({(2, 2): 6.0, (2, 1): 1.0}), config,
                                         level_seconds, 2)
    assert sorted(map(key, got)) == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_prefix_ladders_are_swept_for_ml_em_and_switching():
    from configs import mnist_sample

    config = mnist_sample.get_config()
    config.analysis.prefix_tops = (2, 3)
    points = cost_error.configurations(config, 4)
    ml = {(p["top"], p["level"]) for p in points if p["method"] == "mlem"}
    assert ml == {(2, 2), (3, 3), (4, 4)}  # ML-EM's level is its ladder's top
    switch = {(p["level"], p["top"]) for p in points if p["method"] == "switch"}
    assert switch == {(1, 2), (1, 3), (2, 3), (1, 4), (2, 4), (3, 4)}
    assert all(p["top"] == p["level"] for p in points if p["method"] == "em")
    assert len({comparison.config_key(p) for p in points}) == len(points)
    config.analysis.prefix_tops = (1,)  # a one-level "ladder" is EM
    with pytest.raises(ValueError, match="prefix_tops: prefix ladders 1..k need 2 <= k < 4"):
        cost_error.configurations(config, 4)
    variances = {"bin_edges": [0.0, 1.0], "variances": [[4.0, 3.0, 2.0, 1.0]]}
    assert cost_error.prefix_variances(variances, 2)["variances"] == [[4.0, 3.0]]


def test_oracle_framing_uses_only_the_levels_below_the_oracle(tmp_path):
    """EM at levels 1–3 costs ε^-1.5, ML-EM on the prefix 1–3 ε^-1.0; an ML-EM on the whole
    ladder (it uses the oracle's own level) that would win everywhere is not in this framing."""
    config = _tiny_config()
    config.analysis.realisations, config.analysis.selection_realisations = 6, 3
    config.analysis.oracle_targets = (1e-3, 3e-4, 1e-4)
    config.analysis.speedup_bootstrap = 200
    rng = np.random.default_rng(0)
    rows = []
    for r in range(9):
        wobble = np.exp(0.05 * rng.standard_normal())
        for level, floor in ((1, 3e-3), (2, 3e-4), (3, 3e-5)):  # the network error falls
            for steps in (8, 16, 32, 64, 128):
                m = floor + 0.05 / steps**1.5
                rows.append({"curve": "em", "method": "em", "level": level, "top": level,
                             "top_evals": 0.0, "switch_at": 0.0, "steps": steps,
                             "realisation": r, "c": np.nan, "mse": m * wobble,
                             "expected_flops": 10.0**level * steps, "flops": 10.0**level * steps,
                             "seconds": 1e-3 * 10.0**level * steps, "evals": f"{steps}"})
        for top, steps in ((3, s) for s in (8, 16, 32, 64, 128)):
            for t in (1.0, 4.0):
                m = 3e-5 + 0.05 / steps**1.5 / t
                rows.append({"curve": "mlem-variance-flops", "method": "mlem", "level": top,
                             "top": top, "top_evals": t, "switch_at": 0.0, "steps": steps,
                             "realisation": r, "c": 1.0, "mse": m * wobble,
                             "expected_flops": 50.0 * steps + 1e3 * t,
                             "flops": 50.0 * steps + 1e3 * t,
                             "seconds": 1e-3 * (50.0 * steps + 1e3 * t), "evals": "1;1;1"})
        rows.append({"curve": "mlem-variance-flops", "method": "mlem", "level": 4, "top": 4,
                     "top_evals": 1.0, "switch_at": 0.0, "steps": 8, "realisation": r,
                     "c": 1.0, "mse": 1e-9, "expected_flops": 1.0, "flops": 1.0,
                     "seconds": 1e-3, "evals": "1;1;1;1"})
    out = comparison.analyse_oracle(rows, config, 4)
    assert list(out["targets"]) == ["MSE 0.001", "MSE 0.0003", "MSE 0.0001"]
    assert out["levels"] == [1, 2, 3] and set(out["comparisons"]) == {"mlem-variance-flops vs em"}
    flops = out["comparisons"]["mlem-variance-flops vs em"]["flops"]
    configs, _ = comparison.table(comparison.oracle_rows(rows, 4))
    assert all(configs[i]["top"] < 4 for path in flops["paths"].values() for i in path)
    for t in flops["targets"].values():  # reached by both, ML-EM cheaper at the finer targets
        assert t["not_reached"] == {"base": 0.0, "other": 0.0}
    assert flops["targets"]["MSE 0.0001"]["speedup"]["value"] > 1
    assert flops["exponents"]["difference"]["value"] > 0
    from analysis import report

    printed = report.oracle_rows(common.jsonable(out), 0.5)
    assert sum(line.startswith("| mlem-variance-flops vs em | flops | ") for line in printed) == 4
    assert "γ = 0.5" in "\n".join(printed)  # 3 targets + the exponents' row
    from analysis import plots

    drawn = plots.oracle(common.jsonable(out), tmp_path)
    assert {p.name for p in drawn} == {"oracle.png", "oracle.pdf", "oracle_seconds.png",
                                       "oracle_seconds.pdf"}
    config.analysis.oracle_targets = ()
    assert comparison.analyse_oracle(rows, config, 4) is None
    # without a pilot: multiples of level K-1's EM on the finest grid, on selection rows only
    config.analysis.em_steps, config.analysis.oracle_target_ratios = (8, 128), (4.0, 2.0)
    base = np.mean([r["mse"] for r in rows if r["method"] == "em" and r["level"] == 3
                    and r["steps"] == 128 and r["realisation"] >= 6])
    got = comparison.oracle_targets(config, comparison.split_rows(rows, config)[1], 4)
    np.testing.assert_allclose(list(got.values()), [4 * base, 2 * base])
    config.analysis.oracle_targets = (1e-3,)
    with pytest.raises(ValueError, match="set one"):
        comparison.oracle_targets(config, rows, 4)


def test_prefix_ladder_is_the_first_levels(tiny_results):
    from mlem import ladder as ladders

    ctx, _ = tiny_results
    ladder = ctx.ladder
    assert ladders.prefix(ladder, 2) is ladder and ladders.prefix(ladder, 1) is \
        ladders.prefix(ladder, 1)  # one object per pair: compiled solvers are reused
    sub = ladders.prefix(ladder, 1)
    assert sub.num_levels == 1 and sub.names == ladder.names[:1]
    assert sub.params[0] is ladder.params[0] and sub.digests == ladder.digests[:1]
    with pytest.raises(ValueError, match="top: must be in 1..2"):
        ladders.prefix(ladder, 3)


# --- distributional error (analysis.distributional) ------------------------------------------

def test_distributional_helpers_match_the_reference_formulas():
    from analysis import distributional as dist

    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 50, 6)) @ rng.normal(size=(6, 6))
    b = rng.normal(size=(4, 50, 6)) + 0.3
    sa, sb = dist.Stats(a), dist.Stats(b)
    counts = np.array([2.0, 0.0, 1.0])  # a resample: realisation 0 twice, 2 once
    rows = np.concatenate([a[0], a[0], a[2]])
    mu, sigma = sa.moments(counts)
    np.testing.assert_allclose(mu, rows.mean(0))
    np.testing.assert_allclose(sigma, np.cov(rows, rowvar=False))
    got = dist.frechet(*sa.moments(), *sb.moments())
    want = mlem_quality.fd(a.reshape(-1, 6), b.reshape(-1, 6))
    assert got == pytest.approx(want, rel=1e-6)
    assert dist.frechet(*sa.moments(), *sa.moments()) == pytest.approx(0.0, abs=1e-6)
    mu_b, sigma_b = sb.moments()
    assert dist.moment_error(mu, sigma, mu_b, sigma_b) == pytest.approx(
        np.sum((mu - mu_b) ** 2) / 6 + np.sum((sigma - sigma_b) ** 2) / 36)
    # realisation r of a set has the same inputs whatever the configuration; sets differ
    mesh = dist.parallel.make_mesh()
    x1, _, k1 = dist.set_inputs(0, "evaluation", 1, 2, (4, 4, 1), mesh)
    x2, _, k2 = dist.set_inputs(0, "evaluation", 1, 2, (4, 4, 1), mesh)
    x3, _, _ = dist.set_inputs(0, "oracle", 1, 2, (4, 4, 1), mesh)
    np.testing.assert_array_equal(x1, x2)
    assert not np.allclose(x1, x3)


def _distributional_ctx(ctx):
    config = ctx.config.copy_and_resolve_references()
    d = config.analysis.distributional
    d.enabled, d.realisations, d.selection_realisations, d.batch_size = True, 3, 2, 8
    d.oracle_realisations, d.bootstrap, d.target_ratios = 3, 30, (8.0, 4.0, 2.0)
    d.kid_subsets, d.kid_subset_size, d.kid_bootstrap = 5, 8, 5
    config.analysis.timing_batch_size = 4
    return dataclasses.replace(ctx, config=config)


def test_distributional_stage_targets_paths_and_resume(tiny_results, monkeypatch):
    from analysis import distributional as dist

    ctx = _distributional_ctx(tiny_results[0])
    monkeypatch.setattr(quality, "features_for", lambda ctx: _projection_features())
    ctx.config.analysis.distributional.oracle_steps = 4  # < 4 x the sweep's finest grid
    with pytest.raises(ValueError, match="at least 4x finer"):
        dist.stage(ctx)
    ctx.config.analysis.distributional.oracle_steps = 0  # the reference grid
    summary = dist.stage(ctx)["distributional"]
    result = json.loads((ctx.out / "distributional" / "distributional.json").read_text())
    floor = result["floor"]["fd"]["value"]
    assert floor > 0 and result["floor"]["moments"]["value"] > 0
    assert result["targets"]["fd"] == {f"{r:g}x floor": pytest.approx(r * floor)
                                       for r in (8, 4, 2)}
    assert summary["samples_per_point"] == 24 and summary["oracle_samples"] == 24
    for name in ("fd", "moments", "fd_seconds", "moments_seconds"):
        assert (ctx.out / "distributional" / f"distributional_own_{name}.png").stat().st_size
    own = result["framings"]["own"]
    assert set(own["configurations"]) == {"em", "mlem-variance-flops", "switch"}
    comp = own["comparisons"]["mlem-variance-flops vs em"]
    for ruler in ("fd", "moments"):
        for cost in ("flops", "seconds"):
            c = comp[ruler][cost]
            assert set(c["targets"]) == set(result["targets"][ruler])
            for t in c["targets"].values():  # a failure is counted, never dropped
                assert 0 <= t["not_reached"]["base"] <= 1 and "ci" in t["speedup"]
            # the path: cheapest first, each on the selection sets below every cheaper one
            key = lambda p: tuple(p[k] for k in ("level", "top", "top_evals", "steps"))
            path = c["paths"]["em"]
            assert {key(p) for p in path} <= {key(q) for q in own["configurations"]["em"]}
            if cost == "flops":
                assert [p["expected_flops"] for p in path] == sorted(
                    p["expected_flops"] for p in path)
    for configs in own["configurations"].values():
        for p in configs:
            assert p["error"]["fd"] > 0 and p["seconds"] > 0 and "value" in p["kid"]
    # a second call solves nothing again (every set is on disk) and gives the same numbers
    calls = []
    monkeypatch.setattr(dist, "solve_sets", lambda *a, **k: calls.append(a) or (_ for _ in ()
                                                                                ).throw(
        AssertionError("solved again")))
    again = dist.stage(ctx)["distributional"]
    assert not calls and again["floor"] == summary["floor"]
    from analysis import report

    text = "\n".join(report.distributional_rows(summary))
    assert "| own | mlem-variance-flops vs em | FD (features) | 8x floor |" in text
    assert "| own | mlem-variance-flops vs switch | pixel moments | 2x floor |" in text


def test_samplers_stage_single_against_multilevel(tiny_results, monkeypatch):
    """analysis.samplers: every configuration solves its selection sets; only those on a
    path chosen on them solve evaluation sets; FLOPs count the calls made (Heun's two a
    step); comparisons at both references' targets count failures; a rerun solves nothing."""
    from analysis import distributional as dist
    from analysis import samplers

    ctx = _distributional_ctx(tiny_results[0])
    ctx.config.analysis.samplers = dict(
        enabled=True, solvers=("sde", "heun"), grids=("uniform", "karras"), steps=(2, 4),
        top_fraction=0.5, selection_realisations=2, realisations=3, batch_size=8,
        bootstrap=30, oracle_ratios=(8.0, 2.0), data_ratios=(2.0, 1.25))
    monkeypatch.setattr(quality, "features_for", lambda ctx: _projection_features())
    with pytest.raises(ValueError, match="at least 4x finer"):  # oracle: 8 steps < 4 x 4
        samplers.stage(ctx)
    ctx.config.analysis.distributional.oracle_steps = 16
    dist.stage(ctx)  # its oracle set is the reference
    summary = samplers.stage(ctx)["samplers"]
    result = json.loads((ctx.out / "samplers" / "samplers.json").read_text())
    k = ctx.ladder.num_levels
    assert summary["configurations"] == len(result["selection"]) == 2 * 2 * 2 * (k + k - 1)
    folder = ctx.out / "samplers" / "samples"
    assert len(list(folder.glob("*.selection.npz"))) == summary["configurations"]
    assert 0 < len(list(folder.glob("*.evaluation.npz"))) == summary["evaluated"] \
        < summary["configurations"]
    for row in result["selection"]:
        if row["kind"] == "single":
            calls = row["steps"] * (2 if row["solver"] == "heun" else 1) - (
                row["solver"] == "heun")
            assert row["flops"] == pytest.approx(ctx.flops[row["level"] - 1] * calls)
    refs = result["references"]
    assert set(refs) == {"oracle", "data"} and set(refs["data"]["targets"]) == {"fd"}
    fd_floor = refs["oracle"]["floor"]["fd"]["value"]
    assert refs["oracle"]["targets"]["fd"] == {"8x floor": pytest.approx(8 * fd_floor),
                                               "2x floor": pytest.approx(2 * fd_floor)}
    comp = result["comparisons"]["all"]
    for ref, ruler in (("oracle", "fd"), ("oracle", "moments"), ("data", "fd")):
        for cost in ("flops", "seconds"):
            c = comp[ref][ruler][cost]
            assert set(c["targets"]) == set(refs[ref]["targets"][ruler])
            for t in c["targets"].values():  # a failure is counted, never dropped
                assert 0 <= t["not_reached"]["other"] <= 1 and "ci" in t["speedup"]
            assert {p["kind"] for p in c["paths"]["single"]} == {"single"}
            assert {p["kind"] for p in c["paths"]["multilevel"]} == {"multilevel"}
            if cost == "flops":  # the path is the selection envelope: cheaper, then better
                sel = {r["id"]: r for r in result["selection"]}
                path = [next(r for r in sel.values() if r["kind"] == p["kind"]
                             and all(r[f] == p[f] for f in ("solver", "grid", "steps",
                                                            "level", "top")))
                        for p in c["paths"]["single"]]
                errs = [r["selection_error"][ref][ruler] for r in path]
                assert errs == sorted(errs, reverse=True)
    own = result["comparisons"]["own"]["oracle"]["fd"]["flops"]["paths"]
    assert {p["level"] for p in own["single"]} == {k}
    assert {p["top"] for p in own["multilevel"]} == {k}
    assert (ctx.out / "samplers" / "samplers.png").stat().st_size > 0
    calls = []
    monkeypatch.setattr(dist, "solve_sets", lambda *a, **kw: calls.append(a) or (
        _ for _ in ()).throw(AssertionError("solved again")))
    again = samplers.stage(ctx)["samplers"]
    assert not calls and again["comparisons"] == summary["comparisons"]
    from analysis import report

    text = "\n".join(report.samplers_rows(summary))
    assert "| oracle | FD (features) | 8x floor |" in text
    assert "| data | FD (features) | 1.25x oracle |" in text
    assert "| own | oracle | pixel moments | 2x floor |" in text


def test_distributional_candidates_are_chosen_on_selection_realisations(tiny_results):
    from analysis import distributional as dist

    ctx = tiny_results[0]
    rows = cost_error.read_points(ctx.out / "cost_error" / "points.csv")
    curves = ("em", "mlem-variance-flops", "switch")
    chosen = dist.candidates(rows, ctx.config, curves)
    judged = int(ctx.config.analysis.realisations)
    scrambled = [{**r, "mse": r["mse"] * (1e3 if r["realisation"] < judged and r["method"] == "em"
                                          and r["level"] == 1 else 1.0)} for r in rows]
    assert dist.candidates(scrambled, ctx.config, curves) == chosen
    for curve, configs in chosen.items():
        steps = {r["steps"] for r in rows if r["curve"] == curve}
        assert steps <= {c["steps"] for c in configs}  # the cheapest at every step count


def test_distributional_sets_are_kept_unless_what_made_them_changes(tmp_path):
    import types

    from analysis import distributional as dist

    ctx = types.SimpleNamespace(out=tmp_path, recompute=False)
    samples = tmp_path / "distributional" / "samples"
    record = {"realisations": 16, "batch_size": 64, "seed": 0, "ref_steps": 512,
              "bootstrap": 1000, "kid_bootstrap": 30, "target_ratios": [8.0]}
    dist.keep_samples(ctx, record)
    (samples / "oracle.npz").write_bytes(b"x")
    for analysis_only in ({"bootstrap": 10}, {"kid_bootstrap": 5}, {"target_ratios": [2.0]}):
        dist.keep_samples(ctx, {**record, **analysis_only})
        assert (samples / "oracle.npz").exists()
    dist.keep_samples(ctx, {**record, "batch_size": 32})
    assert not (samples / "oracle.npz").exists()
    (samples / "oracle.npz").write_bytes(b"x")
    dist.keep_samples(types.SimpleNamespace(out=tmp_path, recompute=True), {**record,
                                                                          "batch_size": 32})
    assert not (samples / "oracle.npz").exists()


def test_each_prefix_ladder_is_warmed_up_before_it_is_timed():
    """A prefix ladder's ML-EM or switching solve is another compiled function: timing it
    without its own warm-up call would time its compilation (a bug the oracle framing had)."""
    point = {"method": "mlem", "level": 0, "top": 4}
    assert cost_error.compiled_solve(point) != cost_error.compiled_solve({**point, "top": 3})
    assert cost_error.compiled_solve({**point, "method": "switch"}) != \
        cost_error.compiled_solve(point)
    em = {"method": "em", "level": 2, "top": 2}
    assert cost_error.compiled_solve(em) != cost_error.compiled_solve({**em, "level": 3,
                                                                        "top": 3})


def test_a_cheaper_oracle_grid_is_at_least_4x_finer_than_the_compared_ones(tmp_path):
    """distributional.settings: oracle_steps defaults to ref_steps and must be >= 4 x
    max_steps; sets stored before oracle_steps existed were made on ref_steps (kept)."""
    import types

    from analysis import distributional as dist
    from configs import mnist_sample

    config = mnist_sample.get_config()
    d = config.analysis.distributional
    d.oracle_steps, d.max_steps = 0, 0
    assert dist.settings(config)["oracle_steps"] == config.analysis.ref_steps
    d.oracle_steps, d.max_steps = 64, 32
    with pytest.raises(ValueError, match="at least 4x finer"):
        dist.settings(config)
    d.oracle_steps = 128
    assert dist.settings(config)["oracle_steps"] == 128
    ctx = types.SimpleNamespace(out=tmp_path, recompute=False)
    samples = tmp_path / "distributional" / "samples"
    samples.mkdir(parents=True)
    (samples / "samples.json").write_text(json.dumps({"ref_steps": 512, "seed": 0}))
    (samples / "oracle.npz").write_bytes(b"x")
    dist.keep_samples(ctx, {"ref_steps": 512, "oracle_steps": 512, "seed": 0})
    assert (samples / "oracle.npz").exists()
    dist.keep_samples(ctx, {"ref_steps": 512, "oracle_steps": 128, "seed": 0})
    assert not (samples / "oracle.npz").exists()


def test_resampled_distances_are_centred_on_the_point_value():
    """A plug-in distance recomputed on resamples with repeated batches is inflated (fewer
    distinct samples); the shift centres the resamples on the point value."""
    from analysis import distributional as dist

    rng = np.random.default_rng(0)
    a, b = dist.Stats(rng.normal(size=(16, 64, 4))), dist.Stats(rng.normal(size=(16, 64, 4)))
    counts = dist.counts_of(16, 400, 0)
    raw = np.array([dist.frechet(*a.moments(c), *b.moments()) for c in counts])
    assert raw[1:].mean() > 1.2 * raw[0]  # the inflation the shift removes
    fixed = dist.debiased({"fd": raw})["fd"]
    assert fixed[0] == raw[0] and fixed[1:].mean() == pytest.approx(raw[0], rel=0.05)
    assert (fixed > 0).all()


def test_stages_that_need_features_say_which_field_sets_them(monkeypatch):
    """The distributional and samplers stages stop with one line naming the feature field
    when no features are configured."""
    import types

    monkeypatch.setattr(quality, "features_for", _REAL_FEATURES_FOR)  # tiny_results patches it

    from configs import mnist_sample

    config = mnist_sample.get_config()
    config.analysis.quality.features = ""
    ctx = types.SimpleNamespace(config=config)
    with pytest.raises(ValueError, match=r"config.analysis.samplers needs features for FD: "
                                         r"set config.analysis.quality.features"):
        quality.required_features(ctx, "config.analysis.samplers")
