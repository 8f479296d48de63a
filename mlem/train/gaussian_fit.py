"""Fitting the analytic Gaussian level (its "training"): one pass over the training split.

    python -m train --config configs/mnist.py:gaussian --workdir runs/mnist/gaussian

:func:`fit_and_save` fits mean and covariance (:func:`mlem.models.gaussian.fit`, the rank from
the level name ``gaussian_rank<r>``, full for ``gaussian``) and writes what a trained level
has: ``config.json``, a checkpoint (step 1, the parameters as ``params`` and ``ema_params``)
and the held-out denoising loss in ``metrics.jsonl``, so that :mod:`mlem.ladder` loads it
like any level. A workdir already holding the fit is reused.
"""

from __future__ import annotations

from pathlib import Path

import jax
import ml_collections
import numpy as np

from mlem import data, parallel
from mlem.models import gaussian, registry
from mlem.sde import VPSDE
from mlem.train import checkpoint, objective
from mlem.train.records import MetricsWriter

__all__ = ["FIT_STEP", "fit_and_save", "heldout_loss"]

FIT_STEP = 1  # the fit is the level's one "step"


def fit_and_save(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Fit the Gaussian level of ``config`` on the training split and save it in ``workdir``;
    returns ``{"step", "heldout_loss"}``."""
    workdir = Path(workdir)
    rank = registry.gaussian_rank(config.model.level)
    if rank is None:
        raise ValueError(f"model.level: {config.model.level!r} is not a Gaussian level")
    checkpoint.check_workdir(workdir, config)
    manager = checkpoint.make_manager(workdir, keep=1)
    writer = None
    try:
        if manager.latest_step() is not None:
            print(f"resuming from step {manager.latest_step()} ({workdir}): already fitted",
                  flush=True)
            writer = MetricsWriter(workdir, config, keep_through=FIT_STEP)
            return {"step": FIT_STEP, "heldout_loss": writer.latest("heldout_loss", FIT_STEP)}
        source = data.get_source(config.data, "train")
        size = config.data.image_size**2 * config.data.num_channels
        batch = config.training.batch_size
        batches = (source[np.arange(i, min(i + batch, len(source)))]
                   for i in range(0, len(source), batch))
        params = jax.tree.map(jax.numpy.asarray, gaussian.fit(batches, rank or size))
        checkpoint.record_config(workdir, config, 0)
        loss = heldout_loss(config, params)
        writer = MetricsWriter(workdir, config, keep_through=0)
        writer.write(FIT_STEP, heldout_loss=loss)
        checkpoint.save(manager, FIT_STEP, {"step": np.int32(FIT_STEP), "params": params,
                                            "ema_params": params})
    finally:
        manager.wait_until_finished()
        manager.close()
        if writer is not None:
            writer.close()
    return {"step": FIT_STEP, "heldout_loss": loss}


def heldout_loss(config: ml_collections.ConfigDict, params) -> float:
    """The held-out denoising loss of the fitted level, on the draws every level uses."""
    mesh = parallel.make_mesh()
    fn = objective.make_heldout_loss(registry.get_level(config), VPSDE(**config.sde), mesh)
    batches = data.heldout_batches(data.get_source(config.data, "heldout"),
                                   config.eval.batch_size, config.eval.num_batches)
    return objective.mean_heldout_loss(fn, params, batches, mesh)
