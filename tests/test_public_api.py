"""The public API: ``mlem.__all__`` resolves, every module says what it exports, and update
rules and Brownian paths are protocols a user can implement (issue 21 §2)."""

from __future__ import annotations

import ast
import dataclasses
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mlem
from mlem import brownian, sampling, solvers

ROOT = Path(__file__).resolve().parents[1]
TS = jnp.linspace(0.0, 0.99, 9)


def test_every_public_name_resolves_and_the_version_is_the_package_version():
    assert len(mlem.__all__) == len(set(mlem.__all__))
    for name in mlem.__all__:
        assert getattr(mlem, name) is not None, name
    for name in ("Ladder", "VPSDE", "EulerMaruyama", "DDIM", "Path", "UpdateRule", "schedules",
                 "variance", "multilevel_solve", "euler_maruyama", "time_maps"):
        assert name in mlem.__all__
    assert mlem.Ladder.from_functions and mlem.schedules.build and mlem.variance.increment_variances
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert mlem.__version__ == project["version"]


def _module_names(tree: ast.Module) -> tuple[set[str], set[str], list[str] | None]:
    """``(public defs and classes, every top-level name bound, __all__)`` of a module."""
    defs, bound, exported = set(), set(), None
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            defs.add(node.name)
            bound.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            bound.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    bound.add(target.id)
                    if target.id == "__all__":
                        exported = ast.literal_eval(node.value)
                    if target.id == "_LAZY":  # names the module's __getattr__ loads on use
                        bound.update(ast.literal_eval(node.value))
    return {d for d in defs if not d.startswith("_")}, bound, exported


@pytest.mark.parametrize("path", sorted((ROOT / "mlem").rglob("*.py")),
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_every_module_lists_its_public_api(path):
    defs, bound, exported = _module_names(ast.parse(path.read_text()))
    assert exported is not None, f"{path.name}: add __all__"
    assert len(exported) == len(set(exported)), f"{path.name}: __all__ has duplicates"
    assert set(exported) <= bound | {"__version__"}, set(exported) - bound
    assert defs <= set(exported), f"{path.name}: public but not in __all__: {defs - set(exported)}"


@dataclasses.dataclass(frozen=True)
class HalfStep:
    """A user's update rule: Euler on a drift, with the step halved (affine in ``u``)."""

    stochastic = False

    def level_time(self, tau):
        return tau

    def __call__(self, x, u, tau0, tau1, dw):
        return x + 0.5 * (tau1 - tau0) * u


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Antithetic:
    """A user's Brownian path: the mirror image of a batch path."""

    key: jax.Array
    ts: jax.Array

    def step(self, n, num_steps, like):
        return -brownian.BatchPath(self.key, self.ts).step(n, num_steps, like)


def test_a_user_update_rule_and_path_run_through_the_sampler():
    x0, key = jnp.ones((2, 3)), jax.random.key(0)
    levels = [lambda x, t: -x, lambda x, t: -1.1 * x]
    probs = jnp.array([1.0, 0.5])
    x, _ = sampling.multilevel_solve(levels, probs, HalfStep(), x0, TS, key)
    halved, _ = sampling.multilevel_solve(levels, probs, solvers.Euler(), x0, 0.5 * TS, key)
    np.testing.assert_allclose(x, halved, rtol=1e-6)

    path = Antithetic(jax.random.key(1), TS)
    rule = solvers.EulerMaruyama(lambda tau: 1.0)
    x, _ = sampling.solve(levels[1], rule, x0, TS, None, path=path)
    dw = -brownian.increments(jax.random.key(1), TS, x0.shape)
    expected, _ = sampling.solve(levels[1], rule, x0, TS, None, increments=dw)
    np.testing.assert_allclose(x, expected, rtol=1e-6)
    assert isinstance(path, mlem.Path) and not isinstance(object(), mlem.Path)
    with pytest.raises(ValueError, match="path: expected brownian.BatchPath, "
                                         "brownian.SamplePaths or another brownian.Path"):
        sampling.solve(levels[1], rule, x0, TS, None, path=object())
