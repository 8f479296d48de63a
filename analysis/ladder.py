"""Size of each ladder level: parameters and forward-pass GFLOPs per sample (from XLA).

    python -m analysis.ladder configs/celeba64_level*.py [--json FILE] [--batch_size B]

Prints a markdown table (level, parameters, GFLOPs per sample, ratio to the previous level)
for the level configs in the order given, and writes the rows as JSON with ``--json``.
Parameters are counted from ``jax.eval_shape`` (nothing is allocated); FLOPs come from
:func:`mlem.cost.flops_per_sample` (XLA cost analysis of the compiled forward pass at batch
``B``, divided by ``B``). Levels whose FLOPs do not strictly increase in the given order are
an error (one line, exit status 1).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections

from mlem import cost
from mlem.config_files import load_config
from mlem.ladder import check_ordered
from mlem.models import registry


def level_size(config: ml_collections.ConfigDict, batch_size: int) -> dict:
    """``{'level', 'image_shape', 'parameters', 'flops_per_sample'}`` of ``config.model``.

    The forward pass is ``model.apply`` on ``(batch_size, H, W, C)`` images at ``t = 0.5``
    in the config's compute dtype, without dropout.
    """
    model = registry.get_model(config.model.level, dtype=config.model.dtype)
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


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("configs", nargs="+", help="level config files, cheapest first")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--batch_size", type=int, default=1,
                        help="batch size of the analysed forward pass (FLOPs are per sample)")
    args = parser.parse_args(argv)
    try:
        rows = ladder_rows(args.configs, args.batch_size)
    except (ValueError, FileNotFoundError, TypeError) as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(1)
    shape = "×".join(map(str, rows[0]["image_shape"]))
    print(f"{shape} images, forward pass at batch size {args.batch_size} "
          f"({jax.default_backend()}):\n")
    print(markdown_table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        payload = {"batch_size": args.batch_size, "backend": jax.default_backend(), "rows": rows}
        Path(args.json).write_text(json.dumps(payload, indent=1) + "\n")
    return rows


if __name__ == "__main__":
    main()
