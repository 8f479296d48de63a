"""Sample-quality metrics on feature vectors: Fréchet distance and KID (docs/quality.md).

Pure numpy/scipy. Features are float arrays ``(N, d)``, one row per image, from a fixed
network (:mod:`mlem.eval.features`).

* **FD** between the Gaussian fits ``N(μ₁, Σ₁)``, ``N(μ₂, Σ₂)`` of two feature sets:
  ``‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)`` (FID when the features are Inception pool3).
  It is a plug-in estimate, biased upwards by ``O(d/N)``: compare FDs at equal ``N`` only.
* **KID**: the unbiased estimate of MMD² with the cubic polynomial kernel
  ``k(x, y) = (x·y/d + 1)³``, averaged over ``num_subsets`` random subsets of
  ``subset_size`` rows of each set (Bińkowski et al. 2018). Unbiased: two independent
  samples of one distribution give KID ≈ 0, possibly negative.

Intervals (``*_with_ci``) are 95% percentile bootstrap intervals from resampling the units of
the *generated* set with replacement, the reference held fixed (FD's interval is shifted by
the bootstrap estimate of its bias). A unit is one row, or, when
``generated`` is a sequence of per-realisation feature arrays, one realisation (the
independent units of a sweep, docs/design.md §3). KID excludes pairs of copies of the same
original row from its within-set term, so resampling adds no duplicate bias.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.linalg

__all__ = ["BLOCK_LIMIT", "GRAM_LIMIT", "Features", "Kernels", "fd", "fd_with_ci",
           "frechet_distance", "gaussian_stats", "kid", "kid_difference_with_ci", "kid_subsets",
           "kid_with_ci", "load_stats", "polynomial_kernel", "save_stats"]

Features = np.ndarray | Sequence[np.ndarray]
# A (N, d) array (units: rows) or per-realisation arrays (n_r, d) (units: realisations).


# --- Gaussian fits and the Fréchet distance ------------------------------------------------

def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(μ (d,), Σ (d, d))`` float64 of ``features (N, d)``, ``N ≥ 2`` (unbiased covariance)."""
    f = _as_features(features, "features")
    if f.shape[0] < 2:
        raise ValueError(f"features: need at least 2 rows, got {f.shape[0]}")
    return f.mean(axis=0), np.atleast_2d(np.cov(f, rowvar=False))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                     sigma2: np.ndarray, eps: float = 1e-6) -> float:
    """``‖μ₁ − μ₂‖² + tr(Σ₁ + Σ₂ − 2 (Σ₁Σ₂)^½)`` between two Gaussians in ``d`` dimensions.

    ``(Σ₁Σ₂)^½`` by ``scipy.linalg.sqrtm``; if it is not finite (singular product) both
    covariances get ``eps·I`` added. Its real part is used; an imaginary part larger than
    ``1e-3`` of the largest diagonal entry raises ``ValueError`` (not a covariance).
    """
    mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance: shapes differ: mu {mu1.shape} {mu2.shape}, "
                         f"sigma {sigma1.shape} {sigma2.shape}")
    covmean = _sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = eps * np.eye(d)
        covmean = _sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        scale = max(np.abs(np.diag(covmean)).max(), 1e-12)
        if np.abs(covmean.imag).max() > 1e-3 * scale:
            raise ValueError(f"frechet_distance: sqrtm(Σ₁Σ₂) has an imaginary part "
                             f"{np.abs(covmean.imag).max():.3g}; are both covariances PSD?")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def _sqrtm(a: np.ndarray) -> np.ndarray:
    """``sqrtm`` without its singular-matrix warning (dead ReLU features make Σ singular;
    a non-finite result is handled by the caller)."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
        return scipy.linalg.sqrtm(a)


def fd(features1: np.ndarray, features2: np.ndarray) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets ``(N₁, d)``, ``(N₂, d)``."""
    return frechet_distance(*gaussian_stats(features1), *gaussian_stats(features2))


# --- KID -----------------------------------------------------------------------------------

def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``(x·y/d + 1)³``: ``(n, d), (m, d)`` → ``(n, m)``."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2(kxx: np.ndarray, kyy: np.ndarray, kxy: np.ndarray, x_ids: np.ndarray,
          y_ids: np.ndarray | None) -> np.ndarray:
    """``(S,)`` unbiased MMD² from ``S`` stacked kernel blocks ``(S, m, m)``, ``(S, n, n)``,
    ``(S, m, n)``. ``x_ids (S, m)``: the original sample of each ``x`` row (bootstrap copies
    share one): pairs with equal ids are left out of the within-``x`` mean, as the diagonal
    is. ``y_ids (S, n)``, only when a set is compared with itself (ids in one numbering):
    ``x``–``y`` pairs with equal ids are one sample, left out of the cross mean."""
    keep = x_ids[:, :, None] != x_ids[:, None, :]
    n = kyy.shape[-1]
    within_x = (kxx * keep).sum((1, 2)) / keep.sum((1, 2))
    within_y = (kyy.sum((1, 2)) - np.trace(kyy, axis1=1, axis2=2)) / (n * (n - 1))
    if y_ids is None:
        cross = kxy.mean((1, 2))
    else:
        keep_xy = x_ids[:, :, None] != y_ids[:, None, :]
        cross = (kxy * keep_xy).sum((1, 2)) / keep_xy.sum((1, 2))
    return within_x + within_y - 2.0 * cross


GRAM_LIMIT = 30_000_000  # kernel entries precomputed at most (240 MB); beyond, per subset
BLOCK_LIMIT = 4_000_000  # kernel entries gathered at once when subsets are stacked


def kid_subsets(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100,
                subset_size: int = 1000, seed: int = 0, same_rows: bool = False,
                rows1: np.ndarray | None = None, kernels: Kernels | None = None
                ) -> np.ndarray:
    """``(num_subsets,)`` unbiased MMD² estimates, each on ``m = min(subset_size, N₁, N₂)``
    rows of each set drawn without replacement.

    ``same_rows``: the two sets are the same samples, row for row (a self-comparison); a row
    paired with itself is left out of the cross term, so the estimate stays unbiased for 0.
    Without it a set against itself gives about ``−2(k̄(x,x) − k̄(x,y))/N``.
    ``rows1``: the set 1 to use is ``features1[rows1]`` (a bootstrap resample; copies of one
    row are not paired with each other). ``kernels``: :class:`Kernels` of the same two sets,
    when the caller reuses them (a bootstrap).
    """
    f1, f2 = _as_features(features1, "features1"), _as_features(features2, "features2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"kid: feature sizes differ: {f1.shape[1]} and {f2.shape[1]}")
    rows1 = np.arange(len(f1)) if rows1 is None else np.asarray(rows1)
    m = min(subset_size, len(rows1), len(f2))
    if m < 2 or num_subsets < 1:
        raise ValueError(f"kid: need subsets of >= 2 rows and >= 1 subset, got {m}, "
                         f"{num_subsets}")
    rng = np.random.default_rng(seed)
    picks = [(rows1[rng.choice(len(rows1), m, replace=False)],
              rng.choice(len(f2), m, replace=False)) for _ in range(num_subsets)]
    return (kernels or Kernels(f1, f2)).mmd2(picks, same_rows)


class Kernels:
    """The kernel blocks of two feature sets: the three Gram matrices, computed once when
    they have at most :data:`GRAM_LIMIT` entries (large matrix products; small ones are slow
    in a threaded BLAS), else each subset's blocks when it is evaluated."""

    def __init__(self, f1: np.ndarray, f2: np.ndarray):
        self.f1, self.f2 = f1, f2
        n1, n2 = len(f1), len(f2)
        self.grams = ((polynomial_kernel(f1, f1), polynomial_kernel(f2, f2),
                       polynomial_kernel(f1, f2))
                      if n1 * n1 + n2 * n2 + n1 * n2 <= GRAM_LIMIT else None)

    def mmd2(self, picks: Sequence[tuple[np.ndarray, np.ndarray]], same_rows: bool
             ) -> np.ndarray:
        """``(len(picks),)`` MMD² of the subsets ``picks`` (``(i, j)`` rows of each set)."""
        if self.grams is None:
            f1, f2 = self.f1, self.f2
            return np.concatenate([_mmd2(polynomial_kernel(f1[i], f1[i])[None],
                                         polynomial_kernel(f2[j], f2[j])[None],
                                         polynomial_kernel(f1[i], f2[j])[None], i[None],
                                         j[None] if same_rows else None) for i, j in picks])
        g11, g22, g12 = self.grams
        m = len(picks[0][0])
        chunk, out = max(1, BLOCK_LIMIT // (3 * m * m)), []
        for c in range(0, len(picks), chunk):
            i = np.stack([p[0] for p in picks[c:c + chunk]])
            j = np.stack([p[1] for p in picks[c:c + chunk]])
            out.append(_mmd2(g11[i[:, :, None], i[:, None, :]], g22[j[:, :, None], j[:, None, :]],
                             g12[i[:, :, None], j[:, None, :]], i, j if same_rows else None))
        return np.concatenate(out)


def kid(features1: np.ndarray, features2: np.ndarray, num_subsets: int = 100,
        subset_size: int = 1000, seed: int = 0, same_rows: bool = False) -> float:
    """KID: the mean of :func:`kid_subsets`."""
    return float(kid_subsets(features1, features2, num_subsets, subset_size, seed,
                             same_rows=same_rows).mean())


# --- bootstrap intervals -------------------------------------------------------------------

def fd_with_ci(generated: Features, reference: np.ndarray | tuple[np.ndarray, np.ndarray],
               num_resamples: int = 200, seed: int = 0, level: float = 0.95
               ) -> dict[str, float]:
    """FD of ``generated`` against ``reference`` (features ``(N, d)`` or saved ``(μ, Σ)``),
    with a percentile bootstrap interval over the units of ``generated``.

    FD is biased upwards, and a resample (with repeated rows) more so: the percentile
    interval is shifted by the bootstrap's estimate of that bias, ``mean(FD*) − FD``, so it
    sits around ``value`` (reported as ``"bias"``). Returns ``{"value", "lo", "hi", "bias"}``.
    Each resample costs one ``d×d`` ``sqrtm`` (about a
    second at ``d = 2048``): use tens of resamples for Inception features.
    """
    mu_r, sigma_r = reference if isinstance(reference, tuple) else gaussian_stats(reference)
    units = _units(generated)
    value = frechet_distance(*gaussian_stats(np.concatenate(units)), mu_r, sigma_r)
    rng = np.random.default_rng(seed)
    boot = [frechet_distance(*gaussian_stats(_resample(units, rng)[0]), mu_r, sigma_r)
            for _ in range(num_resamples)]
    bias = float(np.mean(boot) - value)
    out = _with_interval(value, np.asarray(boot) - bias, level)
    return {**out, "bias": bias}


def kid_with_ci(generated: Features, reference: np.ndarray, num_subsets: int = 100,
                subset_size: int = 1000, num_resamples: int = 100, seed: int = 0,
                level: float = 0.95, same_rows: bool = False) -> dict[str, float]:
    """KID of ``generated`` against reference features ``(N, d)``, with a percentile bootstrap
    interval over the units of ``generated`` (``{"value", "lo", "hi"}``); ``same_rows``: see
    :func:`kid_subsets`. Costs ``num_resamples × num_subsets`` kernel evaluations of
    ``subset_size²`` pairs."""
    units = _units(generated)
    f1, f2 = np.concatenate(units), _as_features(reference, "reference")
    kernels = Kernels(_as_features(f1, "generated"), f2)
    value = kid_subsets(f1, f2, num_subsets, subset_size, seed, same_rows,
                        kernels=kernels).mean()
    rng = np.random.default_rng(seed + 1)
    boot = [kid_subsets(f1, f2, num_subsets, subset_size, seed + 2 + r, same_rows,
                        rows1=_resample(units, rng)[1], kernels=kernels).mean()
            for r in range(num_resamples)]
    return _with_interval(value, boot, level)


def kid_difference_with_ci(generated_a: Sequence[np.ndarray], generated_b: Sequence[np.ndarray],
                           reference: np.ndarray, num_subsets: int = 100,
                           subset_size: int = 1000, num_resamples: int = 100, seed: int = 0,
                           level: float = 0.95) -> dict[str, float]:
    """``KID(a) − KID(b)`` against one reference, with a *paired* percentile bootstrap: ``a``
    and ``b`` are per-realisation feature arrays of two samplers run on the same
    realisations (coupled noise), and each resample draws the same realisations for both
    (and the same reference subsets), so what they share cancels. ``{"value", "lo", "hi"}``;
    an interval above 0 says ``a`` is worse (larger KID) than ``b``."""
    units_a, units_b = _units(generated_a), _units(generated_b)
    if len(units_a) != len(units_b):
        raise ValueError(f"kid_difference: {len(units_a)} and {len(units_b)} realisations; "
                         f"a paired comparison needs the same ones")
    f_a, f_b = np.concatenate(units_a), np.concatenate(units_b)
    reference = _as_features(reference, "reference")
    k_a, k_b = Kernels(f_a, reference), Kernels(f_b, reference)
    kid_of = lambda f, k, s, rows=None: kid_subsets(f, reference, num_subsets, subset_size, s,
                                                    rows1=rows, kernels=k).mean()
    value = kid_of(f_a, k_a, seed) - kid_of(f_b, k_b, seed)
    rng = np.random.default_rng(seed + 1)
    boot = []
    for r in range(num_resamples):
        pick = rng.integers(0, len(units_a), len(units_a))
        boot.append(kid_of(f_a, k_a, seed + 2 + r, _rows_of(units_a, pick))
                    - kid_of(f_b, k_b, seed + 2 + r, _rows_of(units_b, pick)))
    return _with_interval(value, boot, level)


def _units(generated: Features) -> list[np.ndarray]:
    if isinstance(generated, np.ndarray):
        f = _as_features(generated, "generated")
        return [f[i:i + 1] for i in range(len(f))]
    units = [_as_features(g, "generated[r]") for g in generated]
    if len(units) < 2:
        raise ValueError(f"generated: need >= 2 realisations to resample, got {len(units)}")
    return units


def _resample(units: list[np.ndarray], rng: np.random.Generator
              ) -> tuple[np.ndarray, np.ndarray]:
    """Units drawn with replacement, concatenated; and each row's original row id."""
    pick = rng.integers(0, len(units), len(units))
    return np.concatenate([units[p] for p in pick]), _rows_of(units, pick)


def _rows_of(units: list[np.ndarray], pick: np.ndarray) -> np.ndarray:
    """The row ids (in the concatenation of ``units``) of the units ``pick``, in order."""
    starts = np.cumsum([0] + [len(u) for u in units])
    return np.concatenate([np.arange(starts[p], starts[p + 1]) for p in pick])


def _with_interval(value: float, boot: Sequence[float], level: float) -> dict[str, float]:
    boot = np.asarray(boot, np.float64)
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(boot[np.isfinite(boot)], [tail, 100.0 - tail])
    return {"value": float(value), "lo": float(lo), "hi": float(hi)}


def _as_features(features: np.ndarray, name: str) -> np.ndarray:
    f = np.asarray(features, np.float64)
    if f.ndim != 2:
        raise ValueError(f"{name}: need (N, d) features, got shape {f.shape}")
    return f


# --- reference statistics on disk ----------------------------------------------------------

def save_stats(path: str | Path, mu: np.ndarray, sigma: np.ndarray, **arrays: np.ndarray
               ) -> None:
    """Write ``mu (d,)``, ``sigma (d, d)`` and any further named ``arrays`` to the npz file
    ``path`` (that exact name), atomically: a temporary file in the same folder, renamed when
    complete, so an interrupted write never leaves a partial file at ``path``."""
    mu, sigma = np.asarray(mu, np.float64), np.asarray(sigma, np.float64)
    if sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"save_stats: mu {mu.shape} and sigma {sigma.shape} disagree")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` from an npz file written by :func:`save_stats` (or pytorch-fid's)."""
    with np.load(path) as data:
        missing = {"mu", "sigma"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: reference statistics need keys mu and sigma; "
                             f"missing {sorted(missing)} (has {data.files})")
        return data["mu"].astype(np.float64), data["sigma"].astype(np.float64)
