"""The learned-probability estimator (mlem.learn) on a problem small enough to enumerate.

Two levels, three steps, deterministic drifts and no noise: the only randomness is the
Bernoulli draw of level 2 at each step, so the expected loss is an exact sum over the 2^3
draw patterns, computed here by a solver written independently of mlem.sampling.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import optimize

from mlem import brownian, learn, sampling

TS = np.linspace(0.0, 1.0, 4, dtype=np.float32)  # 3 steps, one time bin each
BINS = learn.step_bins(TS, TS)
X0 = jnp.array([[0.5, -1.0], [1.2, 0.3]], jnp.float32)
COSTS = np.array([1.0, 10.0])
COST_SCALE = 3 * COSTS[-1]  # a top-level EM solve on the grid
LAM = 10.0  # an interior, time-dependent optimum p* ≈ (0.56, 0.60, 0.55)


def f1(x, t):
    return -x


def f2(x, t):
    return -x + (1.0 + t) * (0.8 + 0.5 * x**2)


def no_noise(t):
    return jnp.float32(0.0)


def direct_solve(draws, p):
    """The ML-EM recursion written out, for a draw pattern ``draws`` (3,) of level 2."""
    x = X0
    for n in range(3):
        t, eta = TS[n], TS[n + 1] - TS[n]
        x = x + eta * (f1(x, t) + draws[n] / p[n] * (f2(x, t) - f1(x, t)))
    return x


REF = direct_solve(np.ones(3), jnp.ones(3))


def exact_loss(p):
    """``E_B[MSE]`` over the 8 patterns, ``p`` (3,) the probabilities of level 2."""
    total = 0.0
    for pattern in itertools.product((0.0, 1.0), repeat=3):
        b = jnp.array(pattern)
        weight = jnp.prod(jnp.where(b > 0, p, 1 - p))
        total = total + weight * jnp.mean((direct_solve(b, p) - REF) ** 2)
    return total


def exact_objective(p):
    cost = 3 * COSTS[0] + COSTS[1] * jnp.sum(p)  # level 1 always runs; level 2 iff drawn
    return exact_loss(p) + LAM * cost / COST_SCALE


def p_of(logits):
    return learn.probs_from_logits(logits)[:, 1]


def solve_loss(probs, realisation, key):
    x, stats = sampling.multilevel_euler_maruyama(
        (f1, f2), probs, no_noise, realisation["x0"], TS, key,
        increments=jnp.zeros((3, *X0.shape)))
    return jnp.mean((x - realisation["ref"]) ** 2), stats["draws"]


def realisations(num):
    return {"x0": jnp.broadcast_to(X0, (num, *X0.shape)),
            "ref": jnp.broadcast_to(REF, (num, *X0.shape))}


START = jnp.array([[0.3], [-0.5], [0.8]], jnp.float32)


@functools.partial(jax.jit, static_argnames="num_tangents")
def per_group_gradients(logits, key, num_tangents):
    """One estimate per realisation (2 draws each, leave-one-out baseline): ``(G, 3, 1)``
    full estimates and pathwise-only estimates."""
    groups = 4000
    keys = jax.random.split(key, (groups, 2))
    terms = learn.draw_terms(solve_loss, logits, BINS, realisations(groups), keys,
                             jax.random.fold_in(key, 1), num_tangents=num_tangents)
    one = lambda t, score: learn.loss_gradient(jax.tree_util.tree_map(lambda a: a[None], t),
                                               score=score)
    full = jax.vmap(lambda t: one(t, True))(terms)
    path = jax.vmap(lambda t: one(t, False))(terms)
    return full, path


def z_scores(samples, exact):
    samples = np.asarray(samples).reshape(samples.shape[0], -1)
    se = samples.std(0, ddof=1) / np.sqrt(samples.shape[0])
    return (samples.mean(0) - np.asarray(exact).reshape(-1)) / se


def test_estimator_is_unbiased_and_pathwise_alone_is_not():
    exact = jax.grad(lambda th: exact_loss(p_of(th)))(START)
    full, _ = per_group_gradients(START, jax.random.key(0), 1)  # one random tangent
    exact_full, path = per_group_gradients(START, jax.random.key(1), 0)  # every basis tangent
    z_full, z_exact_full = z_scores(full, exact), z_scores(exact_full, exact)
    assert np.all(np.abs(z_full) < 4), (z_full, np.asarray(exact).ravel())
    assert np.all(np.abs(z_exact_full) < 4), z_exact_full
    # the negative control: without the score term the mean is off by many standard errors
    z_path = z_scores(path, exact)
    assert np.max(np.abs(z_path)) > 10, z_path


def test_draws_of_the_estimator_are_the_samplers():
    """The draws the score term uses are those of the solve (same key, same pattern)."""
    probs = learn.grid_probs(START, BINS)
    key = jax.random.key(3)
    loss, draws = solve_loss(probs, {"x0": X0, "ref": REF}, key)
    direct = jnp.mean((direct_solve(draws[:, 1].astype(jnp.float32), probs[:, 1]) - REF) ** 2)
    np.testing.assert_allclose(loss, direct, rtol=1e-5)


def exact_optimum():
    """Brute force on a grid of p, refined by L-BFGS-B on the exact objective."""
    grid = np.linspace(0.02, 0.98, 25)
    points = jnp.array(list(itertools.product(grid, repeat=3)), jnp.float32)
    values = jax.jit(jax.vmap(exact_objective))(points)
    start = np.asarray(points[int(jnp.argmin(values))], np.float64)
    fun = jax.jit(jax.value_and_grad(lambda p: exact_objective(p.astype(jnp.float32))))
    res = optimize.minimize(lambda p: tuple(np.float64(v) for v in fun(jnp.asarray(p))),
                            start, jac=True, method="L-BFGS-B", bounds=[(1e-3, 1.0)] * 3)
    return res.x, float(res.fun)


def test_sgd_reaches_the_exact_optimum():
    p_star, j_star = exact_optimum()
    assert np.all((p_star > 0.05) & (p_star < 0.95)), p_star  # an interior optimum

    def batches(i):
        return realisations(8), jax.random.split(jax.random.fold_in(jax.random.key(1), i), (8, 2))

    # p ≈ 0.95, 1.3x the optimal objective. (Starting far below p* is worse still, 10^3x,
    # but the drift's x² makes the loss heavy-tailed there: a draw of weight 1/p ≈ 50 is rare
    # and huge, and a few hundred steps of small batches do not see enough of them.)
    bad = jnp.full((3, 1), 3.0)
    opt = optax.adam(optax.exponential_decay(0.15, 300, 0.05))
    logits, trace = learn.learn(solve_loss, bad, BINS, COSTS, LAM, COST_SCALE, batches,
                                steps=300, key=jax.random.key(2), optimizer=opt)
    p = np.asarray(p_of(logits))
    assert float(exact_objective(p_of(bad))) > 1.25 * j_star  # the start is bad
    np.testing.assert_allclose(p, p_star, atol=0.05)
    assert float(exact_objective(jnp.asarray(p))) < j_star * 1.005
    assert len(trace) == 300 and trace[-1]["objective"] < trace[0]["objective"]


def _temp_bytes(num_steps: int, reverse: bool) -> int:
    """Compiled temporary memory of the gradient estimator (or, ``reverse``, of reverse-mode
    autodiff through the same solves) with ``num_steps`` steps; state (16, 64)."""
    ts = jnp.linspace(0.0, 1.0, num_steps + 1)
    bins = learn.step_bins([0.0, 0.5, 1.0], ts)

    def loss(probs, realisation, key):
        path = brownian.BatchPath(realisation["path"], ts)
        x, stats = sampling.multilevel_euler_maruyama(
            (f1, f2), probs, lambda t: jnp.float32(0.3), realisation["x0"], ts, key, path=path)
        return jnp.mean((x - realisation["ref"]) ** 2), stats["draws"]

    x0 = jnp.zeros((1, 16, 64))
    real = {"x0": x0, "ref": x0, "path": jax.random.split(jax.random.key(0), 1)}
    keys = jax.random.split(jax.random.key(1), (1, 2))
    logits = jnp.zeros((2, 1))
    if reverse:
        fn = lambda th: jax.grad(lambda t: loss(learn.grid_probs(t, bins),
                                                jax.tree_util.tree_map(lambda a: a[0], real),
                                                keys[0, 0])[0])(th)
    else:
        fn = lambda th: learn.loss_gradient(learn.draw_terms(loss, th, bins, real, keys,
                                                             jax.random.key(2)))
    return jax.jit(fn).lower(logits).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("reverse", [False, True])
def test_peak_memory_is_flat_in_the_step_count(reverse):
    """Forward mode: temporaries do not grow from 8 to 128 steps. Reverse mode through the
    same solves (the control) stores a state per step and grows."""
    small, large = _temp_bytes(8, reverse), _temp_bytes(128, reverse)
    if reverse:
        assert large > 4 * small, (small, large)
    else:
        assert large < 1.25 * small + 4096, (small, large)


def test_learned_schedule_in_cost_error_rescales_the_file(tmp_path):
    from analysis.cost_error import make_probs
    from mlem import schedules

    ts = np.linspace(0.0, 1.0, 9)
    shape = np.array([[1.0, 0.5, 0.1], [1.0, 0.2, 0.05]])
    path = tmp_path / "learned.json"
    schedules.save(path, shape, [0.0, 0.5, 1.0])
    c, probs = make_probs("learned", np.array([1.0, 4.0, 16.0]), ts, None, None, 2.0, str(path))
    np.testing.assert_allclose(probs[:, -1].sum(), 2.0, rtol=1e-6)
    np.testing.assert_allclose(probs, np.minimum(1.0, c * schedules.on_grid(shape, [0, .5, 1], ts))
                               * np.array([0, 1, 1]) + np.array([1, 0, 0]))
    with pytest.raises(FileNotFoundError, match="learned_schedule"):
        make_probs("learned", np.array([1.0, 4.0, 16.0]), ts, None, None, 2.0, "")


def test_learn_probs_writes_schedules_and_summary(tmp_path, monkeypatch):
    """Schedules, summary and report row; training runs resume."""
    from analysis import learn_problems, learn_probs
    from mlem import schedules

    cfg = learn_probs.LearnConfig(anchors=(1.0,), sgd_steps=3, bins=2, train_realisations=2,
                                  top_evals=(0.5, 1.0, 2.0, 4.0), resamples=20)
    problem = learn_problems.synthetic_problem(cfg, 3.0, num_levels=3, steps=8, ref_steps=32,
                                               batch_size=4, eval_realisations=4,
                                               selection_realisations=3)
    summary = learn_probs.run(problem, cfg, tmp_path)
    head = summary["speedup_learned_over_best_constant"]  # at predeclared targets only
    assert set(head) == {"2x operating MSE", "operating point", "0.5x operating MSE"}
    assert len(head["operating point"]["ci"]) == 2 and "max" not in str(list(summary))
    stats = summary["learn_probs"]
    assert stats["chosen_run"] == "t1_lam1" and stats["num_selection_realisations"] == 3
    assert stats["num_evaluation_realisations"] == 4
    (row,) = stats["per_lambda"]
    probs = schedules.load(row["schedule_file"], 3, problem.ts)
    assert probs.shape == (8, 3) and np.all(probs[:, 0] == 1) and np.all(probs[:, -1] < 1)
    assert (tmp_path / "learn" / "points.csv").exists()
    from analysis import report

    table = report.report([tmp_path]).splitlines()  # README's learned-schedule table
    assert table[0].startswith("| results | problem |") and len(table) == 5
    value = head["operating point"]["value"]
    row = next(line for line in table if "| operating point (" in line)
    assert row.startswith(f"| {tmp_path} |") and (
        f"{value:.3g}×" in row if value is not None else "not reached" in row)

    # resumable: a finished training run is reused while its settings are unchanged ...
    calls, real_train = [], learn_probs.train
    monkeypatch.setattr(learn_probs, "train", lambda *a: calls.append(a) or real_train(*a))
    again = learn_probs.run(problem, cfg, tmp_path)
    assert not calls and again["learn_probs"]["per_lambda"] == stats["per_lambda"]
    assert again["speedup_learned_over_best_constant"] == head
    # ... and trained again when they change (here the number of SGD steps) or on recompute
    learn_probs.run(problem, dataclasses.replace(cfg, sgd_steps=2), tmp_path)
    learn_probs.run(problem, cfg, tmp_path, recompute=True)
    assert len(calls) == 2
