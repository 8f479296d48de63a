"""ML-EM on your own ladder of plain functions (docs/sampling.md, "Your own ladder").

Data ``N(0, Σ)`` on 8×8×1 images with a decaying spectrum. Level ``k`` is the exact ε̂ of
the Gaussian whose covariance keeps the top ``r_k`` principal components of ``Σ`` (the rest
isotropic, about ``4·D·r_k`` FLOPs): ranks 2, 8 and 64, the last exact. We measure the
increment variances ``V_k(τ)``, build the variance-optimal schedule, and compare ML-EM with
EM on the same Brownian path against EM on a 4× finer grid.

    python examples/own_ladder.py
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import mlem

SHAPE, RANKS, STEPS, BATCH = (8, 8, 1), (2, 8, 64), 64, 256
SDE = mlem.VPSDE()


def low_rank_eps(params, x, t):
    """ε̂ = σ Σ_t⁻¹ x with Σ = U diag(λ) Uᵀ + rest·(I − U Uᵀ), Σ_t = α² Σ + σ² I."""
    a, s2 = SDE.alpha(t)[:, None], SDE.sigma(t)[:, None] ** 2
    d, u = x.reshape(x.shape[0], -1), params["u"]
    p = d @ u
    inside = (p / (a**2 * params["lam"] + s2)) @ u.T
    outside = (d - p @ u.T) / (a**2 * params["rest"] + s2)
    return (jnp.sqrt(s2) * (inside + outside)).reshape(x.shape)


def main(seed: int = 0) -> dict:
    dim = int(np.prod(SHAPE))
    u, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
    lam = 2.0 * np.arange(1, dim + 1) ** -1.5  # the spectrum of Σ, decreasing
    params = [{"u": jnp.asarray(u[:, :r], jnp.float32), "lam": jnp.asarray(lam[:r], jnp.float32),
               "rest": jnp.float32(lam[r:].mean() if r < dim else 1.0)} for r in RANKS]
    ladder = mlem.Ladder.from_functions(apply_fns=[low_rank_eps] * len(RANKS), params=params,
                                        image_shape=SHAPE, sde=SDE)  # costs: XLA's FLOPs
    key = jax.random.key(seed)
    draw = lambda i: (u * np.sqrt(lam)) @ jax.random.normal(jax.random.fold_in(key, i), (dim,))
    xs_fn = lambda idx: jax.vmap(draw)(jnp.asarray(idx)).reshape(-1, *SHAPE)  # data x₀
    v = mlem.variance.increment_variances(ladder, xs_fn, bins=8, num_samples=1024)
    fine_ts = SDE.time_grid(4 * STEPS)
    path = mlem.BatchPath(jax.random.fold_in(key, 1), fine_ts)  # one Brownian path for all
    x0 = jax.random.normal(jax.random.fold_in(key, 2), (BATCH, *SHAPE))
    grid = lambda n: fine_ts[:: 4 * STEPS // n]
    ts = grid(STEPS)
    _, probs = mlem.schedules.build("variance", ts, ladder.costs, variances=v.variances,
                                    bin_edges=v.bin_edges, top_evals=STEPS / 8)
    reference, _ = mlem.ladder.em(ladder, -1, x0, fine_ts, None, path=path)
    mse = lambda x: float(jnp.mean((x - reference) ** 2))
    rows = {}
    for level, steps in ((3, STEPS), (3, STEPS // 4), (1, STEPS)):
        x, _ = mlem.ladder.em(ladder, level, x0, grid(steps), None, path=path)
        rows[f"em level{level} {steps} steps"] = (steps * ladder.costs[level - 1], mse(x))
    x, stats = mlem.ladder.mlem(ladder, probs, x0, ts, jax.random.fold_in(key, 3), path=path)
    rows[f"ml-em {STEPS} steps"] = (mlem.cost.realised_cost(stats, ladder.costs), mse(x))
    print("level FLOPs/sample:", np.round(ladder.costs).tolist())
    print("V_k averaged over time:", np.round(v.variances.mean(0), 3).tolist())
    print(f"ML-EM expected cost {mlem.cost.expected_cost(probs, ladder.costs):.3g} FLOPs/sample")
    print(f"{'method':<22} {'FLOPs/sample':>12} {'MSE vs reference':>17}")
    for name, (flops, err) in rows.items():
        print(f"{name:<22} {flops:>12.4g} {err:>17.3e}")
    return {"costs": list(ladder.costs), "variances": v.variances, "rows": rows}


if __name__ == "__main__":
    main()
