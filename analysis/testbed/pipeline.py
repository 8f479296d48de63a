"""One synthetic sweep end to end: solve, summarise, write the results directory.

``run(cfg, out)`` writes ``summary.json`` (:func:`analysis.testbed.summary.summarise` plus
bootstrap intervals, wall time, seeds and devices), ``points.csv`` (seed averages),
``runs.csv`` (one row per configuration and seed) and ``cost_vs_error.png``.
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Sequence
from pathlib import Path

import jax

from analysis.testbed import summary as summaries
from analysis.testbed.plot import plot
from analysis.testbed.sweep import SweepConfig, run_sweep


def write_points(points: Sequence[dict], path: Path) -> None:
    """Rows of dicts (the first row's keys as header) to a CSV file."""
    fields = list(points[0])
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(points)


def run(cfg: SweepConfig, out_dir: str | Path, *, progress: bool = True) -> dict:
    """Sweep, summarise, and write ``summary.json``, ``points.csv``, ``runs.csv`` and
    ``cost_vs_error.png`` into ``out_dir``; returns the summary."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows, ladder = run_sweep(cfg, cfg.hierarchy(), progress=progress)
    points = summaries.aggregate(rows)
    summary = summaries.summarise(points, cfg, ladder)
    summary.update(summaries.bootstrap_statistics(rows, summary["fit_range"]))
    summary.update(summaries.speedups_at_targets(rows, cfg))
    summary["distributional"] = summaries.distributional_at_targets(rows, cfg,
                                                                    ladder["dist_floor"])
    summary["wall_time_s"] = time.perf_counter() - start
    summary["seeds"] = cfg.seeds
    summary["devices"] = [str(d) for d in jax.devices()]
    write_points(points, out / "points.csv")
    write_points(rows, out / "runs.csv")
    plot(points, summary, out / "cost_vs_error.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
