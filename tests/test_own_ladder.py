"""Your own ladder: :meth:`mlem.Ladder.from_functions` samples exactly like a Flax ladder and
like the sampler called directly, prices levels with XLA, keeps parameters as jit arguments;
``examples/own_ladder.py`` runs and ML-EM beats EM there (issue 21 §2)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem
from mlem import ladder as ladders
from mlem import sampling
from mlem.sde import VPSDE, gaussian_eps
from tests import helpers

ROOT = Path(__file__).resolve().parents[1]
TS = np.linspace(0.0, 0.99, 9, dtype=np.float32)


def test_function_ladder_samples_like_the_flax_ladder_it_wraps():
    sde = VPSDE()
    flax_ladder, x0 = helpers.gaussian_ladder(sde)
    applies = [lambda p, x, t, m=m: m.apply({"params": p}, x, t) for m in flax_ladder.models]
    own = mlem.Ladder.from_functions(apply_fns=applies, params=flax_ladder.params,
                                     image_shape=(4, 4, 1), sde=sde, costs=[1.0, 3.0])
    assert own.names == ("level1", "level2") and own.costs == (1.0, 3.0)
    key, probs = jax.random.key(1), np.array([1.0, 0.4])
    for run in (lambda lad: ladders.em(lad, 1, x0, TS, key),
                lambda lad: ladders.em(lad, -1, x0, TS, key),
                lambda lad: ladders.mlem(lad, probs, x0, TS, key),
                lambda lad: ladders.switching(lad, np.array([1] * 4 + [2] * 4), x0, TS, key),
                lambda lad: ladders.em(ladders.prefix(lad, 1), -1, x0, TS, key)):
        (x_own, s_own), (x_flax, s_flax) = run(own), run(flax_ladder)
        np.testing.assert_allclose(x_own, x_flax, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(s_own["evals"], s_flax["evals"])
    assert ladders.prefix(own, 1).costs == (1.0,)
    np.testing.assert_array_equal(ladders.level_flops(own, 64), [1.0, 3.0])


def test_eps_functions_give_the_solve_of_the_sampler_itself():
    sde, x0, key = VPSDE(), jax.random.normal(jax.random.key(0), (3, 2, 2, 1)), jax.random.key(2)
    eps = [gaussian_eps(sde, 0.5, 1.0), gaussian_eps(sde, 0.0, 1.0)]
    own = mlem.Ladder.from_functions(eps, image_shape=(2, 2, 1), sde=sde, costs=[1.0, 2.0])
    x, _ = ladders.em(own, -1, x0, TS, key)
    direct, _ = sampling.euler_maruyama(sde.drift_from_eps(eps[1]), sde.diffusion, x0, TS, key)
    np.testing.assert_allclose(x, direct, rtol=1e-5, atol=1e-6)
    x, stats = ladders.mlem(own, np.array([1.0, 0.5]), x0, TS, key)
    direct, ref = sampling.multilevel_euler_maruyama(
        [sde.drift_from_eps(e) for e in eps], np.array([1.0, 0.5]), sde.diffusion, x0, TS, key)
    np.testing.assert_allclose(x, direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stats["draws"], ref["draws"])


def test_costs_are_measured_by_xla_and_params_are_jit_arguments():
    widths, traced = (4, 16, 64), []

    def mlp(params, x, t):
        traced.append(isinstance(params["w1"], jax.core.Tracer))
        flat = jnp.concatenate([x.reshape(x.shape[0], -1), t[:, None]], axis=1)
        return (jnp.tanh(flat @ params["w1"]) @ params["w2"]).reshape(x.shape)

    params = [{"w1": jax.random.normal(jax.random.key(w), (9, w)) / 3,
               "w2": jax.random.normal(jax.random.key(w + 1), (w, 8)) / w} for w in widths]
    own = mlem.Ladder.from_functions(apply_fns=[mlp] * 3, params=params, image_shape=(2, 2, 2),
                                     names=("small", "medium", "large"))
    costs = np.asarray(own.costs)
    assert np.all(costs > 0) and np.all(np.diff(costs) > 0), costs
    assert costs[-1] > 2 * 9 * 64  # at least the first matmul of the widest level
    ladders.check_ordered(costs, own.names)
    flops, seconds = ladders.level_costs(own, 4, repeats=1)  # FLOPs as given, seconds timed
    np.testing.assert_array_equal(flops, costs)
    assert seconds.shape == (3,) and np.all(seconds > 0)
    traced.clear()
    x, _ = ladders.mlem(own, np.array([1.0, 0.5, 0.25]), jnp.zeros((2, 2, 2, 2)), TS,
                        jax.random.key(0))
    assert traced and all(traced)  # every level saw its parameters as traced arguments
    assert np.all(np.isfinite(np.asarray(x)))


def test_from_functions_refuses_ambiguous_or_mismatched_input():
    eps = [lambda x, t: x]
    with pytest.raises(ValueError, match="eps_fns, apply_fns: give exactly one"):
        mlem.Ladder.from_functions(image_shape=(2,))
    with pytest.raises(ValueError, match="params: need one parameter pytree per apply"):
        mlem.Ladder.from_functions(apply_fns=[lambda p, x, t: x] * 2, params=[{}],
                                   image_shape=(2,), costs=[1.0, 2.0])
    with pytest.raises(ValueError, match="costs: need 1 positive"):
        mlem.Ladder.from_functions(eps, image_shape=(2,), costs=[0.0])
    with pytest.raises(ValueError, match="names: need 1 names"):
        mlem.Ladder.from_functions(eps, image_shape=(2,), costs=[1.0], names=("a", "b"))


def test_example_runs_and_ml_em_is_cheaper_than_em_at_similar_error(capsys):
    spec = importlib.util.spec_from_file_location("own_ladder", ROOT / "examples/own_ladder.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main()
    assert len((ROOT / "examples/own_ladder.py").read_text().splitlines()) <= 80
    costs, rows = np.asarray(result["costs"]), result["rows"]
    assert np.all(np.diff(costs) > 0)
    assert result["variances"].shape == (8, 3) and np.all(result["variances"] >= 0)
    (em_cost, em_mse), (cheap_cost, cheap_mse) = rows["em level3 64 steps"], rows[
        "em level3 16 steps"]
    ml_cost, ml_mse = rows["ml-em 64 steps"]
    biased_mse = rows["em level1 64 steps"][1]
    assert ml_cost < cheap_cost < em_cost  # ML-EM is cheaper than EM at a quarter of the steps
    assert em_mse < ml_mse < min(cheap_mse, biased_mse) / 4  # ... and far more accurate
    printed = capsys.readouterr().out
    assert "ml-em 64 steps" in printed and "MSE vs reference" in printed


def test_a_ladder_and_its_parameters_are_freed_after_its_solves():
    """The per-ladder caches (prefix ladders, compiled solvers) forget a ladder once it is
    gone: a long session that loads many ladders does not keep their parameters."""
    import gc
    import weakref

    import jax
    import jax.numpy as jnp

    import mlem

    scale = lambda c: (lambda p, x, t: p * c * x)
    ladder = mlem.Ladder.from_functions(apply_fns=[scale(0.9), scale(1.0), scale(1.1)],
                                        params=[jnp.float32(1.0)] * 3, image_shape=(2, 2, 1),
                                        sde=mlem.VPSDE(), costs=[1.0, 2.0, 4.0])
    ts, x0, key = ladder.sde.time_grid(4), jnp.ones((2, 2, 2, 1)), jax.random.key(0)
    mlem.ladder.em(ladder, -1, x0, ts, key)
    mlem.ladder.mlem(mlem.ladder.prefix(ladder, 2), [1.0, 0.5], x0, ts, key)
    mlem.ladder.switching(ladder, [1, 1, 3, 3], x0, ts, key)
    alive = weakref.ref(ladder)
    del ladder
    gc.collect()
    assert alive() is None


def test_clear_compiled_forgets_the_compiled_solvers():
    """A solve is compiled once per (ladder, grid, level, solver); ``clear_compiled`` drops
    every compiled solver, so the next call traces again (long sweeps call it between
    configurations: each executable holds memory mappings, of which a process has few)."""
    traces = []

    def eps(x, t):
        traces.append(1)  # runs once per trace
        return 0.1 * x

    own = mlem.Ladder.from_functions([eps, eps], image_shape=(2, 2, 1), costs=[1.0, 2.0])
    x0, ts = jnp.ones((3, 2, 2, 1)), jnp.linspace(0.0, 0.9, 5)
    for _ in range(2):
        mlem.ladder.em(own, 1, x0, ts, jax.random.key(0))
    assert len(traces) == 1
    mlem.ladder.clear_compiled()
    mlem.ladder.em(own, 1, x0, ts, jax.random.key(0))
    assert len(traces) == 2
