"""Shared pieces of the analysis scripts (DESIGN.md §3).

* **Results directory.** ``DIR/manifest.json`` records what produced ``DIR`` (level names,
  digests of the levels' saved configs, their checkpoint steps, SDE, data). A script refuses
  to write into a directory whose manifest differs (:class:`ResultsMismatchError`). Each
  stage keeps ``DIR/<stage>/stage.json`` (its settings and result) and is reused while the
  manifest and its settings are unchanged; ``DIR/summary.json`` is merged, never truncated.
* **Envelopes and speedup.** Lower envelope (Pareto front) of ``(cost, MSE)`` points,
  piecewise-linear interpolation of ``log cost`` against ``log MSE``, the speedup at equal
  MSE and the MSE ratio at equal cost.
* **Bootstrap** helpers (percentile intervals, failures dropped and counted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST = "manifest.json"
SUMMARY = "summary.json"
STAGE = "stage.json"


class ResultsMismatchError(ValueError):
    """The results directory was produced by another ladder, SDE or dataset."""


# --- results directory ------------------------------------------------------------------

def level_workdirs(config: Any, workdir: str | Path) -> list[Path]:
    """``workdir/<name>`` for each of ``config.levels`` (cheapest first)."""
    names = tuple(config.levels)
    if not names:
        raise ValueError("config.levels: list the ladder's level subdirectories, cheapest first")
    return [Path(workdir) / name for name in names]


def make_manifest(config: Any, workdir: str | Path) -> dict:
    """What a results directory is computed from: one entry per level, SDE and data."""
    levels = []
    for name, path in zip(config.levels, level_workdirs(config, workdir)):
        saved = path / "config.json"
        if not saved.exists():
            raise FileNotFoundError(f"level {name}: no trained run in {path} (no config.json); "
                                    f"train it with python -m train --config ... --workdir {path}")
        level_config = json.loads(saved.read_text())
        steps = sorted(int(p.name) for p in (path / "checkpoints").glob("*") if p.name.isdigit())
        levels.append({"name": name, "model": level_config["model"]["level"],
                       "config_sha256": digest(level_config),
                       "checkpoint_step": steps[-1] if steps else None})
    first = json.loads((level_workdirs(config, workdir)[0] / "config.json").read_text())
    data = {k: first["data"][k] for k in ("name", "image_size", "num_channels")}
    return {"levels": levels, "sde": first["sde"], "data": data}


def digest(record: Any) -> str:
    """sha256 of a JSON-serialisable record (keys sorted)."""
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def open_results(out: str | Path, manifest: Mapping, recompute: bool) -> Path:
    """Create or check ``out``; refuse a directory produced by a different manifest.

    With ``recompute`` a differing directory is taken over: its ``summary.json`` is moved
    to ``summary.previous.json`` and every stage recorded under the old manifest goes stale.
    """
    out = Path(out)
    path = out / MANIFEST
    if path.exists():
        old = json.loads(path.read_text())
        if digest(old) != digest(manifest):
            if not recompute:
                differ = ", ".join(sorted(k for k in set(old) | set(manifest)
                                          if old.get(k) != manifest.get(k)))
                raise ResultsMismatchError(
                    f"results dir {out} was produced by a different config ({differ} differ); "
                    f"use another --out or --recompute")
            if (out / SUMMARY).exists():
                (out / SUMMARY).replace(out / "summary.previous.json")
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    return out


def load_stage(out: Path, stage: str, settings: Mapping, recompute: bool = False) -> dict | None:
    """The stored result of ``stage`` if it was computed with these settings and manifest."""
    path = out / stage / STAGE
    if recompute or not path.exists():
        return None
    record = json.loads(path.read_text())
    manifest = json.loads((out / MANIFEST).read_text())
    if record.get("manifest") != digest(manifest) or record.get("settings") != jsonable(settings):
        return None
    return record["result"]


def save_stage(out: Path, stage: str, settings: Mapping, result: Mapping) -> None:
    """Record ``stage``'s result (with its settings and the manifest digest)."""
    manifest = json.loads((out / MANIFEST).read_text())
    record = {"manifest": digest(manifest), "settings": jsonable(settings),
              "result": jsonable(result), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    (out / stage).mkdir(parents=True, exist_ok=True)
    (out / stage / STAGE).write_text(json.dumps(record, indent=1) + "\n")


def merge_summary(out: Path, updates: Mapping) -> dict:
    """Update ``out/summary.json`` with ``updates`` (other keys are kept); return it."""
    path = Path(out) / SUMMARY
    summary = json.loads(path.read_text()) if path.exists() else {}
    summary.update(jsonable(updates))
    path.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    return summary


def jsonable(value: Any) -> Any:
    """Nested dicts/lists of numpy values → plain JSON values (NaN → None)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if not np.isfinite(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


# --- the ladder behind a results directory ----------------------------------------------

@dataclasses.dataclass(frozen=True, eq=False)
class Context:
    """Everything a stage needs: the config, the loaded ladder, its FLOPs and ``out``."""

    config: Any
    workdir: Path
    out: Path
    recompute: bool
    ladder: Any  # mlem.levels.Ladder
    flops: np.ndarray  # (K,) FLOPs per sample of one forward pass, at the sampling batch size
    level_configs: tuple[Any, ...]


def prepare(config: Any, workdir: str | Path, out: str | Path, recompute: bool) -> Context:
    """Check/claim ``out`` (refusing to mix), load the ladder and measure its FLOPs.

    The FLOPs are stored in ``DIR/level_flops/`` and reused (they depend only on the ladder,
    the batch size and the backend). Stages that take a context share one loaded ladder, so
    their compiled solvers are reused within a process.
    """
    import jax

    from mlem import checkpoint, generation, levels

    out = open_results(out, make_manifest(config, workdir), recompute)
    paths = level_workdirs(config, workdir)
    ladder = generation.load_ladder(config, workdir)
    settings = {"batch_size": int(config.analysis.batch_size), "backend": jax.default_backend()}
    cached = load_stage(out, "level_flops", settings)
    flops = (np.asarray(cached["level_flops"]) if cached is not None
             else levels.level_flops(ladder, settings["batch_size"]))
    levels.check_ordered(flops, tuple(config.levels))
    save_stage(out, "level_flops", settings, {"level_flops": flops})
    return Context(config, Path(workdir), out, recompute, ladder, flops,
                   tuple(checkpoint.load_config(p) for p in paths))


def cli(run: Callable[[Any, Path, Path, bool], Mapping]) -> None:
    """``python -m analysis.<name> --config C --workdir W --out DIR [--recompute]``.

    Bad input (``ValueError``, ``FileNotFoundError``) ends with a one-line error, exit 1.
    """
    from absl import app, flags, logging
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, "sample/analysis config, e.g. configs/mnist_sample.py "
        "(fields may be overridden: --config.analysis.seeds=2)")
    flags.DEFINE_string("workdir", None, "root holding one training workdir per config.levels")
    flags.DEFINE_string("out", None, "results directory, e.g. results/mnist_cpu")
    flags.DEFINE_bool("recompute", False, "recompute this stage instead of reusing what is on "
                      "disk (and take over a results directory made by another config)")
    flags.mark_flags_as_required(["config", "workdir", "out"])
    for name in ("config", "workdir", "out", "recompute"):  # listed by --help
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])

    def main(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        f = flags.FLAGS
        logging.set_verbosity(logging.WARNING)  # orbax logs every restore at INFO
        try:
            summary = run(f.config, Path(f.workdir), Path(f.out), f.recompute)
        except (ValueError, FileNotFoundError) as err:
            message = " ".join(str(err).split())
            print(f"error: {type(err).__name__}: {message}", file=sys.stderr)
            sys.exit(1)
        print(json.dumps(jsonable(dict(summary)), indent=1, sort_keys=True))

    app.run(main)


# --- envelopes, interpolation, speedup ----------------------------------------------------

def lower_envelope(costs: Sequence[float], mses: Sequence[float]) -> np.ndarray:
    """Indices of the Pareto front: no other point is both cheaper-or-equal and more accurate.

    Returned in order of increasing cost; along them the MSE strictly decreases.
    """
    costs, mses = np.asarray(costs, np.float64), np.asarray(mses, np.float64)
    if costs.shape != mses.shape or costs.ndim != 1 or costs.size == 0:
        raise ValueError(f"costs, mses: need two 1-D arrays of equal non-zero length, got "
                         f"{costs.shape} and {mses.shape}")
    order = np.lexsort((mses, costs))
    keep, best = [], np.inf
    for i in order:
        if mses[i] < best:
            keep.append(i)
            best = mses[i]
    return np.array(keep, dtype=int)


def loglog_interp(x: Sequence[float], xp: Sequence[float], fp: Sequence[float]) -> np.ndarray:
    """Piecewise-linear interpolation of ``log fp`` against ``log xp`` at ``x``; NaN outside.

    ``xp`` may be increasing or decreasing; values must be positive. Exact for power laws.
    """
    xp, fp = np.asarray(xp, np.float64), np.asarray(fp, np.float64)
    x = np.asarray(x, np.float64)
    if np.any(xp <= 0) or np.any(fp <= 0) or np.any(x <= 0):
        raise ValueError("loglog_interp: every value must be positive")
    if xp.size > 1 and xp[0] > xp[-1]:
        xp, fp = xp[::-1], fp[::-1]
    if np.any(np.diff(xp) <= 0):
        raise ValueError("xp: must be strictly monotone")
    lx, lxp = np.log(x), np.log(xp)
    out = np.exp(np.interp(lx, lxp, np.log(fp)))
    inside = (lx >= lxp[0] - 1e-12) & (lx <= lxp[-1] + 1e-12)
    return np.where(inside, out, np.nan)


def common_range(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """The overlap ``[lo, hi]`` of the ranges of ``a`` and ``b``; ``None`` if they do not meet."""
    lo, hi = max(np.min(a), np.min(b)), min(np.max(a), np.max(b))
    return (float(lo), float(hi)) if lo <= hi else None


def speedup_curve(base: tuple[Sequence[float], Sequence[float]],
                  other: tuple[Sequence[float], Sequence[float]], num: int = 200
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``cost_base(m) / cost_other(m)`` on ``num`` log-spaced MSEs of the common MSE range.

    ``base`` and ``other`` are envelopes ``(costs, mses)`` (cost increasing, MSE decreasing).
    Returns ``(mse_grid, speedup)``; both empty if the MSE ranges do not overlap.
    """
    span = common_range(base[1], other[1])
    if span is None:
        return np.empty(0), np.empty(0)
    grid = np.geomspace(span[0], span[1], num) if span[0] < span[1] else np.array([span[0]])
    return grid, loglog_interp(grid, base[1], base[0]) / loglog_interp(grid, other[1], other[0])


def mse_ratio_curve(base: tuple[Sequence[float], Sequence[float]],
                    other: tuple[Sequence[float], Sequence[float]], num: int = 200
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``mse_base(c) / mse_other(c)`` on ``num`` log-spaced costs of the common cost range."""
    span = common_range(base[0], other[0])
    if span is None:
        return np.empty(0), np.empty(0)
    grid = np.geomspace(span[0], span[1], num) if span[0] < span[1] else np.array([span[0]])
    return grid, loglog_interp(grid, base[0], base[1]) / loglog_interp(grid, other[0], other[1])


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (NaN with fewer than two points)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.size < 2 or np.ptp(np.log(x)) == 0:
        return float("nan")
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


# --- bootstrap ----------------------------------------------------------------------------

def bootstrap(statistic: Callable[[np.ndarray], float], num_items: int, num_resamples: int,
              seed: int = 0) -> np.ndarray:
    """``statistic(idx)`` over ``num_resamples`` resamples ``idx`` of ``range(num_items)``.

    Resamples on which the statistic fails (``ValueError``/``RuntimeError``, e.g. a fit that
    does not converge) give NaN, so they are counted, not hidden.
    """
    if num_items < 2 or num_resamples < 1:
        raise ValueError(f"bootstrap: need >= 2 items and >= 1 resample, got {num_items}, "
                         f"{num_resamples}")
    rng = np.random.default_rng(seed)
    values = np.full(num_resamples, np.nan)
    for b in range(num_resamples):
        try:
            values[b] = statistic(rng.integers(0, num_items, num_items))
        except (ValueError, RuntimeError):
            pass
    return values


def percentile_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite ``values`` (NaN, NaN if none)."""
    values = np.asarray(values, np.float64)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    tail = 50.0 * (1.0 - level)
    lo, hi = np.percentile(values, [tail, 100.0 - tail])
    return float(lo), float(hi)
