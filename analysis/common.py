"""Shared pieces of the analysis scripts (docs/design.md §3).

* **Results directory.** ``DIR/manifest.json`` records what produced ``DIR`` (level names,
  digests of the levels' saved configs, the checkpoint step restored for each level and the
  sha256 of its parameters, SDE, data). A script refuses to write into a directory whose
  manifest differs (:class:`ResultsMismatchError`). Each stage keeps
  ``DIR/<stage>/stage.json`` (its settings and result) and is reused while the manifest and
  its settings are unchanged; ``DIR/summary.json`` is merged, never truncated.
* **Context**: the loaded ladder, its FLOPs and the results directory, shared by the stages.

The mathematics of the comparison (envelopes, interpolation, bootstrap) is in
:mod:`mlem.eval.speedup`; the command line of the stages in :mod:`analysis.cli`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mlem.files import read_json

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


def make_manifest(config: Any, workdir: str | Path, ladder: Any) -> dict:
    """What a results directory is computed from: one entry per level (its saved config, the
    step restored and the digest of the parameters loaded), SDE and data."""
    levels = []
    for k, (name, path) in enumerate(zip(config.levels, level_workdirs(config, workdir))):
        level_config = read_json(path / "config.json", "config record")
        levels.append({"name": name, "model": level_config["model"]["level"],
                       "config_sha256": digest(level_config),
                       "checkpoint_step": ladder.steps[k], "param_sha256": ladder.digests[k]})
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
        old = read_json(path, "results manifest")
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
    record = read_json(path, "stage record")
    manifest = read_json(out / MANIFEST, "results manifest")
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
    """Nested dicts/lists of numpy values → plain JSON values (NaN → None; ±inf kept, written
    as ``Infinity`` by :mod:`json`: a bound that a failing method puts at infinity)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if np.isnan(value) else float(value)
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
    ladder: Any  # mlem.ladder.Ladder
    flops: np.ndarray  # (K,) FLOPs per sample of one forward pass, at the timing batch size
    level_configs: tuple[Any, ...]
    seconds: np.ndarray  # (K,) seconds per call of each level at that batch size, this device


def prepare(config: Any, workdir: str | Path, out: str | Path, recompute: bool) -> Context:
    """Check/claim ``out`` (refusing to mix), load the ladder and measure its FLOPs.

    The FLOPs and seconds per call are measured together (one compilation per level) at the
    deployed batch ``config.analysis.timing_batch_size``, stored in ``DIR/level_costs/`` and
    reused while the ladder, the batch size and the device are the same. Stages that take a
    context share one loaded ladder, so their compiled solvers are reused within a process.
    """
    import jax

    from mlem import ladder as ladders
    from mlem.train import checkpoint

    ladder = ladders.load_ladder(config, workdir)
    out = open_results(out, make_manifest(config, workdir, ladder), recompute)
    paths = level_workdirs(config, workdir)
    settings = {"batch_size": int(config.analysis.timing_batch_size),
                "backend": jax.default_backend(),
                "device": jax.devices()[0].device_kind}
    cached = load_stage(out, "level_costs", settings)
    if cached is None:
        flops, seconds = ladders.level_costs(ladder, settings["batch_size"])
    else:
        flops, seconds = np.asarray(cached["level_flops"]), np.asarray(cached["level_seconds"])
    ladders.check_ordered(flops, tuple(config.levels))
    save_stage(out, "level_costs", settings, {"level_flops": flops, "level_seconds": seconds})
    return Context(config, Path(workdir), out, recompute, ladder, flops,
                   tuple(checkpoint.load_record(p) for p in paths), seconds)
