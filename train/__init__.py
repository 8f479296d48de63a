"""``python -m train``: train one ladder level (see ``train/__main__.py``)."""
