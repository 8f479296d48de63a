"""Loading a config file (``configs/*.py``) by path: the one loader of the project.

``load_config('configs/mnist.py:3')`` calls ``get_config('3')`` of that file, as
``ml_collections.config_flags`` does for ``--config configs/mnist.py:3``; without ``:arg``,
``get_config()``. Config files import their bases as ``from configs import ...``, so paths are
relative to the repository root (where every command runs).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import ml_collections

__all__ = ["load_config"]


def load_config(spec: str | Path) -> ml_collections.ConfigDict:
    """``get_config([arg])`` of the config file ``spec`` (``path`` or ``path:arg``).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for a file without
    ``get_config``.
    """
    path, _, arg = str(spec).partition(":")
    if not Path(path).is_file():
        raise FileNotFoundError(f"config file {path} does not exist (paths are relative to the "
                                f"repository root)")
    module_spec = importlib.util.spec_from_file_location(f"_mlem_config_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {path} defines no get_config()")
    return module.get_config(arg) if arg else module.get_config()
