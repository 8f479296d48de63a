"""The library installs as a package: its dependencies agree with requirements.txt, and
``import mlem`` works outside the repository root (``make setup`` installs it editable)."""

from __future__ import annotations

import ast
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
    extras = project["optional-dependencies"]
    assert set(project["dependencies"]) | set(extras["train"]) | set(extras["eval"]) == runtime
    assert set(extras["dev"]) == dev


# Everything outside the core install (pip install mlem: jax, numpy and scipy).
NOT_CORE = ("flax", "optax", "orbax", "tensorflow", "tensorflow_datasets", "ml_collections",
            "wandb", "absl", "PIL", "tqdm", "mlxtend", "matplotlib")
BLOCKER = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_CORE!r}:
            raise ImportError(f"blocked: {{name}} is not in the core install")
sys.meta_path.insert(0, Block())
"""


def test_the_core_imports_and_samples_without_the_extras(tmp_path):
    """What ``pip install mlem`` (no extras) gives: ``import mlem``, an ML-EM solve, a
    schedule; the ladder of trained networks says which extra it needs."""
    script = BLOCKER + """
import jax, jax.numpy as jnp, numpy as np
import mlem, mlem.sampling
ts = jnp.linspace(0.0, 0.99, 9)
drifts = [lambda x, t: -x, lambda x, t: -1.1 * x]
c, probs = mlem.schedules.build("constant", np.asarray(ts), np.array([1.0, 4.0]),
                                probs=[1.0, 0.5])
x, stats = mlem.multilevel_euler_maruyama(drifts, probs, lambda t: 1.0, jnp.ones((4, 2)), ts,
                                          jax.random.key(0))
assert x.shape == (4, 2) and stats["evals"].shape == (2,)
try:
    mlem.Ladder
except ImportError as err:
    assert "mlem[train]" in str(err), err
    print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path,
                          env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_import_mlem_outside_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "-c", "import mlem, mlem.sampling; print(mlem.__file__)"],
        cwd=tmp_path, env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, (
        f"{proc.stderr[-1500:]}\nrun `make setup` (it installs the package with pip -e .)")
    assert Path(proc.stdout.strip()).resolve().is_relative_to(ROOT / "mlem")


def _import_graph() -> dict[str, set[str]]:
    """``{module: project modules it imports}`` for mlem, analysis and experiments (imports
    inside functions included)."""
    paths = [p for top in ("mlem", "analysis", "experiments") for p in (ROOT / top).rglob("*.py")]
    names = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
             for p in paths}
    graph = {}
    for name, path in names.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    deps.add(full if full in names else node.module)
            elif isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
        graph[name] = {d for d in deps if d in names and d != name}
    return graph


def test_no_import_cycles_and_dependencies_point_one_way():
    graph = _import_graph()
    state: dict[str, int] = {}

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        for dep in sorted(graph[module]):
            assert state.get(dep) != 1, f"import cycle: {' -> '.join(stack + [module, dep])}"
            if dep not in state:
                visit(dep, stack + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    outward = {(m, d) for m, deps in graph.items() if m.startswith("mlem")
               for d in deps if not d.startswith("mlem")}
    assert not outward, f"the library imports analysis/experiments: {outward}"
    # the sampler core: the scan, its Brownian paths and its update rules (which know the SDE)
    assert graph["mlem.sampling"] <= {"mlem.brownian", "mlem.solvers"}
    assert graph["mlem.solvers"] <= {"mlem.sde"} and not graph["mlem.sde"]
    assert not graph["mlem.brownian"]


def test_design_page_names_files_that_exist():
    """docs/design.md's "which file holds it" table stays true."""
    text = (ROOT / "docs" / "design.md").read_text()
    table = text.split("## Where each thing lives")[1].split("## 1.")[0]
    paths = set(re.findall(r"`((?:mlem|analysis|experiments|configs)/[\w/.*]*)`", table))
    assert len(paths) > 25
    for path in paths:
        assert list(ROOT.glob(path)), f"docs/design.md names {path}, which does not exist"
