"""Update rules (PF-ODE Euler, DDIM, ancestral), the multilevel estimator fed to each, and
time grids (docs/solvers.md)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlem import brownian, sampling, solvers
from mlem.sde import GRIDS, VPSDE, gaussian_eps
from tests import helpers

SDE = VPSDE()
MEAN, STD = jnp.array([0.8, -0.5]), 0.4


@pytest.mark.parametrize("kind", GRIDS)
def test_time_grids_increase_end_at_one_minus_t_min_and_nest(kind):
    ts = np.asarray(SDE.time_grid(64, kind))
    assert ts.shape == (65,) and ts[0] == 0.0
    assert ts[-1] == pytest.approx(1.0 - SDE.t_min, abs=1e-7)
    assert np.all(np.diff(ts) > 0)
    for n in (1, 4, 16):  # the N-step grid is every (64/N)-th point of the 64-step grid
        np.testing.assert_array_equal(np.asarray(SDE.time_grid(n, kind)), ts[:: 64 // n])
        brownian.check_path(brownian.BatchPath(jax.random.key(0), jnp.asarray(ts)),
                            SDE.time_grid(n, kind), jnp.zeros((1, 1)))
    if kind == "logsnr":  # uniform in λ(t)
        lam = np.asarray(SDE.log_snr(jnp.asarray(1.0 - ts)))
        np.testing.assert_allclose(np.diff(lam), np.diff(lam).mean(), rtol=1e-3)
    if kind == "quadratic":  # steps shrink towards the data
        assert np.all(np.diff(ts, 2) < 1e-7)


def test_unknown_grid_and_solver_name_the_argument():
    with pytest.raises(ValueError, match="grid: must be one of uniform, quadratic, logsnr"):
        SDE.time_grid(8, "cosine")
    with pytest.raises(ValueError, match="solver: must be one of sde, ode, ddim, ancestral"):
        solvers.for_vpsde(SDE, "rk4", [])


def test_step_coefficients_follow_the_forward_marginals():
    """DDIM maps x_t0 = α₀x₀ + σ₀ε to α₁x₀ + σ₁ε when ε̂ = ε; ancestral keeps the noise
    level: with ε̂ = ε, x' = α₁x₀ + (b + aσ₀)ε + cξ has noise variance σ₁²."""
    t0, t1 = 0.7, 0.4
    a, b = SDE.ddim_coefficients(t0, t1)
    x0, eps = 0.3, -1.1
    al0, s0, al1, s1 = (float(f(t)) for t in (t0, t1) for f in (SDE.alpha, SDE.sigma))
    x = al0 * x0 + s0 * eps
    assert float(a * x + b * eps) == pytest.approx(al1 * x0 + s1 * eps, rel=1e-5)
    a, b, c = (float(v) for v in SDE.ancestral_coefficients(t0, t1))
    assert (b + a * s0) ** 2 + c**2 == pytest.approx(s1**2, rel=1e-5)
    assert c**2 == pytest.approx(s1**2 / s0**2 * (1 - al0**2 / al1**2), rel=1e-5)


@functools.partial(jax.jit, static_argnames=("solver", "grid", "steps"))
def _gaussian_solve(solver, grid, steps, key):
    (level,), rule = solvers.for_vpsde(SDE, solver, [gaussian_eps(SDE, MEAN, STD)])
    x0 = jax.random.normal(jax.random.fold_in(key, 0), (8192, 2))
    return sampling.solve(level, rule, x0, SDE.time_grid(steps, grid), jax.random.fold_in(key, 1))


@pytest.mark.parametrize("solver,grid", [("sde", "uniform"), ("ode", "uniform"),
                                         ("ddim", "logsnr"), ("ancestral", "quadratic")])
def test_each_solver_with_the_exact_score_of_gaussian_data_reproduces_it(solver, grid):
    """Prior N(0, I) → data N(MEAN, STD² I): final mean and variance match (8192 samples,
    800 steps; standard errors ~ 0.005 on the mean, ~ 0.0025 on the variance). The step
    bias of the variance is O(1/N): at 800 uniform steps −0.0003 (ODE), −0.001 (DDIM),
    −0.0035 (ancestral, the largest: the posterior variance of x₀ is dropped each step)."""
    x, stats = _gaussian_solve(solver, grid, 800, jax.random.key(0))
    assert int(stats["evals"][0]) == 800
    np.testing.assert_allclose(x.mean(0), MEAN, atol=0.025)
    np.testing.assert_allclose(x.var(0), STD**2, rtol=0.05)
    np.testing.assert_allclose(np.cov(np.asarray(x).T)[0, 1], 0.0, atol=0.01)


def _eps_ladder():
    """Three ε-predictors of increasing accuracy for data N(MEAN, STD²)."""
    return [gaussian_eps(SDE, 0.0 * MEAN, 1.0), gaussian_eps(SDE, 0.7 * MEAN, 0.6),
            gaussian_eps(SDE, MEAN, STD)]


@pytest.mark.parametrize("solver", ["ddim", "ode"])
def test_one_multilevel_step_is_unbiased_for_the_top_level(solver):
    """z-test over many Bernoulli keys of one step of the multilevel DDIM (and PF-ODE Euler)
    step against the single-level step at the top level; unweighted draws are detected."""
    levels, rule = solvers.for_vpsde(SDE, solver, _eps_ladder())
    probs, x0 = jnp.array([1.0, 0.3, 0.1]), jnp.array([[0.3, -1.2], [2.0, 0.1]])
    ts = jnp.array([0.4, 0.6])
    keys = jax.random.split(jax.random.key(0), 20_000)
    xs, stats = jax.vmap(lambda k: sampling.multilevel_solve(levels, probs, rule, x0, ts, k))(keys)
    target, _ = sampling.solve(levels[-1], rule, x0, ts, None)
    z = (xs.mean(0) - target) / (xs.std(0) / np.sqrt(len(keys)))
    assert np.all(np.abs(z) < 4.5), z
    # Negative control: the same draws without the 1/p reweighting are biased.
    s = rule.level_time(ts[0])
    u = jnp.stack([levels[0](x0, s)] + [levels[k](x0, s) - levels[k - 1](x0, s) for k in (1, 2)])
    draws = stats["draws"][:, 0, :].astype(jnp.float32)
    wrong = jax.vmap(lambda d: rule(x0, jnp.einsum("k,k...->...", d, u), ts[0], ts[1], None))(draws)
    z_wrong = (wrong.mean(0) - target) / (wrong.std(0) / np.sqrt(len(keys)))
    assert np.any(np.abs(z_wrong) > 10)


@pytest.mark.parametrize("solver", solvers.SOLVERS)
def test_all_probabilities_one_is_the_single_level_solver_at_the_top_exactly(solver):
    """Weights 1 − 1 = 0 below the top: only the top level is evaluated and the update gets
    ``0 + 1·uᴷ = uᴷ`` (at every call: Heun makes 2·16 − 1). The samples agree to float32
    rounding: EM bit for bit, the other rules within a few ulps (XLA's CPU backend may compile
    the step coefficients' ``exp`` differently in the two scans; seen ≤ 4e-7 under the
    suite's ``--xla_backend_optimization_level=0``)."""
    levels, rule = solvers.for_vpsde(SDE, solver, _eps_ladder())
    x0 = jax.random.normal(jax.random.key(1), (8, 2))
    ts = SDE.time_grid(16, "logsnr")
    path = brownian.BatchPath(jax.random.key(2), SDE.time_grid(32, "logsnr"))
    x_ml, stats = sampling.multilevel_solve(levels, jnp.ones(3), rule, x0, ts, jax.random.key(3),
                                            path=path)
    x_top, _ = sampling.solve(levels[-1], rule, x0, ts, None, path=path)
    if solver == "sde":
        np.testing.assert_array_equal(x_ml, x_top)
    np.testing.assert_allclose(x_ml, x_top, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(stats["evals"], [0, 0, 31 if solver == "heun" else 16])


def test_multilevel_ddim_evaluates_only_the_needed_levels():
    """probs (1, 1, 0.2): level 1 never, level 2 every step, level 3 where drawn; a level
    that is skipped is not called (a NaN level with a tiny probability leaves x finite)."""
    levels, rule = solvers.for_vpsde(SDE, "ddim", _eps_ladder())
    n, probs = 500, jnp.array([1.0, 1.0, 0.2])
    _, stats = sampling.multilevel_solve(levels, probs, rule, jnp.ones((2, 2)),
                                         SDE.time_grid(n), jax.random.key(11))
    evals, draws = np.asarray(stats["evals"]), np.asarray(stats["draws"])
    assert evals[0] == 0 and evals[1] == n and evals[2] == draws[:, 2].sum()
    assert abs(evals[2] - 0.2 * n) < 5 * np.sqrt(0.2 * 0.8 * n)
    nan_level = lambda x, t: jnp.full_like(x, jnp.nan)
    x, stats = sampling.multilevel_solve([*levels[:2], nan_level], jnp.array([1.0, 1.0, 1e-9]),
                                         rule, jnp.ones((2, 2)), SDE.time_grid(50),
                                         jax.random.key(0))
    assert np.all(np.isfinite(x)) and int(stats["evals"][2]) == 0


@pytest.mark.parametrize("solver, grid", [("ancestral", "quadratic"), ("dpmpp2m-sde", "karras")])
def test_stochastic_rule_noise_is_the_coupled_brownian_path(solver, grid):
    """Ancestral and 2M-SDE solves on nested grids of one path converge to the fine solve
    (coupling: their ξ is ΔW/sqrt(Δτ)): the coarse-to-fine gap shrinks as the grid refines,
    and is far below the gap to a solve with an independent path."""
    (level,), rule = solvers.for_vpsde(SDE, solver, [gaussian_eps(SDE, MEAN, STD)])
    x0 = jax.random.normal(jax.random.key(0), (256, 2))
    path = brownian.BatchPath(jax.random.key(1), SDE.time_grid(512, grid))
    solve = lambda n: sampling.solve(level, rule, x0, SDE.time_grid(n, grid), None,
                                     path=path)[0]
    fine = solve(512)
    gaps = [float(jnp.sqrt(jnp.mean((solve(n) - fine) ** 2))) for n in (16, 64)]
    independent = sampling.solve(level, rule, x0, SDE.time_grid(512, grid),
                                 jax.random.key(9))[0]
    assert gaps[1] < 0.7 * gaps[0]
    assert gaps[0] < 0.5 * float(jnp.sqrt(jnp.mean((independent - fine) ** 2)))


def test_deterministic_rules_need_no_key_but_multilevel_draws_do():
    levels, rule = solvers.for_vpsde(SDE, "ddim", _eps_ladder())
    x0, ts = jnp.ones((2, 2)), SDE.time_grid(4)
    sampling.solve(levels[0], rule, x0, ts, None)
    with pytest.raises(ValueError, match="key"):
        sampling.multilevel_solve(levels, jnp.array([1.0, 0.5, 0.5]), rule, x0, ts, None)
    with pytest.raises(ValueError, match="key"):
        sampling.solve(levels[0], solvers.Ancestral(SDE), x0, ts, None)


def test_ladder_solves_take_a_solver():
    """``ladder.em/mlem/switching(..., solver=)``: DDIM at the top level is the DDIM rule on
    the top ε-network; the default stays EM on the reverse SDE; unknown names are refused."""
    from mlem import ladder as ladders

    ladder, x0 = helpers.gaussian_ladder(SDE)
    models, params = ladder.models, ladder.params
    ts, key = np.asarray(SDE.time_grid(8, "quadratic")), jax.random.key(2)
    x, _ = ladders.em(ladder, -1, x0, ts, key, solver="ddim")
    top = ladders.eps_fn(models[1], params[1])
    np.testing.assert_allclose(x, sampling.solve(top, solvers.DDIM(SDE), x0, ts, None)[0],
                               rtol=1e-5, atol=1e-5)
    x_sde, _ = ladders.em(ladder, -1, x0, ts, key)
    np.testing.assert_array_equal(x_sde, sampling.euler_maruyama(
        ladders.drifts(ladder, params)[1], SDE.diffusion, x0, ts, key)[0])
    for solver in ("ode", "ancestral"):
        _, stats = ladders.mlem(ladder, np.array([1.0, 0.5]), x0, ts, key, solver=solver)
        assert stats["evals"].shape == (2,) and stats["draws"].shape == (8, 2)
        _, stats = ladders.switching(ladder, np.array([1] * 4 + [2] * 4), x0, ts, key,
                                     solver=solver)
        np.testing.assert_array_equal(stats["evals"], [4, 4])
    with pytest.raises(ValueError, match="solver"):
        ladders.em(ladder, -1, x0, ts, key, solver="dpm")


@pytest.mark.integration
def test_generation_takes_solver_grid_and_switching_and_refuses_unknown_names(tmp_path):
    """``generate(solver=)`` on a ``logsnr`` grid for em, mlem and switch; the sample config's
    fields, their default output directory and the one-line CLI error for an unknown solver."""
    import subprocess
    import sys
    from pathlib import Path

    from configs import mnist_sample
    from mlem import generation

    ladder, _ = helpers.gaussian_ladder(SDE)
    ts, path_ts = generation.time_grids(ladder, 4, 8, "logsnr")
    np.testing.assert_array_equal(ts, np.asarray(SDE.time_grid(8, "logsnr"))[::2])
    for method, probs in (("em", None), ("mlem", np.array([1.0, 0.5])), ("switch", None)):
        x, gen = generation.generate(ladder, method, probs, ts, num_samples=4, batch_size=4,
                                     seed=0, path_ts=path_ts, solver="ancestral", em_level=1,
                                     switch_at=0.5)
        assert x.shape == (4, 4, 4, 1) and np.all(np.isfinite(x))
        assert gen["evals_per_level"].shape == (2,)
        if method != "mlem":  # em: 4 steps at level 1; switch: 2 early steps at 1, 2 at the top
            np.testing.assert_array_equal(gen["evals_per_level"],
                                          [4, 0] if method == "em" else [2, 2])
    np.testing.assert_array_equal(generation.switch_levels(2, 0.5, np.linspace(0, 1, 5), 3),
                                  [2, 2, 3, 3])
    config = mnist_sample.get_config()
    assert (config.sampling.solver, config.sampling.grid) == ("sde", "uniform")
    assert generation.default_out("w", config).name.startswith("mlem_")
    ddim = generation.with_overrides(config, solver="ddim", grid="logsnr")
    assert "_ddim_logsnr_" in generation.default_out("w", ddim).name
    switch = generation.with_overrides(config, method="switch", switch_level=2, switch_at=0.25)
    assert generation.default_out("w", switch).name.startswith("switch_level2_at0.25_")
    with pytest.raises(ValueError, match="switch_level: must be in 1..4"):
        generation.run(generation.with_overrides(switch, switch_level=7), tmp_path)
    for name, bad in (("solver", "rk4"), ("grid", "cosine")):
        with pytest.raises(ValueError, match=f"{name}: must be one of"):
            generation.run(generation.with_overrides(config, **{name: bad}), tmp_path)
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "sample", "--config", "configs/mnist_sample.py",
                           "--workdir", str(tmp_path), "--solver", "rk4"], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: solver: must be one of sde, ode, ddim, ancestral, dpmpp2m, dpmpp2m-sde, heun, "
        "got 'rk4'")


def test_synthetic_ode_sweep_uses_euler_and_draws_no_noise(tmp_path):
    """``analysis.testbed --ode``: zero diffusion, Euler (no increments drawn) for the
    single-level runs, the reference and the multilevel runs; a tiny sweep runs end to end."""
    from analysis.testbed import pipeline, sweep

    cfg = sweep.SweepConfig(
        gamma=3.0, num_levels=6, perturbation_rms=1.0, seeds=2, batch_size=8, ref_steps=2**8,
        em_steps=(4, 16, 64), mlem_min_top=4, mlem_step_offsets=(0,), mlem_top_evals=(0.5, 4.0),
        max_steps=64, floor_factor=1.0, fit_decades=1.0, min_fit_decades=0.5, noise=0.0)
    hierarchy = cfg.hierarchy()
    assert isinstance(sweep.update_rule(hierarchy), solvers.Euler)
    assert isinstance(sweep.update_rule(sweep.SweepConfig().hierarchy()), solvers.EulerMaruyama)
    summary = pipeline.run(cfg, tmp_path, progress=False)
    assert summary["config"]["noise"] == 0.0
    assert summary["exponent_em"] > 0 and summary["exponent_mlem"] > 0
    # Deterministic: the reference does not depend on the Brownian key.
    ts = jnp.linspace(0.0, 1.0, 65)
    x0 = hierarchy.sample_x0(jax.random.key(0), 4)
    runs = [sampling.solve(hierarchy.exact_drift, sweep.update_rule(hierarchy), x0, ts, None,
                           increments=brownian.increments(jax.random.key(k), ts, x0.shape))[0]
            for k in (1, 2)]
    np.testing.assert_array_equal(*runs)


def test_cost_error_takes_the_solver_and_grid_of_the_analysis_config():
    """``config.analysis.solver/grid``: defaults leave the stage settings and reference key
    as they were; other values enter both; unknown names are refused."""
    from analysis import cost_error
    from configs import celeba64_sample, mnist_sample

    config = mnist_sample.get_config()
    assert cost_error.solver_settings(config) == ("sde", "uniform", {})
    config.analysis.solver, config.analysis.grid = "ddim", "logsnr"
    assert cost_error.solver_settings(config) == ("ddim", "logsnr",
                                                  {"solver": "ddim", "grid": "logsnr"})
    config.analysis.solver = "rk4"
    with pytest.raises(ValueError, match="solver: must be one of"):
        cost_error.solver_settings(config)
    for solver, grid in celeba64_sample.SOLVERS:
        assert solvers.check_solver(solver) and grid in GRIDS
    from analysis import samplers

    s = samplers.settings(celeba64_sample.get_config())  # the GPU config's samplers stage
    assert s["enabled"] and {"dpmpp2m", "heun"} <= set(s["solvers"])
    config = mnist_sample.get_config()
    config.analysis.samplers.grids = ("uniform", "cosine")
    with pytest.raises(ValueError, match="grid"):
        samplers.settings(config)


def test_deterministic_solvers_sample_on_any_step_count():
    """``DETERMINISTIC`` is exactly the rules that draw no increments; their solves need no
    Brownian path, so ``python -m sample --solver dpmpp2m --steps 20`` runs on its own
    20-step grid whatever ``path_steps`` is, while a stochastic rule still needs a divisor."""
    import types

    from mlem import generation

    sde = VPSDE()
    assert set(solvers.DETERMINISTIC) == {
        s for s in solvers.SOLVERS if not solvers.for_vpsde(sde, s, [])[1].stochastic}
    ladder = types.SimpleNamespace(sde=sde)
    ts, path_ts = generation.time_grids(ladder, 20, 512, "karras", stochastic=False)
    np.testing.assert_allclose(ts, sde.time_grid(20, "karras"), rtol=1e-6)
    assert path_ts is ts
    with pytest.raises(ValueError, match="must divide sampling.path_steps"):
        generation.time_grids(ladder, 20, 512, "karras", stochastic=True)
    ts, path_ts = generation.time_grids(ladder, 16, 512, "karras", stochastic=False)
    assert len(path_ts) == 513 and len(ts) == 17  # a divisor: the shared path as before
