"""Second-order solvers (DPM-Solver++(2M) and its SDE variant, EDM's Heun), the Karras grid,
and their multilevel versions (docs/solvers.md, issue 24 §1–3)."""

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mlem import brownian, sampling, solvers
from mlem import ladder as ladders
from mlem.models import gaussian
from mlem.sde import VPSDE, gaussian_eps
from tests import helpers

SDE = VPSDE()
NEW = ("dpmpp2m", "dpmpp2m-sde", "heun")
MEAN, STD = jnp.array([0.8, -0.5]), 0.4


def _calls_per_solve(solver: str, num_steps: int) -> int:
    """Level calls of a solve: one per step, Heun two but one on its last (Euler) step."""
    return 2 * num_steps - 1 if solver == "heun" else num_steps


def _eps_ladder():
    """Three ε-predictors of increasing accuracy for data N(MEAN, STD²), affine in x."""
    return [gaussian_eps(SDE, 0.0 * MEAN, 1.0), gaussian_eps(SDE, 0.7 * MEAN, 0.6),
            gaussian_eps(SDE, MEAN, STD)]


def _nonlinear_ladder(c: float = 0.3):
    """The ladder above plus ``c_k tanh(x)``: levels nonlinear in x (c_1 = 0, c_2 = c/2)."""
    g = _eps_ladder()
    return [g[0], lambda x, t: g[1](x, t) + 0.5 * c * jnp.tanh(x),
            lambda x, t: g[2](x, t) + c * jnp.tanh(x)]


# --- the Gaussian level of mlem/models/gaussian.py and its exact probability-flow map --------

_ROTATION = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 4)))[0]
_VARIANCES = np.array([0.02, 0.1, 0.3, 0.8])
_MU = np.array([0.5, -0.3, 0.2, 0.1])


def _gaussian_level(mean, components, variances):
    """The exact ε̂ of N(mean, U diag(variances) Uᵀ) (full rank) as a level on 1×H×W×C."""
    params = {"mean": jnp.asarray(mean, jnp.float32),
              "components": jnp.asarray(components, jnp.float32),
              "variances": jnp.asarray(variances, jnp.float32), "remainder": jnp.float32(0.0)}
    return ladders.eps_fn(gaussian.GaussianEps(rank=len(variances)), params)


def _exact_flow(x1: np.ndarray) -> np.ndarray:
    """The PF-ODE from data time 1 to t_min for data N(μ, U diag(λ) Uᵀ), in closed form.

    With ``v_k(t) = α(t)² λ_k + σ(t)²`` the marginal variance along eigenvector ``k``, the
    PF-ODE ``dx/dt = −½β x + ½β Σ_t⁻¹(x − αμ)`` gives for ``y = x − α μ`` in the eigenbasis
    ``dy_k/dt = ½β (1/v_k − 1) y_k = (d/dt log sqrt(v_k)) y_k`` (as ``dv_k/dt = βα²(1 − λ_k)``
    and ``1 − v_k = α²(1 − λ_k)``), so ``y_k(t_min) = y_k(1) sqrt(v_k(t_min)/v_k(1))``.
    """
    alpha = lambda t: np.exp(-0.5 * (SDE.beta_min * t + 0.5 * t**2 * (SDE.beta_max
                                                                       - SDE.beta_min)))
    a1, a_end = alpha(1.0), alpha(SDE.t_min)
    v = lambda a: a**2 * _VARIANCES + 1.0 - a**2
    y = np.asarray(x1, np.float64).reshape(-1, 4) - a1 * _MU
    y = ((y @ _ROTATION) * np.sqrt(v(a_end) / v(a1))) @ _ROTATION.T
    return (y + a_end * _MU).reshape(np.shape(x1))


_FLOW_LEVEL = _gaussian_level(_MU.reshape(2, 2, 1), _ROTATION, _VARIANCES)
_FLOW_X1 = jax.random.normal(jax.random.key(0), (256, 2, 2, 1))
ORDER_STEPS = (32, 64, 128, 256)
ORDER_TOLERANCE = 0.15


def _order(rule_for, grid: str) -> tuple[float, list[float]]:
    """Fitted log-log slope of the RMSE against the exact flow over ``ORDER_STEPS``."""
    ref, errors = _exact_flow(_FLOW_X1), []
    for n in ORDER_STEPS:
        level, rule = rule_for([_FLOW_LEVEL])
        x, _ = sampling.solve(level[0], rule, _FLOW_X1, SDE.time_grid(n, grid), None)
        errors.append(float(np.sqrt(np.mean((np.asarray(x, np.float64) - ref) ** 2))))
    return -np.polyfit(np.log(ORDER_STEPS), np.log(errors), 1)[0], errors


def _is_order(slope: float, order: int) -> bool:
    return abs(slope - order) < ORDER_TOLERANCE


@pytest.mark.parametrize("solver,grid,order", [
    ("ode", "logsnr", 1), ("ddim", "logsnr", 1), ("ddim", "karras", 1),
    ("dpmpp2m", "logsnr", 2), ("dpmpp2m", "karras", 2), ("heun", "karras", 2),
    ("heun", "logsnr", 2)])
def test_order_of_convergence_against_the_exact_gaussian_flow(solver, grid, order):
    """Pathwise RMSE against the closed-form PF-ODE map of a 4-D Gaussian (full covariance)
    at 32–256 steps: fitted slope within 0.15 of 2 for dpmpp2m and heun, of 1 for DDIM and
    Euler. Measured: ode/logsnr 1.06, ddim 0.98 (logsnr) and 0.98 (karras), dpmpp2m 1.99
    (logsnr) and 2.04 (karras), heun 2.03 (karras) and 2.03 (logsnr)."""
    slope, errors = _order(functools.partial(solvers.for_vpsde, SDE, solver), grid)
    assert _is_order(slope, order), (slope, errors)
    assert errors[-1] < (1e-3 if order == 2 else 1e-2)


@dataclasses.dataclass(frozen=True)
class _WrongPP2M(solvers.DPMSolverPP2M):
    """Negative control: DPM-Solver++(2M) with the correction ``(D − D_{n−1})/r`` instead of
    ``/(2r)`` (a copy of its step with that one coefficient wrong)."""

    def step(self, x, evaluate, tau0, tau1, dw, state):
        sde = self.sde
        t0, t1 = sde.data_time(tau0), sde.data_time(tau1)
        a0, s0, a1, s1 = sde.alpha(t0), sde.sigma(t0), sde.alpha(t1), sde.sigma(t1)
        denoised = (x - s0 * evaluate(0, x, t0)) / a0
        h = 0.5 * (sde.log_snr(t1) - sde.log_snr(t0))
        second = ~state.first & (tau1 < state.end)
        c = jnp.where(second, h / state.h, 0.0)  # wrong: 1/r, not 1/(2r)
        x = s1 / s0 * x - a1 * jnp.expm1(-h) * (denoised + c * (denoised - state.denoised))
        return x, state._replace(denoised=denoised, h=h, first=jnp.array(False))


def test_a_wrong_2m_coefficient_fails_the_order_check():
    """The same check on the copy of the 2M rule with one wrong coefficient fails: it
    converges at first order (fitted slope 1.14)."""
    slope, errors = _order(lambda eps: (eps, _WrongPP2M(SDE)), "logsnr")
    assert not _is_order(slope, 2), (slope, errors)
    assert slope < 1.5, (slope, errors)  # measured 1.14


# --- the anchors: k-diffusion's loops and EDM's Algorithm 1, in float64 ----------------------

def _edm_times(ts):
    """``(t, α, σ, σ̃ = σ/α)`` at the solver times ``ts``, float64."""
    t = 1.0 - np.asarray(ts, np.float64)
    log_a = -0.5 * (SDE.beta_min * t + 0.5 * t**2 * (SDE.beta_max - SDE.beta_min))
    a, s = np.exp(log_a), np.sqrt(-np.expm1(2 * log_a))
    return t, a, s, s / a


def _k_dpmpp_2m(eps, x, ts, noise=None):
    """k-diffusion's ``sample_dpmpp_2m`` (``noise`` None) or ``sample_dpmpp_2m_sde`` (η = 1,
    midpoint), in EDM's ``x̃ = x/α``, ``σ̃``, with the first-order final step."""
    t, a, s, sig = _edm_times(ts)
    xe, old, h_last, n = np.asarray(x, np.float64) / a[0], None, None, len(ts) - 1
    for i in range(n):
        xv = a[i] * xe
        denoised = (xv - s[i] * np.asarray(eps(jnp.asarray(xv, jnp.float32), t[i]))) / a[i]
        h = np.log(sig[i]) - np.log(sig[i + 1])
        lower = old is None or i == n - 1
        if noise is None:
            d = denoised if lower else (1 + h / (2 * h_last)) * denoised - h / (2 * h_last) * old
            xe = sig[i + 1] / sig[i] * xe - np.expm1(-h) * d
        else:
            xe = sig[i + 1] / sig[i] * np.exp(-h) * xe - np.expm1(-2 * h) * denoised
            if not lower:
                xe = xe - 0.5 * np.expm1(-2 * h) * (h / h_last) * (denoised - old)
            xe = xe + noise[i] * sig[i + 1] * np.sqrt(-np.expm1(-2 * h))
        old, h_last = denoised, h
    return a[-1] * xe


def _edm_heun(eps, x, ts):
    """EDM's Algorithm 1 (Heun, Euler on the last step) in ``x̃ = x/α``, ``σ̃``."""
    t, a, s, sig = _edm_times(ts)
    d_of = lambda xe, i: np.asarray(eps(jnp.asarray(a[i] * xe, jnp.float32), t[i]), np.float64)
    xe, n = np.asarray(x, np.float64) / a[0], len(ts) - 1
    for i in range(n):
        d = d_of(xe, i)  # (x̃ − D(x̃; σ̃))/σ̃ = ε̂
        nxt = xe + (sig[i + 1] - sig[i]) * d
        if i < n - 1:
            nxt = xe + (sig[i + 1] - sig[i]) * 0.5 * (d + d_of(nxt, i + 1))
        xe = nxt
    return a[-1] * xe


@pytest.mark.parametrize("solver", NEW)
def test_the_rules_are_the_k_diffusion_and_edm_samplers(solver):
    """Our VP-space rules against literal float64 loops of the anchors (k-diffusion
    ``sample_dpmpp_2m``/``_2m_sde``, EDM Alg. 1) in EDM's variables, on a Karras grid; the SDE
    variant's noise is ``ΔW/sqrt(Δτ)`` of the given increments."""
    (level,), rule = solvers.for_vpsde(SDE, solver, [gaussian_eps(SDE, MEAN, STD)])
    x0 = jax.random.normal(jax.random.key(1), (16, 2))
    ts = SDE.time_grid(12, "karras")
    incs = brownian.increments(jax.random.key(2), ts, x0.shape)
    x, _ = sampling.solve(level, rule, x0, ts, None, increments=incs)
    if solver == "heun":
        expected = _edm_heun(level, x0, ts)
    else:
        noise = np.asarray(incs) / np.sqrt(np.diff(np.asarray(ts)))[:, None, None]
        expected = _k_dpmpp_2m(level, x0, ts, noise if solver == "dpmpp2m-sde" else None)
    np.testing.assert_allclose(x, expected, rtol=1e-4, atol=2e-5)


def test_first_steps_are_the_first_order_solvers():
    """One step: dpmpp2m is DDIM (DPM-Solver++(1)), dpmpp2m-sde is DDPM ancestral with the
    same noise, Heun (Euler on the last step) is DDIM; without final Euler Heun averages the
    two outputs; ``lower_order_final=False`` changes the result (its last step is 2M)."""
    (level,), _ = solvers.for_vpsde(SDE, "ddim", [gaussian_eps(SDE, MEAN, STD)])
    x0, ts = jax.random.normal(jax.random.key(3), (8, 2)), jnp.array([0.2, 0.5])
    incs = brownian.increments(jax.random.key(4), ts, x0.shape)
    one = lambda rule: sampling.solve(level, rule, x0, ts, None, increments=incs)[0]
    ddim = one(solvers.DDIM(SDE))
    np.testing.assert_allclose(one(solvers.DPMSolverPP2M(SDE)), ddim, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one(solvers.Heun(SDE)), ddim, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one(solvers.DPMSolverPP2M(SDE, eta=1.0)),
                               one(solvers.Ancestral(SDE)), rtol=1e-5, atol=1e-6)
    t0, t1 = 0.8, 0.5
    a, b = SDE.ddim_coefficients(t0, t1)
    predicted = a * x0 + b * level(x0, t0)
    np.testing.assert_allclose(one(solvers.Heun(SDE, final_euler=False)),
                               a * x0 + 0.5 * b * (level(x0, t0) + level(predicted, t1)),
                               rtol=1e-5, atol=1e-6)
    ts = SDE.time_grid(6, "logsnr")
    full, lower = (sampling.solve(level, solvers.DPMSolverPP2M(SDE, lower_order_final=f), x0,
                                  ts, None)[0] for f in (False, True))
    assert float(jnp.abs(full - lower).max()) > 1e-6


# --- the Karras grid --------------------------------------------------------------------------

@pytest.mark.parametrize("rho", [7.0, 3.0, 1.0])
def test_karras_grid_is_uniform_in_sigma_to_the_one_over_rho_and_nests(rho):
    ts = np.asarray(SDE.time_grid(64, "karras", rho=rho))
    assert ts[0] == 0.0 and ts[-1] == pytest.approx(1.0 - SDE.t_min, abs=1e-7)
    assert np.all(np.diff(ts) > 0)
    t = jnp.asarray(1.0 - ts.astype(np.float64))
    sig = np.asarray(SDE.sigma(t) / SDE.alpha(t), np.float64)
    np.testing.assert_allclose(np.diff(sig ** (1 / rho)), np.diff(sig ** (1 / rho)).mean(),
                               rtol=2e-3)
    assert sig[0] == pytest.approx(float(SDE.sigma(1.0) / SDE.alpha(1.0)), rel=1e-5)
    for n in (1, 4, 16):  # φ(i/N): every (64/N)-th point, so Brownian paths couple
        np.testing.assert_array_equal(np.asarray(SDE.time_grid(n, "karras", rho=rho)),
                                      ts[:: 64 // n])
    with pytest.raises(ValueError, match="rho"):
        SDE.time_grid(8, "karras", rho=0.0)
    # the grid's name carries ρ (configs, --grid, stage settings): karras:ρ is the same grid
    np.testing.assert_array_equal(np.asarray(SDE.time_grid(64, f"karras:{rho:g}")), ts)


def test_karras_rho_in_the_grid_name_is_checked():
    assert np.array_equal(np.asarray(SDE.time_grid(8, "karras")),
                          np.asarray(SDE.time_grid(8, "karras:7")))
    assert not np.array_equal(np.asarray(SDE.time_grid(8, "karras")),
                              np.asarray(SDE.time_grid(8, "karras:3")))
    for bad in ("karras:0", "karras:-2", "karras:x"):
        with pytest.raises(ValueError, match="karras:ρ needs a positive number"):
            SDE.time_grid(8, bad)
    with pytest.raises(ValueError, match="must be one of"):
        SDE.time_grid(8, "logsnr:3")


# --- the multilevel versions ------------------------------------------------------------------

@pytest.mark.parametrize("solver", NEW)
def test_all_probabilities_one_is_the_single_level_top_solver(solver):
    """Every probability 1: only the top level is called, at every call, and the samples are
    the single-level top solve's (to float32 rounding); switching at the top level too."""
    levels, rule = solvers.for_vpsde(SDE, solver, _eps_ladder())
    x0, n = jax.random.normal(jax.random.key(1), (8, 2)), 16
    ts = SDE.time_grid(n, "karras")
    path = brownian.BatchPath(jax.random.key(2), SDE.time_grid(2 * n, "karras"))
    x_ml, stats = sampling.multilevel_solve(levels, jnp.ones(3), rule, x0, ts,
                                            jax.random.key(3), path=path)
    x_top, top = sampling.solve(levels[-1], rule, x0, ts, None, path=path)
    x_sw, sw = sampling.switching_solve(levels, jnp.full(n, 3), rule, x0, ts, None, path=path)
    np.testing.assert_allclose(x_ml, x_top, rtol=0, atol=2e-6)
    np.testing.assert_allclose(x_sw, x_top, rtol=0, atol=2e-6)
    calls = _calls_per_solve(solver, n)
    np.testing.assert_array_equal(stats["evals"], [0, 0, calls])
    np.testing.assert_array_equal(top["evals"], [calls])
    np.testing.assert_array_equal(sw["evals"], [0, 0, calls])


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_one_multilevel_dpmpp2m_step_is_unbiased_given_the_state(eta):
    """z-test over 20,000 Bernoulli keys: the 2M step (step 1 of 2, the first step exact with
    probabilities 1, so the state and the carried D_0 are the top level's) has the mean of
    the top level's step; the unweighted draws (weights B instead of B/p) fail the test."""
    rule = solvers.DPMSolverPP2M(SDE, eta=eta, lower_order_final=False)
    levels = _nonlinear_ladder()
    probs = jnp.array([[1.0, 1.0, 1.0], [1.0, 0.3, 0.1]])
    x0, ts = jnp.array([[0.3, -1.2], [2.0, 0.1]]), jnp.array([0.3, 0.5, 0.7])
    incs = brownian.increments(jax.random.key(5), ts, x0.shape)
    keys = jax.random.split(jax.random.key(0), 20_000)
    xs, stats = jax.vmap(lambda k: sampling.multilevel_solve(levels, probs, rule, x0, ts, k,
                                                             increments=incs))(keys)
    target, _ = sampling.solve(levels[-1], rule, x0, ts, None, increments=incs)
    ddim, _ = sampling.solve(levels[-1], solvers.DDIM(SDE), x0, ts, None)
    if eta == 0:  # the step is really second order, not DDIM
        assert float(jnp.abs(target - ddim).max()) > 1e-3
    z = (xs.mean(0) - target) / (xs.std(0) / np.sqrt(len(keys)))
    assert np.all(np.abs(z) < 4.5), z
    unweighted = jax.vmap(lambda d: sampling.multilevel_solve(
        levels, jnp.ones(3), rule, x0, ts, None, increments=incs, draws=d)[0])(stats["draws"])
    z_wrong = (unweighted.mean(0) - target) / (unweighted.std(0) / np.sqrt(len(keys)))
    assert np.any(np.abs(z_wrong) > 10)


def _exact_mean(levels, rule, x0, ts, probs):
    """``E[x_N]`` over the Bernoulli draws, exactly: every outcome of the calls whose
    probability is below 1, weighted by its probability (fixed draws, ``draws=``)."""
    num_steps, calls = len(ts) - 1, sampling._evaluations(rule)
    probs = np.broadcast_to(np.asarray(probs), (num_steps, 3))
    free = [(n, i, k) for n in range(num_steps) for i in range(calls) for k in (1, 2)
            if probs[n, k] < 1]
    mean = 0.0
    for outcome in itertools.product((False, True), repeat=len(free)):
        draws, weight = np.ones((num_steps, calls, 3), bool), 1.0
        for (n, i, k), b in zip(free, outcome):
            draws[n, i, k] = b
            weight *= probs[n, k] if b else 1.0 - probs[n, k]
        draws = draws if calls > 1 else draws[:, 0]
        x, _ = sampling.multilevel_solve(levels, jnp.asarray(probs), rule, x0, ts, None,
                                         draws=jnp.asarray(draws))
        mean = mean + weight * np.asarray(x, np.float64)
    return mean


X_ENUM = jnp.array([[0.3, -1.2], [2.0, 0.1]])
P_ENUM = np.array([1.0, 0.3, 0.1])


def test_multilevel_2m_is_exactly_unbiased_given_the_state_and_its_carried_output():
    """By enumerating the draws (levels nonlinear in x): with the state and ``D_{n−1}`` of the
    top level (step 0 exact), the mean of the multilevel 2M step is the top level's step to
    float rounding; with both steps random it is not (the carried ``D_0`` and ``x_1`` are then
    random, and the levels are nonlinear): unbiased given the state, as every rule here."""
    rule = solvers.DPMSolverPP2M(SDE, lower_order_final=False)
    levels, ts = _nonlinear_ladder(), jnp.array([0.3, 0.5, 0.7])
    target = np.asarray(sampling.solve(levels[-1], rule, X_ENUM, ts, None)[0])
    given = _exact_mean(levels, rule, X_ENUM, ts, np.stack([np.ones(3), P_ENUM]))
    np.testing.assert_allclose(given, target, rtol=0, atol=3e-6)
    both = _exact_mean(levels, rule, X_ENUM, ts, P_ENUM)
    assert np.abs(both - target).max() > 1e-2


def test_multilevel_heun_step_is_biased_at_third_order_with_the_predicted_leading_term():
    """One Heun step (no final Euler), exact means by enumerating both calls' draws. Levels
    affine in x: unbiased. Nonlinear levels: biased, by the second-order Taylor term of the
    corrector in the randomised predictor, ``(b/2)·½ b² ∂²u(x̂)·Var(û₀)`` (``b`` the DDIM
    coefficient, ``Var(û₀) = Σ_k (1/p_k − 1)(uᵏ − uᵏ⁻¹)²``): O(η³) per step, so O(η²) over a
    solve. Checked: slope of the bias in the step 3 ± 0.4 and the leading term within 15%."""
    rule = solvers.Heun(SDE, final_euler=False)
    linear = _eps_ladder()
    ts = jnp.array([0.4, 0.6])
    top = np.asarray(sampling.solve(linear[-1], rule, X_ENUM, ts, None)[0])
    assert np.abs(_exact_mean(linear, rule, X_ENUM, ts, P_ENUM) - top).max() < 1e-6
    c, levels = 0.3, _nonlinear_ladder(0.3)
    steps, biases = (0.04, 0.02, 0.01), []
    for step in steps:
        ts = jnp.array([0.5 - step / 2, 0.5 + step / 2])
        top = np.asarray(sampling.solve(levels[-1], rule, X_ENUM, ts, None)[0])
        bias = _exact_mean(levels, rule, X_ENUM, ts, P_ENUM) - top
        t0, t1 = SDE.data_time(ts[0]), SDE.data_time(ts[1])
        a, b = (float(v) for v in SDE.ddim_coefficients(t0, t1))
        u = [np.asarray(f(X_ENUM, t0), np.float64) for f in levels]
        var = (1 / P_ENUM[1] - 1) * (u[1] - u[0]) ** 2 + (1 / P_ENUM[2] - 1) * (u[2] - u[1]) ** 2
        th = np.tanh(a * np.asarray(X_ENUM) + b * u[2])
        predicted = 0.25 * b**3 * c * (-2 * th * (1 - th**2)) * var
        biases.append(np.linalg.norm(bias))
        if step < 0.04:
            assert np.linalg.norm(bias - predicted) < 0.15 * np.linalg.norm(predicted)
    slope = np.polyfit(np.log(steps), np.log(biases), 1)[0]
    assert abs(slope - 3) < 0.4, (slope, biases)


def test_multilevel_variance_of_2m_and_heun_against_ddim():
    """The variance analysis of ML-EM carried to the new rules, over 3,000 Bernoulli keys
    (levels affine in x, probabilities (1, 0.5, 0.2), log-SNR grid): the randomisation error
    of a 2M step enters through two steps with weights (1 + 1/(2r)) and −1/(2r), summing to
    1, so the variance of multilevel 2M tends to that of multilevel DDIM (ratio 1.02 at 64
    steps, 1.18 at 16), itself O(η) (×4.2 from 64 to 16 steps); Heun averages two
    independent telescopes per step, so about half DDIM's variance (0.50 at 64 steps) at
    about twice the calls."""
    levels = _eps_ladder()
    x0, probs = jax.random.normal(jax.random.key(0), (4, 2)), jnp.array([1.0, 0.5, 0.2])
    keys = jax.random.split(jax.random.key(1), 3000)

    def variance(solver, n):
        _, rule = solvers.for_vpsde(SDE, solver, levels)
        ts = SDE.time_grid(n, "logsnr")
        xs, _ = jax.jit(jax.vmap(
            lambda k: sampling.multilevel_solve(levels, probs, rule, x0, ts, k)))(keys)
        return float(xs.var(0).mean())

    ddim = {n: variance("ddim", n) for n in (16, 64)}
    ratio = {n: variance("dpmpp2m", n) / ddim[n] for n in (16, 64)}
    assert 3.2 < ddim[16] / ddim[64] < 5.2, ddim  # O(η): 4× fewer steps, 4× the variance
    assert 0.9 < ratio[64] < 1.12 and abs(ratio[64] - 1) < abs(ratio[16] - 1), ratio
    assert 0.42 < variance("heun", 64) / ddim[64] < 0.58


@pytest.mark.parametrize("solver", NEW)
def test_same_seed_same_samples_and_skipped_levels_are_not_called(solver):
    """Same key → the same samples and draws, another key → others; the calls really made
    (host callbacks): with probabilities (1, 0.5, 1e-9) the top level is never called, with
    (1, 1, 1e-9) level 1 neither (weight 1 − 1 = 0), and ``evals`` counts exactly them."""
    calls = np.zeros(3, int)
    levels, rule = solvers.for_vpsde(SDE, solver, _eps_ladder())
    levels = [helpers.counted(calls, k, f) for k, f in enumerate(levels)]
    x0, n = jax.random.normal(jax.random.key(0), (3, 2)), 12
    ts = SDE.time_grid(n, "karras")
    solve = lambda p, k: sampling.multilevel_solve(levels, jnp.asarray(p), rule, x0, ts,
                                                   jax.random.key(k))
    total = _calls_per_solve(solver, n)
    x, stats = solve([1.0, 0.5, 1e-9], 6)
    jax.effects_barrier()
    assert calls[0] == total and 0 < calls[1] < total and calls[2] == 0, calls
    np.testing.assert_array_equal(stats["evals"], calls)
    again, stats_again = solve([1.0, 0.5, 1e-9], 6)
    np.testing.assert_array_equal(x, again)
    np.testing.assert_array_equal(stats["draws"], stats_again["draws"])
    assert float(jnp.abs(solve([1.0, 0.5, 1e-9], 7)[0] - x).max()) > 1e-6
    jax.effects_barrier()
    calls[:] = 0
    _, stats = solve([1.0, 1.0, 1e-9], 6)
    jax.effects_barrier()
    np.testing.assert_array_equal(calls, [0, total, 0])
    np.testing.assert_array_equal(stats["evals"], calls)


def test_heun_draws_one_telescope_per_call_and_fixed_draws_reproduce_the_solve():
    """Heun's ``stats["draws"]`` is ``(N, 2, K)``: two independent draws per step; giving them
    back as a fixed pattern reproduces the solve; a pattern of the wrong shape is refused."""
    levels, rule = solvers.for_vpsde(SDE, "heun", _eps_ladder())
    x0, ts, probs = jnp.ones((2, 2)), SDE.time_grid(400, "karras"), jnp.array([1.0, 0.5, 0.5])
    x, stats = sampling.multilevel_solve(levels, probs, rule, x0, ts, jax.random.key(0))
    draws = np.asarray(stats["draws"])
    assert draws.shape == (400, 2, 3) and draws[..., 0].all()
    agree = (draws[:, 0, 1:] == draws[:, 1, 1:]).mean()
    assert abs(agree - 0.5) < 0.06  # independent Bernoulli(0.5) pairs agree half the time
    again, fixed = sampling.multilevel_solve(levels, probs, rule, x0, ts, None,
                                             draws=jnp.asarray(draws))
    np.testing.assert_array_equal(x, again)
    np.testing.assert_array_equal(fixed["evals"], stats["evals"])
    with pytest.raises(ValueError, match="draws: expected shape"):
        sampling.multilevel_solve(levels, probs, rule, x0, ts, None,
                                  draws=jnp.asarray(draws[:, 0]))


def test_calls_per_step_and_the_expected_cost_of_multi_call_rules():
    """``calls_per_step``: one for one-call rules and DPM-Solver++, two for Heun but one on
    its last (Euler) step, two for stochastic Heun; with those weights the expected
    evaluations per level equal the mean realised ones of multilevel Heun solves (each call
    its own draws), and the sweep's rows price EM-Heun and ML-EM-Heun by them."""
    from analysis import cost_error
    from mlem import cost

    n = 12
    ts = SDE.time_grid(n, "karras")
    for solver, want in (("sde", [1] * n), ("ddim", [1] * n), ("dpmpp2m", [1] * n),
                         ("dpmpp2m-sde", [1] * n), ("heun", [2] * (n - 1) + [1])):
        rule = solvers.for_vpsde(SDE, solver, [])[1]
        np.testing.assert_array_equal(solvers.calls_per_step(rule, ts), want, err_msg=solver)
    np.testing.assert_array_equal(solvers.calls_per_step(solvers.Heun(SDE, False), ts), [2] * n)
    np.testing.assert_array_equal(solvers.calls_per_step(solvers.DriftHeun(), ts), [2] * n)

    levels, rule = solvers.for_vpsde(SDE, "heun", _eps_ladder())
    probs, calls = jnp.array([1.0, 0.5, 0.25]), solvers.calls_per_step(rule, ts)
    x0 = jnp.ones((1, 2))
    evals = jax.jit(jax.vmap(lambda k: sampling.multilevel_solve(
        levels, probs, rule, x0, ts, k)[1]["evals"]))(jax.random.split(jax.random.key(3), 400))
    evals = np.asarray(evals, np.float64)
    expected = np.asarray(cost.expected_evals(probs, calls=calls))
    np.testing.assert_allclose(expected, [2 * n - 1, (2 * n - 1) * 0.625, (2 * n - 1) * 0.25])
    se = evals.std(0, ddof=1) / np.sqrt(len(evals))
    assert np.all(np.abs(evals.mean(0) - expected) <= 4 * se + 1e-9), (evals.mean(0), expected)
    with pytest.raises(ValueError, match="one count per step"):
        cost.expected_evals(probs, n, calls=calls[:-1])

    flops = np.array([1.0, 10.0, 100.0])
    em = cost_error._row(flops, {"method": "em", "level": 3, "top": 3, "steps": n}, 0,
                         np.zeros(2), np.zeros(2), np.nan, np.array([2 * n - 1.0]), None, calls)
    ml = cost_error._row(flops, {"method": "mlem", "level": 0, "top": 3, "steps": n}, 0,
                         np.zeros(2), np.zeros(2), np.nan, evals[0], np.asarray(probs), calls)
    assert em["expected_flops"] == (2 * n - 1) * 100.0
    assert ml["expected_flops"] == pytest.approx(float(expected @ flops))


# --- the Gaussian level reproduces its data; coupling; plumbing ------------------------------

_COV = np.array([[0.16, 0.06], [0.06, 0.09]])


@pytest.mark.parametrize("solver", NEW)
def test_the_gaussian_level_reproduces_its_data_through_each_new_solver(solver):
    """Prior N(0, I) → data N(μ, Σ) with a correlated Σ (the full-rank level of
    mlem/models/gaussian.py), 8192 samples, 50 Karras steps: mean within 0.02, covariance
    entries within 0.012 (5 standard errors of a variance of 0.16 is 0.0125). Measured
    deviations ≤ 0.0036 (dpmpp2m, heun) and ≤ 0.0085 (dpmpp2m-sde); DDIM needs 200 steps
    for the same."""
    lam, vec = np.linalg.eigh(_COV)
    level = _gaussian_level(np.array([0.8, -0.5]).reshape(1, 1, 2), vec, lam)
    (level,), rule = solvers.for_vpsde(SDE, solver, [level])
    x0 = jax.random.normal(jax.random.key(0), (8192, 1, 1, 2))
    x, stats = sampling.solve(level, rule, x0, SDE.time_grid(50, "karras"), jax.random.key(1))
    assert int(stats["evals"][0]) == _calls_per_solve(solver, 50)
    x = np.asarray(x).reshape(-1, 2)
    np.testing.assert_allclose(x.mean(0), [0.8, -0.5], atol=0.02)
    np.testing.assert_allclose(np.cov(x.T), _COV, atol=0.012)


def test_ladder_and_generation_take_the_new_solvers_and_the_karras_grid():
    """``ladder.em/mlem/switching(..., solver=)`` and ``generation.generate`` with heun count
    its 2N − 1 calls; the Karras grid is a grid of ``generation.time_grids``."""
    from mlem import generation

    ladder, x0 = helpers.gaussian_ladder(SDE)
    ts, path_ts = generation.time_grids(ladder, 4, 8, "karras")
    np.testing.assert_array_equal(ts, np.asarray(SDE.time_grid(8, "karras"))[::2])
    key = jax.random.key(0)
    for solver in NEW:
        calls = _calls_per_solve(solver, 4)
        _, stats = ladders.em(ladder, -1, x0, ts, key, solver=solver)
        np.testing.assert_array_equal(stats["evals"], [calls])
        _, stats = ladders.mlem(ladder, np.array([1.0, 1.0]), x0, ts, key, solver=solver)
        np.testing.assert_array_equal(stats["evals"], [0, calls])
        _, stats = ladders.switching(ladder, np.array([2, 2, 2, 2]), x0, ts, key, solver=solver)
        np.testing.assert_array_equal(stats["evals"], [0, calls])
    x, gen = generation.generate(ladder, "em", None, ts, num_samples=2, batch_size=2, seed=0,
                                 path_ts=path_ts, solver="heun", em_level=1)
    assert np.all(np.isfinite(x))
    np.testing.assert_array_equal(gen["evals_per_level"], [7, 0])


# --- Heun on a drift-form SDE (the synthetic testbed's second-order solver) -------------------

def _linear_ode_errors(rule, steps=(16, 32, 64, 128)):
    """RMSE of ``dx = −x (1 + τ) dτ`` on [0, 1] against its solution ``x0 e^{−(τ + τ²/2)}``."""
    x0 = jax.random.normal(jax.random.key(0), (64, 3))
    drift = lambda x, tau: -x * (1.0 + tau)
    exact = np.asarray(x0, np.float64) * np.exp(-1.5)
    errors = []
    for n in steps:
        x, stats = sampling.solve(drift, rule, x0, jnp.linspace(0.0, 1.0, n + 1), None)
        errors.append(float(np.sqrt(np.mean((np.asarray(x, np.float64) - exact) ** 2))))
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0], errors, stats


@dataclasses.dataclass(frozen=True)
class _PredictorOnly(solvers.DriftHeun):
    """Negative control: the corrector's second output weighted 0 (Euler with a wasted call)."""

    def step(self, x, evaluate, tau0, tau1, dw, state):
        first = evaluate(0, x, tau0)
        evaluate(1, x + (tau1 - tau0) * first, tau1)
        return x + (tau1 - tau0) * first, state


def test_drift_heun_is_second_order_on_an_ode_and_its_control_is_not():
    """Heun on a drift (the synthetic testbed's second-order solver): slope 2 on a
    time-dependent linear ODE (measured 2.03), two calls a step; the predictor alone, first
    order (measured 1.01), fails the same check."""
    slope, errors, stats = _linear_ode_errors(solvers.DriftHeun())
    assert _is_order(slope, 2), (slope, errors)
    np.testing.assert_array_equal(stats["evals"], [2 * 128])
    bad, bad_errors, _ = _linear_ode_errors(_PredictorOnly())
    assert not _is_order(bad, 2) and _is_order(bad, 1), (bad, bad_errors)


def test_multilevel_drift_heun_with_probabilities_one_is_the_top_level_solve():
    """All probabilities 1: only the top level is called (twice a step) and the samples are
    the single-level top solve's, with the same Brownian increments, noise added once."""
    levels = [lambda x, t, c=c: -c * x + 0.1 * jnp.sin(x) * t for c in (0.8, 0.9, 1.0)]
    rule = solvers.DriftHeun(lambda tau: 0.5 + 0.0 * tau)
    x0, n = jax.random.normal(jax.random.key(1), (8, 2)), 16
    ts = jnp.linspace(0.0, 1.0, n + 1)
    path = brownian.BatchPath(jax.random.key(2), jnp.linspace(0.0, 1.0, 2 * n + 1))
    x_ml, stats = sampling.multilevel_solve(levels, jnp.ones(3), rule, x0, ts,
                                            jax.random.key(3), path=path)
    x_top, top = sampling.solve(levels[-1], rule, x0, ts, None, path=path)
    np.testing.assert_allclose(x_ml, x_top, rtol=0, atol=2e-6)
    np.testing.assert_array_equal(stats["evals"], [0, 0, 2 * n])
    np.testing.assert_array_equal(top["evals"], [2 * n])
    x_em, _ = sampling.solve(levels[-1], solvers.EulerMaruyama(rule.diffusion), x0, ts, None,
                             path=path)
    assert not np.allclose(x_top, x_em)  # a different scheme on the same path
