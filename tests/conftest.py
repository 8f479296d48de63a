"""Shared fixtures: a tiny trained ladder for every test that samples from real checkpoints.

The suite is dominated by XLA compiling many tiny networks on the CPU, so before JAX is
imported anywhere this file (1) lowers XLA's CPU optimisation level, which halves compile
times and changes only rounding (both sides of every comparison are compiled alike), and
(2) points JAX at a compilation cache private to this session, which the subprocesses that
tests start inherit through the environment. Both reach subprocesses through ``os.environ``;
a test that sets ``XLA_FLAGS`` itself appends to :data:`XLA_FLAGS`.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
_CACHE = tempfile.mkdtemp(prefix="mlem_test_xla_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {XLA_FLAGS}".strip()
os.environ.update({"JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": _CACHE,
                   "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                   "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})

TINY_LEVELS = ("tiny_level1", "tiny_level2")

# The integration tier (`make test-integration`): whole pipelines on trained checkpoints,
# command lines in subprocesses, and trained ladders; `make test` is the unit tier without them.
INTEGRATION_FIXTURES = {"tiny_ladder"}  # every test on the trained tiny ladder
INTEGRATION_MODULES = {"test_experiments", "test_cli_quiet", "test_distill"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the integration tier: tests that use :data:`INTEGRATION_FIXTURES` (directly or
    through another fixture), those of :data:`INTEGRATION_MODULES`, and those marked
    ``@pytest.mark.integration`` by hand (a subprocess or a whole training run)."""
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if INTEGRATION_FIXTURES & set(getattr(item, "fixturenames", ())) or \
                module in INTEGRATION_MODULES:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def tiny_ladder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``--workdir`` root holding ``level1/`` and ``level2/``: the two tiny levels of
    ``configs/tiny.py`` (8×8×3 synthetic blobs), each trained for its few default steps with
    ``mlem.train.loop.train_and_evaluate``, wandb disabled and no sample grids (one compile
    fewer). Built once per test session."""
    from configs import tiny
    from mlem.train import loop

    root = tmp_path_factory.mktemp("tiny_ladder")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("WANDB_MODE", "disabled")
        for k, level in enumerate(TINY_LEVELS, start=1):
            config = tiny.get_config()
            config.model.level = level
            config.wandb.mode = "disabled"
            config.training.num_sample_images = 0
            loop.train_and_evaluate(config, root / f"level{k}")
    return root
