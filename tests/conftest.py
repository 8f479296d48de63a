"""Shared fixtures: a tiny trained ladder for every test that samples from real checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY_LEVELS = ("tiny_level1", "tiny_level2")


@pytest.fixture(scope="session")
def tiny_ladder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``--workdir`` root holding ``level1/`` and ``level2/``: the two tiny levels of
    ``configs/tiny.py`` (8×8×3 synthetic blobs), each trained for its few default steps with
    ``mlem.training.train_and_evaluate``, wandb disabled and no sample grids (one compile
    fewer). Built once per test session."""
    from configs import tiny
    from mlem import training

    root = tmp_path_factory.mktemp("tiny_ladder")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        for k, level in enumerate(TINY_LEVELS, start=1):
            config = tiny.get_config()
            config.model.level = level
            config.wandb.mode = "disabled"
            config.training.num_sample_images = 0
            training.train_and_evaluate(config, root / f"level{k}")
    return root
