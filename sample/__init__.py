"""``python -m sample``: EM / ML-EM samples from a trained ladder (see sample/__main__.py)."""
