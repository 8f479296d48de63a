"""mlem: the multilevel Euler–Maruyama method for diffusion models (Jacot 2026).

The public API (docs/design.md, docs/sampling.md "Your own ladder")::

    import mlem
    ladder = mlem.Ladder.from_functions(eps_fns, image_shape=(8, 8, 1), sde=mlem.VPSDE())
    v = mlem.variance.increment_variances(ladder, xs_fn, bins=8)         # V_k(τ)
    c, probs = mlem.schedules.build("variance", ts, ladder.costs, variances=v.variances,
                                    bin_edges=v.bin_edges, top_evals=4)
    x, stats = mlem.ladder.mlem(ladder, probs, x0, ts, key)                # or ladder.em(...)

The sampler core on callables: :func:`euler_maruyama`, :func:`multilevel_euler_maruyama`,
:func:`solve`, :func:`multilevel_solve`, :func:`switching_solve`, … with an update rule
(:class:`UpdateRule`: :class:`EulerMaruyama`, :class:`Euler`, :class:`DDIM`,
:class:`Ancestral`, or your own; :class:`MultistepRule`: :class:`DPMSolverPP2M`,
:class:`Heun`) and a Brownian path (:class:`Path`: :class:`BatchPath`,
:class:`SamplePaths`, or your own). Everything else lives in its module (``mlem.cost``,
``mlem.generation``, …), each with its own ``__all__``.
"""

import importlib

from mlem import cost, sampling, schedules, solvers, time_maps
from mlem.brownian import BatchPath, Path, SamplePaths
from mlem.sampling import (
    euler_maruyama,
    multilevel_euler_maruyama,
    multilevel_solve,
    poisson_multilevel_euler_maruyama,
    solve,
    switching_euler_maruyama,
    switching_solve,
)
from mlem.sde import VPSDE
from mlem.solvers import (
    DDIM,
    Ancestral,
    DPMSolverPP2M,
    Euler,
    EulerMaruyama,
    Heun,
    MultistepRule,
    UpdateRule,
)

# Loaded on first use: the ladder of trained networks needs the [train] extra (Flax, orbax,
# ml_collections); the sampler core above needs only jax and numpy (pip install mlem).
_LAZY = {"Ladder": ("mlem.ladder", "Ladder"), "FunctionLevel": ("mlem.ladder", "FunctionLevel"),
         "ladder": ("mlem.ladder", None), "variance": ("mlem.variance", None)}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'mlem' has no attribute {name!r}")
    module, attr = _LAZY[name]
    try:
        loaded = importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"mlem.{name} needs the [train] extra: pip install 'mlem[train]' "
                          f"({err})") from err
    return loaded if attr is None else getattr(loaded, attr)


def __dir__() -> list[str]:
    return sorted(__all__)


__version__ = "0.1.0"  # as pyproject.toml

__all__ = [
    "DDIM", "VPSDE", "Ancestral", "BatchPath", "DPMSolverPP2M", "Euler", "EulerMaruyama",
    "FunctionLevel", "Heun", "Ladder", "MultistepRule", "Path", "SamplePaths", "UpdateRule",
    "__version__", "cost", "euler_maruyama", "ladder", "multilevel_euler_maruyama",
    "multilevel_solve",
    "poisson_multilevel_euler_maruyama", "sampling", "schedules", "solve", "solvers",
    "switching_euler_maruyama", "switching_solve", "time_maps", "variance",
]
