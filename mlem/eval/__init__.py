"""Judging samplers: the quality of their samples (docs/quality.md) — KID, FD and their
intervals (``metrics``), the feature networks (``features``: the MNIST classifier and FID's
Inception-v3, ``inception``) — and their cost at equal error (docs/design.md §3): the rules
of every headline speedup (``speedup``: targets, paths chosen on selection realisations,
failures counted, bootstrap over realisations) and power-law fits (``fits``).

Needs the ``[eval]`` extra (``speedup`` and ``fits``: numpy and scipy only); the sampler core
in :mod:`mlem` does not.
"""

__all__: list[str] = []  # a namespace: import its modules
