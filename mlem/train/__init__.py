"""Training a ladder level (docs/training.md): the objective and one step (``objective``),
the loop (``loop``), what a run records (``records``), checkpoints (``checkpoint``),
distillation (``distill``) and the analytic Gaussian level's fit (``gaussian_fit``).

Needs the ``[train]`` extra (Flax, optax, orbax, ml_collections); the sampler core in
:mod:`mlem` does not.
"""

__all__: list[str] = []  # a namespace: import its modules
