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
:class:`Ancestral`, or your own) and a Brownian path (:class:`Path`: :class:`BatchPath`,
:class:`SamplePaths`, or your own). Everything else lives in its module (``mlem.cost``,
``mlem.generation``, …), each with its own ``__all__``.
"""

from mlem import cost, ladder, sampling, schedules, solvers, time_maps, variance
from mlem.brownian import BatchPath, Path, SamplePaths
from mlem.ladder import FunctionLevel, Ladder
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
from mlem.solvers import DDIM, Ancestral, Euler, EulerMaruyama, UpdateRule

__version__ = "0.1.0"  # as pyproject.toml

__all__ = [
    "DDIM", "VPSDE", "Ancestral", "BatchPath", "Euler", "EulerMaruyama", "FunctionLevel",
    "Ladder", "Path", "SamplePaths", "UpdateRule", "__version__", "cost", "euler_maruyama",
    "ladder", "multilevel_euler_maruyama", "multilevel_solve",
    "poisson_multilevel_euler_maruyama", "sampling", "schedules", "solve", "solvers",
    "switching_euler_maruyama", "switching_solve", "time_maps", "variance",
]
