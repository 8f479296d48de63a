"""Judging samples (docs/quality.md): KID, FD and their intervals (``metrics``), the feature
networks (``features``: the MNIST classifier and FID's Inception-v3, ``inception``).

Needs the ``[eval]`` extra; the sampler core in :mod:`mlem` does not.
"""

__all__: list[str] = []  # a namespace: import its modules
