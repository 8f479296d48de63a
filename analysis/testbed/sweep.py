"""What the synthetic cost–error sweep runs, and the solves (docs/design.md §1, §3).

Ladder: :func:`mlem.testbed.dyadic_hierarchy` (``δ_k ∝ 2^{-k}`` and ``V_k ∝ 4^{-k}``
exactly, declared cost ``c_k = 2^{γk}``, 13 levels). Every run of a seed starts from the same
``X_0`` and sees the same Brownian path (fine increments from one key, summed onto coarser
grids); the reference is EM with the exact drift on ``ref_steps`` steps. EM sweeps (level,
steps); ML-EM sweeps (top level, steps ``N = 2^{top + offset}``, knob ``C``) with the
variance-optimal schedule
``p_k = min(1, C sqrt(V_k / C_k))``, ``C`` set so the top level runs ``m = N p_top`` times per
solve on average (``m`` from 1/2 to 64, so ``1/p_top`` reaches ``~10^4``). Levels below the
highest saturated one (``p = 1``) get weight ``1 − 1 = 0``, and the sampler does not evaluate
them (exactly as for any user of :mod:`mlem.sampling`).

With ``noise = 0`` (``python -m analysis.testbed --ode``) the SDE is the ODE
``dX = f*(X) dτ``: EM is Euler (:class:`mlem.solvers.Euler`, no increments drawn), ML-EM is
multilevel Euler (the same estimator fed to that rule) and the reference is Euler with the
exact drift on ``ref_steps`` steps. The Bernoulli draws make the multilevel solve a random
ODE whose randomisation variance the schedule controls exactly as for the SDE.
With ``solver = "heun"`` both are Heun's method instead (:class:`mlem.solvers.DriftHeun`:
stochastic Heun on the SDE, Heun's second-order method on the ODE; two level calls a
step, each its own telescope under ML-EM, so every cost doubles); the reference stays the
exact drift with EM/Euler on ``ref_steps`` steps.

Error = squared error over samples and dimensions (one MSE per seed), and the
*distributional* error of the seed's batch (:func:`moment_error`: its mean and covariance
against those of ``oracle_seeds`` batches of independent exact solves, which share nothing
with the sweep's seeds); cost = declared level
cost × the expected number of evaluations under the schedule (EM: exact; the realised cost is
recorded beside it). A seed is one realisation (its own ``X_0``, Brownian path and Bernoulli
draws). What is made of the rows: :mod:`analysis.testbed.summary`.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from mlem import brownian, cost, sampling, schedules, solvers, testbed

SOLVERS = {"euler": 1, "heun": 2}  # the sweep's solvers and their level calls per step


@dataclasses.dataclass(frozen=True)
class SweepConfig:
    """What :func:`run_sweep` sweeps. Step counts must be powers of two dividing ``ref_steps``."""

    gamma: float = 3.0
    num_levels: int = 13
    dim: int = 4
    perturbation_rms: float = 8.0  # RMS of e_k per dimension: level bias vs discretisation error
    perturbation_freq: float = 0.5  # frequency of the random-feature fields in e_k
    level_correlation: float = 1.0  # e_k = ρ u_0 + sqrt(1 − ρ²) u_k; 1: exact V_k ∝ 4^-k
    noise: float = 1.0  # the diffusion g; 0: the ODE dX = f*(X) dτ, solved by (ML-)Euler
    solver: str = "euler"  # "euler" (EM; Euler on the ODE) or "heun" (two calls a step)
    batch_size: int = 32
    seeds: int = 32
    ref_steps: int = 2**15
    em_steps: tuple[int, ...] = tuple(2**j for j in range(1, 13))
    mlem_min_top: int = 2
    mlem_step_offsets: tuple[int, ...] = (-2, -1, 0)  # N = 2^(top + offset), in [2, max_steps]
    mlem_top_evals: tuple[float, ...] = tuple(2.0**j for j in range(-1, 7))  # m = N · p_top
    max_steps: int = 2**13
    # Distributional error: the moments of each solve's batch against those of independent
    # exact solves (``oracle_seeds`` batches; as many again measure the finite-sample floor)
    oracle_seeds: int = 32
    dist_target_ratios: tuple[float, ...] = (16.0, 8.0, 4.0, 2.0)  # × the floor, predeclared
    schedule: str = "variance"  # "variance" (measured V_k) or "dyadic" (p_k ∝ 2^{-(1+γ/2)k})
    floor_factor: float = 8.0  # fit range starts at floor_factor × the larger envelope floor
    fit_decades: float = 1.25  # … and spans this many decades of RMSE
    min_fit_decades: float = 1.0  # fail if the common range is narrower than this
    seed: int = 0

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver: one of {', '.join(SOLVERS)}, got {self.solver!r}")
        if self.schedule not in ("variance", "dyadic"):
            raise ValueError(f"schedule: 'variance' or 'dyadic', got {self.schedule!r}")
        if self.seeds < 1 or self.batch_size < 1:
            raise ValueError(f"seeds, batch_size: need >= 1, got {self.seeds}, {self.batch_size}")
        for n in (*self.em_steps, self.max_steps):
            if n < 1 or self.ref_steps % n or n & (n - 1):
                raise ValueError(f"em_steps/max_steps: {n} must be a power of two dividing "
                                 f"ref_steps={self.ref_steps}")

    @classmethod
    def with_levels(cls, num_levels: int, gamma: float = 3.0, **overrides) -> SweepConfig:
        """The default sweep scaled to ``num_levels``: EM up to ``2^{K-1}`` steps, ML-EM up to
        ``2^K``, reference on ``2^{K+2}`` (``K = 13`` is the default config)."""
        k = num_levels
        fields = dict(gamma=gamma, num_levels=k, em_steps=tuple(2**j for j in range(1, k)),
                      max_steps=2**k, ref_steps=2 ** (k + 2))
        return cls(**{**fields, **overrides})

    @classmethod
    def quick(cls, gamma: float = 3.0, num_levels: int = 13, **overrides) -> SweepConfig:
        """A sweep for ``make demo-synthetic``: a thinner ML-EM grid (under 2 minutes here)."""
        fields = dict(seeds=32, mlem_min_top=6, mlem_step_offsets=(-2, -1),
                      mlem_top_evals=tuple(2.0**j for j in range(0, 6)))
        return cls.with_levels(num_levels, gamma, **{**fields, **overrides})

    @classmethod
    def ci(cls, gamma: float = 3.0, **overrides) -> SweepConfig:
        """The reduced check in ``make test`` (~40 s here): 10 levels, 16 seeds, the quick ML-EM
        grid, fitted from 4× the floor over one decade. Enough to separate the exponents (EM
        ≈ 3.8, ML-EM ≈ 2.9 at γ = 3), not to pin them."""
        fields = dict(seeds=16, floor_factor=4.0, fit_decades=1.0, min_fit_decades=0.75,
                      oracle_seeds=16)
        return cls.quick(gamma, num_levels=10, **{**fields, **overrides})

    def mlem_grid(self) -> list[tuple[int, int, float]]:
        """``(top, N, m)`` triples of the ML-EM sweep (``m < N``)."""
        grid = []
        for top in range(self.mlem_min_top, self.num_levels + 1):
            steps = sorted({min(max(2 ** (top + o), 2), self.max_steps)
                            for o in self.mlem_step_offsets})
            grid += [(top, n, m) for n in steps for m in sorted(self.mlem_top_evals) if m < n]
        return grid

    def hierarchy(self) -> testbed.Hierarchy:
        """The dyadic ladder this sweep runs on."""
        return testbed.dyadic_hierarchy(
            self.gamma, self.num_levels, self.dim, perturbation_rms=self.perturbation_rms,
            perturbation_freq=self.perturbation_freq, level_correlation=self.level_correlation,
            noise=self.noise, seed=self.seed)


# --- The ML-EM plan --------------------------------------------------------------------------


def _mlem_probs(cfg: SweepConfig, hierarchy, variances, top: int, steps: int, m: float):
    """Schedule for levels ``1..top`` with the top level expected ``m`` times per solve."""
    p_top = m / steps
    if cfg.schedule == "dyadic":
        c = p_top * 2.0 ** ((1 + cfg.gamma / 2) * (top - 1))
        return c, schedules.dyadic(top, cfg.gamma, c)
    inc_costs = schedules.increment_costs(hierarchy.costs[:top])
    c = p_top / np.sqrt(variances[top - 1] / inc_costs[-1])
    return c, schedules.variance_optimal(variances[:top], inc_costs, c)


def mlem_plan(cfg: SweepConfig, hierarchy, variances) -> list[dict]:
    """The ML-EM runs: ``top``, ``steps``, ``m`` (expected top-level evaluations), knob ``c``
    and ``probs`` over levels ``1..top``."""
    plan = []
    for top, n, m in cfg.mlem_grid():
        c, probs = _mlem_probs(cfg, hierarchy, variances, top, n, m)
        plan.append(dict(top=top, steps=n, top_evals=m, c=c, probs=probs))
    return plan


# --- Solves ----------------------------------------------------------------------------------


def update_rule(hierarchy, solver: str = "euler"
                ) -> solvers.EulerMaruyama | solvers.Euler | solvers.DriftHeun:
    """``euler``: EM for the SDE, Euler (no increments) when the hierarchy has zero noise (an
    ODE); ``heun``: :class:`mlem.solvers.DriftHeun` (stochastic Heun; Heun's method on the
    ODE)."""
    if solver == "heun":
        return solvers.DriftHeun(None if hierarchy.noise == 0 else hierarchy.diffusion)
    return solvers.Euler() if hierarchy.noise == 0 else solvers.EulerMaruyama(hierarchy.diffusion)


@functools.partial(jax.jit, static_argnames=("hierarchy", "solver"))
def _em_solve(hierarchy, level, x0, ts, increments, solver="euler"):
    """The single-level solve at a traced ``level`` index: one compilation per step count."""
    drift = lambda x, t: jax.lax.switch(level, hierarchy.drifts, x, t)
    return sampling.solve(drift, update_rule(hierarchy, solver), x0, ts, None,
                          increments=increments)[0]


def _coarsen(fine: jax.Array, num_steps: int) -> jax.Array:
    """Sum consecutive fine increments ``(N_ref, B, d)`` onto ``num_steps`` steps."""
    return fine.reshape(num_steps, -1, *fine.shape[1:]).sum(1)


def _mse(x: jax.Array, ref: jax.Array) -> float:
    return float(jnp.mean((x - ref) ** 2))


ORACLE_STREAM = 1_000_003  # seed offset of the independent exact solves (never a sweep seed)


def moment_error(x: jax.Array, moments: tuple[np.ndarray, np.ndarray]) -> float:
    """Distributional error of a batch ``x (B, d)`` against exact moments ``(μ, Σ)``:
    ``‖mean(x) − μ‖²/d + ‖cov(x) − Σ‖_F²/d²``. Its finite-sample floor (the same statistic for
    exact batches of size ``B``) is measured by :func:`oracle_moments`."""
    x = np.asarray(x, np.float64)
    mu, sigma = moments
    d = x.shape[1]
    return float(np.sum((x.mean(0) - mu) ** 2) / d
                 + np.sum((np.cov(x, rowvar=False) - sigma) ** 2) / d**2)


def oracle_moments(cfg: SweepConfig, hierarchy, ts_ref) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                np.ndarray]:
    """``((μ, Σ), floor)``: the moments of ``oracle_seeds`` batches of exact solves from
    independent seeds, and :func:`moment_error` of as many further independent exact batches
    against them (the floor a method's batch cannot go below)."""
    def exact(s):
        key = jax.random.fold_in(jax.random.key(cfg.seed), ORACLE_STREAM + s)
        k_x0, k_path = jax.random.split(key)
        x0 = hierarchy.sample_x0(k_x0, cfg.batch_size)
        fine = brownian.increments(k_path, ts_ref, x0.shape)
        return np.asarray(sampling.solve(hierarchy.exact_drift, update_rule(hierarchy), x0,
                                         ts_ref, None, increments=fine)[0], np.float64)

    pooled = np.concatenate([exact(s) for s in range(cfg.oracle_seeds)])
    moments = (pooled.mean(0), np.cov(pooled, rowvar=False))
    floor = np.array([moment_error(exact(cfg.oracle_seeds + s), moments)
                      for s in range(cfg.oracle_seeds)])
    return moments, floor


def _seed_paths(cfg: SweepConfig, hierarchy, ts_ref, seed: int):
    """``X_0``, fine Brownian increments, exact-drift reference and Bernoulli key of a seed."""
    k_x0, k_path, k_bern = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), seed), 3)
    x0 = hierarchy.sample_x0(k_x0, cfg.batch_size)
    fine = brownian.increments(k_path, ts_ref, x0.shape)
    ref, _ = sampling.solve(hierarchy.exact_drift, update_rule(hierarchy), x0, ts_ref, None,
                            increments=fine)
    return x0, fine, ref, k_bern


def _em_rows(cfg: SweepConfig, hierarchy, seed: int, x0, ref, paths, bar,
             moments) -> list[dict]:
    """One row per (steps, level) of EM on seed ``seed``'s paths."""
    rows = []
    for n in cfg.em_steps:
        for level in range(cfg.num_levels):
            x = _em_solve(hierarchy, level, x0, *paths[n], solver=cfg.solver)
            calls = n * SOLVERS[cfg.solver]
            rows.append(dict(method="em", level=level + 1, steps=n, top_evals=None, c=None,
                             seed=seed, cost=calls * hierarchy.costs[level],
                             realised_cost=calls * hierarchy.costs[level], mse=_mse(x, ref),
                             dist=moment_error(x, moments)))
            bar.update()
    return rows


def _mlem_rows(plan, hierarchy, seed: int, x0, ref, k_bern, paths, bar,
               moments, solver: str = "euler") -> list[dict]:
    """One row per run of ``plan`` on seed ``seed``'s paths and Bernoulli key (each level
    call of a step draws its own Bernoullis with the step's probabilities)."""
    rows = []
    for run in plan:
        top, steps = run["top"], run["steps"]
        ts, inc = paths[steps]
        x, stats = sampling.multilevel_solve(
            hierarchy.drifts[:top], run["probs"], update_rule(hierarchy, solver), x0, ts, k_bern,
            increments=inc)
        costs = hierarchy.costs[:top]
        rows.append(dict(method="mlem", level=top, steps=steps, top_evals=run["top_evals"],
                         c=run["c"], seed=seed,
                         cost=SOLVERS[solver] * cost.expected_cost(run["probs"], costs, steps),
                         realised_cost=cost.realised_cost(stats, costs), mse=_mse(x, ref),
                         dist=moment_error(x, moments)))
        bar.update()
    return rows


def run_sweep(cfg: SweepConfig, hierarchy: testbed.Hierarchy, *, progress: bool = True
              ) -> tuple[list[dict], dict]:
    """Every (configuration, seed) solve; returns per-seed rows and the ladder's statistics.

    Seed ``s`` fixes ``X_0``, the Brownian path and the Bernoulli key shared by all of its
    ML-EM runs (common random numbers across configurations; independent across seeds).
    ``V_k`` for the variance-optimal schedule comes from seed 0's initial and final states.
    The ladder's statistics include the oracle's finite-sample floor of the distributional
    error (:func:`oracle_moments`, ``dist_floor``: one value per independent exact batch).
    """
    ts_ref = jnp.linspace(0.0, 1.0, cfg.ref_steps + 1)
    first = _seed_paths(cfg, hierarchy, ts_ref, 0)
    variances = testbed.level_variances(hierarchy, jnp.concatenate([first[0], first[2]]))
    plan = mlem_plan(cfg, hierarchy, variances)
    moments, floor = oracle_moments(cfg, hierarchy, ts_ref)
    bar = tqdm(total=cfg.seeds * (cfg.num_levels * len(cfg.em_steps) + len(plan)),
               desc=f"synthetic γ={cfg.gamma:g}", disable=not progress)
    rows, probe = [], []
    for s in range(cfg.seeds):
        x0, fine, ref, k_bern = first if s == 0 else _seed_paths(cfg, hierarchy, ts_ref, s)
        probe += [x0, ref]
        paths = {n: (ts_ref[:: cfg.ref_steps // n], _coarsen(fine, n))
                 for n in {*cfg.em_steps, *(run["steps"] for run in plan)}}
        rows += _em_rows(cfg, hierarchy, s, x0, ref, paths, bar, moments)
        rows += _mlem_rows(plan, hierarchy, s, x0, ref, k_bern, paths, bar, moments,
                           cfg.solver)
    bar.close()
    errors = testbed.level_errors(hierarchy, jnp.concatenate(probe))
    return rows, {"level_errors": errors, "level_variances": variances,
                  "level_costs": hierarchy.costs, "dist_floor": floor}
