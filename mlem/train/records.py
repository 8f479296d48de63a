"""What a training run records: ``metrics.jsonl`` (and wandb), the log window saved with each
checkpoint, and the host-side progress that checks every step's loss for NaN/inf.

Everything here is written so that a resumed run's records equal an uninterrupted run's:
records past the resumed checkpoint are recomputed (and kept once), and the first line logged
after a resume averages the same steps (:func:`save_window`, :func:`load_window`).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path

import jax
import ml_collections
import numpy as np

__all__ = ["METRICS_FILE", "WINDOW_FILE", "MetricsWriter", "NonFiniteLossError", "Progress",
           "assert_finite", "load_window", "save_window", "wandb_mode"]

METRICS_FILE = "metrics.jsonl"
WINDOW_FILE = "log_window.json"  # per-step metrics not yet logged, at each checkpoint


class NonFiniteLossError(FloatingPointError):
    """The training loss or gradient became NaN/inf."""


def assert_finite(metrics: list[dict], first_step: int, kept: str) -> None:
    """Raise :class:`NonFiniteLossError` naming the first step with a NaN/inf loss or grad;
    ``kept`` says which checkpoint survives."""
    for i, m in enumerate(metrics):
        if not (np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"])):
            raise NonFiniteLossError(
                f"non-finite training loss {m['loss']} (gradient norm {m['grad_norm']}) at step "
                f"{first_step + i + 1}; {kept}; lower config.optim.learning_rate or check the "
                f"data")


# --- metrics.jsonl and wandb --------------------------------------------------------------

class MetricsWriter:
    """Appends ``{"step": ..., <name>: value}`` lines to ``metrics.jsonl`` and logs to wandb.

    Only process 0 writes. On resume, records up to ``keep_through`` (the newest step that a
    checkpoint of the run reached, readable or moved aside) are kept and later ones dropped
    (the resumed run recomputes them identically). A record whose step and names are already
    in the file is not written again, so every (step, name) appears once and no history a
    checkpoint reached is ever cut.
    """

    def __init__(self, workdir: Path, config: ml_collections.ConfigDict, keep_through: int):
        self.path, self.primary = workdir / METRICS_FILE, jax.process_index() == 0
        self.records = self._truncate(keep_through)
        self.seen = {(r["step"], frozenset(r)) for r in self.records}
        self.wandb = _init_wandb(config, workdir) if self.primary else None

    def _truncate(self, keep_through: int) -> list[dict]:
        if not self.path.exists():
            return []
        records = [json.loads(line) for line in self.path.read_text().splitlines() if line]
        kept = [r for r in records if r["step"] <= keep_through]
        if self.primary and len(kept) < len(records):
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def write(self, step: int, **values: float) -> None:
        record = {"step": step, **{k: float(v) for k, v in values.items()}}
        if (step, frozenset(record)) in self.seen:  # recomputed after a fallback: kept as is
            return
        self.seen.add((step, frozenset(record)))
        self.records.append(record)
        if self.primary:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def latest(self, name: str, step: int) -> float | None:
        values = [r[name] for r in self.records if r["step"] == step and name in r]
        return values[-1] if values else None

    def image(self, step: int, path: Path) -> None:
        if self.wandb is not None:
            import wandb
            self.wandb.log({"samples": wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def wandb_mode(config: ml_collections.ConfigDict) -> str:
    """``$WANDB_MODE`` if set, else ``config.wandb.mode`` (``'offline'`` by default)."""
    mode = os.environ.get("WANDB_MODE") or config.get("wandb", {}).get("mode", "offline")
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"config.wandb.mode: 'online', 'offline' or 'disabled', got {mode!r}")
    return mode


def _init_wandb(config: ml_collections.ConfigDict, workdir: Path):
    mode = wandb_mode(config)
    if mode == "disabled":
        return None
    try:
        import wandb
        # create_new: levels trained at once (experiments.pipeline) each keep their own run
        return wandb.init(mode=mode, dir=str(workdir), name=workdir.name,
                          project=config.wandb.get("project") or "mlem",
                          entity=config.wandb.get("entity") or None, config=config.to_dict(),
                          reinit="create_new")
    except Exception as err:  # wandb is optional: any failure must not stop training
        warnings.warn(f"wandb.init(mode={mode!r}) failed, continuing without wandb: {err}",
                      stacklevel=2)
        return None


# --- the log window -----------------------------------------------------------------------

class Progress:
    """Device metrics of recent steps; synced, checked and averaged on the host at events.

    ``window`` holds ``{"loss", "grad_norm"}`` (a distilled level adds ``denoise_loss`` and
    ``distill_loss``) of every step since the last log line; it is
    saved with each checkpoint (:func:`save_window`) so that the first line logged after a
    resume averages the same steps as an uninterrupted run's.
    """

    def __init__(self, window: list[dict] | None = None):
        self.pending: list[dict] = []
        self.window: list[dict] = list(window or [])
        self.timed_steps, self.train_seconds = 0, 0.0
        self.resumed_at = time.perf_counter()

    def sync(self, step: int, kept: str) -> None:
        values = [{k: float(v) for k, v in m.items()} for m in jax.device_get(self.pending)]
        assert_finite(values, step - len(values), kept)
        self.window += values
        self.timed_steps += len(values)
        self.pending = []
        self.train_seconds += time.perf_counter() - self.resumed_at

    def summary(self) -> dict[str, float]:
        out = {"train_loss": float(np.mean([m["loss"] for m in self.window])),
               "grad_norm": float(np.mean([m["grad_norm"] for m in self.window])),
               "steps_per_sec": self.timed_steps / max(self.train_seconds, 1e-9)}
        for name in self.window[0].keys() - {"loss", "grad_norm"}:  # a distilled level's parts
            out[f"train_{name}"] = float(np.mean([m[name] for m in self.window]))
        self.window, self.timed_steps, self.train_seconds = [], 0, 0.0
        return out


def save_window(workdir: Path, step: int, window: list[dict], keep: int) -> None:
    """Record the unlogged per-step metrics at checkpoint ``step`` (the newest ``keep``)."""
    if jax.process_index() != 0:
        return
    path = workdir / WINDOW_FILE
    windows = json.loads(path.read_text()) if path.exists() else {}
    windows[str(step)] = window
    newest = sorted(windows, key=int)[-keep:]
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({k: windows[k] for k in newest}))
    tmp.replace(path)


def load_window(workdir: Path, step: int) -> list[dict]:
    """The unlogged per-step metrics saved with checkpoint ``step`` (empty if none)."""
    path = workdir / WINDOW_FILE
    return json.loads(path.read_text()).get(str(step), []) if path.exists() else []
