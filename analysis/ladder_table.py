"""Size of each ladder level: parameters and forward-pass GFLOPs per sample (from XLA).

    python -m analysis.ladder_table configs/celeba64_level*.py [--json FILE] [--batch_size B]

Prints a markdown table (level, parameters, GFLOPs per sample, ratio to the previous level)
for the level configs in the order given, and writes the rows as JSON with ``--json``.
Parameters are counted from ``jax.eval_shape`` (nothing is allocated); FLOPs come from
:func:`mlem.cost.flops_per_sample` (XLA cost analysis of the compiled forward pass at batch
``B``, divided by ``B``). Levels whose FLOPs do not strictly increase in the given order are
an error (one line, exit status 1), as is any other bad input.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags

from analysis import cli
from mlem import cli as mlem_cli
from mlem import cost
from mlem.config_files import load_config
from mlem.ladder import check_ordered
from mlem.models import registry


def level_size(config: ml_collections.ConfigDict, batch_size: int) -> dict:
    """``{'level', 'image_shape', 'parameters', 'flops_per_sample'}`` of ``config.model``.

    The forward pass is ``model.apply`` on ``(batch_size, H, W, C)`` images at ``t = 0.5``
    in the config's compute dtype, without dropout.
    """
    model = registry.get_level(config)
    shape = (config.data.image_size, config.data.image_size, config.data.num_channels)
    x = jnp.zeros((batch_size, *shape), jnp.float32)
    t = jnp.full((batch_size,), 0.5, jnp.float32)
    params = jax.eval_shape(lambda: model.init({"params": jax.random.key(0)}, x, t))["params"]
    forward = lambda p, x, t: model.apply({"params": p}, x, t, train=False)
    return {"level": config.model.level, "image_shape": list(shape),
            "parameters": sum(math.prod(p.shape) for p in jax.tree.leaves(params)),
            "flops_per_sample": cost.flops_per_sample(forward, params, x, t,
                                                      batch_size=batch_size)}


def ladder_rows(config_paths: Sequence[str | Path], batch_size: int = 1) -> list[dict]:
    """One row per config (order kept) with ``ratio`` = FLOPs / previous level's FLOPs.

    Raises ``ValueError`` if the FLOPs do not strictly increase along ``config_paths``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size: must be >= 1, got {batch_size}")
    if not config_paths:
        raise ValueError("config_paths: give at least one level config, e.g. "
                         "configs/celeba64_level*.py")
    rows = []
    for path in config_paths:
        row = {"config": str(path), **level_size(load_config(path), batch_size)}
        row["ratio"] = row["flops_per_sample"] / rows[-1]["flops_per_sample"] if rows else None
        rows.append(row)
    check_ordered([r["flops_per_sample"] for r in rows], [r["level"] for r in rows])
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    """The rows as a GitHub markdown table."""
    lines = ["| level | parameters | GFLOPs / sample | ratio to previous |",
             "|---|---:|---:|---:|"]
    for r in rows:
        ratio = "—" if r["ratio"] is None else f"×{r['ratio']:.2f}"
        lines.append(f"| {r['level']} | {r['parameters'] / 1e6:.3f}M | "
                     f"{r['flops_per_sample'] / 1e9:.4g} | {ratio} |")
    return "\n".join(lines)


def define_flags(argv: list[str]) -> None:
    """``--json`` and ``--batch_size``; the level configs are positional arguments."""
    del argv
    flags.DEFINE_string("json", None, "also write the rows to this JSON file")
    flags.DEFINE_integer("batch_size", 1, "batch size of the analysed forward pass (FLOPs "
                         "are per sample)")


def parse_flags(argv: Sequence[str]) -> list[str]:
    return cli.parse(argv, define_flags)


def run(configs: Sequence[str], batch_size: int = 1, json_path: str | None = None) -> list[dict]:
    """Print (and with ``json_path`` write) the table of the level configs ``configs``;
    returns its rows (bad configs: ``ValueError``, :func:`ladder_rows`)."""
    rows = ladder_rows(configs, batch_size)
    shape = "×".join(map(str, rows[0]["image_shape"]))
    print(f"{shape} images, forward pass at batch size {batch_size} "
          f"({jax.default_backend()}):\n")
    print(markdown_table(rows))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        payload = {"batch_size": batch_size, "backend": jax.default_backend(), "rows": rows}
        Path(json_path).write_text(json.dumps(payload, indent=1) + "\n")
    return rows


def _app_main(argv: Sequence[str]) -> None:
    """``python -m analysis.ladder_table CONFIG ... [--json F] [--batch_size B]``."""
    try:
        run(argv[1:], flags.FLAGS.batch_size, flags.FLAGS.json)
    except (ValueError, FileNotFoundError, TypeError) as err:
        mlem_cli.fail(err)


if __name__ == "__main__":
    app.run(_app_main, flags_parser=parse_flags)
