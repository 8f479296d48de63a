"""The library installs as a package: its dependencies agree with requirements.txt, and
``import mlem`` works outside the repository root (``make setup`` installs it editable)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> tuple[set[str], set[str]]:
    """``(runtime, development)`` requirement lines of requirements.txt (no comments)."""
    text = (ROOT / "requirements.txt").read_text()
    runtime, dev = text.split("# Development.")
    lines = lambda block: {re.sub(r"\s*#.*", "", line).strip() for line in block.splitlines()
                           if line.strip() and not line.lstrip().startswith("#")}
    return lines(runtime), lines(dev)


def test_pyproject_dependencies_agree_with_requirements():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime, dev = _requirements()
    assert set(project["dependencies"]) == runtime
    assert set(project["optional-dependencies"]["dev"]) == dev


def test_import_mlem_outside_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", "import mlem, mlem.sampling; print(mlem.__file__)"],
        cwd=tmp_path, env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, (
        f"{proc.stderr[-1500:]}\nrun `make setup` (it installs the package with pip -e .)")
    assert Path(proc.stdout.strip()).resolve().is_relative_to(ROOT / "mlem")
