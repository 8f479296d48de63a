"""Cost–error sweeps of EM and ML-EM on the synthetic HTMC testbed (docs/design.md §1, §3).

    python -m analysis.testbed --gamma 3 --out results/synthetic_gamma3 [--quick] [--seeds S]

The testbed itself (SDEs with an exact drift, the dyadic ladder) is :mod:`mlem.testbed`;
this package measures on it that ML-EM's cost exponent is ``γ`` where EM's is ``γ + 1``.

A package rather than one module because the measurement has five separable jobs, one module
each, and a command that ``python -m analysis.testbed`` runs (``__main__.py``):

* :mod:`analysis.testbed.sweep` — what is swept (:class:`~analysis.testbed.sweep.SweepConfig`)
  and the solves: one row per (configuration, seed).
* :mod:`analysis.testbed.summary` — seed averages, envelopes, fit range, exponents,
  speedups and their bootstrap intervals: the numbers of ``summary.json``.
* :mod:`analysis.testbed.theory` — the exponent the idealised finite ladder predicts.
* :mod:`analysis.testbed.plot` — ``cost_vs_error.png``.
* :mod:`analysis.testbed.pipeline` — :func:`~analysis.testbed.pipeline.run`: sweep,
  summarise and write ``summary.json``, ``points.csv``, ``runs.csv`` and the figure.

Dependencies point one way: ``__main__ → pipeline → {sweep, summary, plot}``,
``summary → {sweep, theory, mlem.eval.fits, mlem.eval.speedup}``. The power-law fits
(``cost ∝ error^{-s}``, γ of a ladder) are generic and live in :mod:`mlem.eval.fits`.
This file imports nothing, so each module can be imported on its own.
"""
