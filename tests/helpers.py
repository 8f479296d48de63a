"""Small builders shared by several test files (not fixtures: plain functions)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image


def counted(calls: np.ndarray, level: int, f):
    """``f`` that adds one to ``calls[level]`` each time it is *executed* (a host callback, so
    a level skipped inside ``lax.cond`` is not counted)."""
    def drift(x, t):
        jax.debug.callback(lambda: calls.__setitem__(level, calls[level] + 1))
        return f(x, t)
    return drift


def gaussian_ladder(sde):
    """Two analytic Gaussian levels (different means) as a 4×4×1 ladder, and an ``x0``
    ``(2, 4, 4, 1)``: a real :class:`mlem.ladder.Ladder` with no training."""
    from mlem import ladder as ladders
    from mlem.models import gaussian

    x0 = jax.random.normal(jax.random.key(0), (2, 4, 4, 1))
    models, params = [], []
    for k in range(2):
        model = gaussian.GaussianEps(rank=2)
        p = model.init(jax.random.key(1), x0, jnp.full((2,), 0.5))["params"]
        models.append(model)
        params.append({**p, "mean": jax.random.normal(jax.random.key(2 + k), (4, 4, 1))})
    return ladders.Ladder(("a", "b"), tuple(models), tuple(params), (4, 4, 1), sde), x0


CELEBA_SPLIT_OF = [0] * 20 + [1] * 8 + [2] * 4  # 32 fake images: 20 train, 8 validation, 4 test


def celeba_partition_text() -> str:
    """``list_eval_partition.txt`` of the fake CelebA (:data:`CELEBA_SPLIT_OF`)."""
    return "".join(f"{i + 1:06d}.jpg {p}\n" for i, p in enumerate(CELEBA_SPLIT_OF))


def fake_celeba(root: Path) -> Path:
    """A fake CelebA of 32 smooth 178×218 JPEGs in ``root``: the extracted ``folder/``, a
    ``zip/`` with the partition file beside the zip, and ``inside.zip`` with it inside (the
    Google Drive layout and two common workarounds). Returns ``root``."""
    folder, rng = root / "folder" / "img_align_celeba", np.random.default_rng(0)
    folder.mkdir(parents=True)
    for i in range(len(CELEBA_SPLIT_OF)):
        coarse = rng.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)  # smooth, face-sized
        img = Image.fromarray(coarse).resize((178, 218), Image.BILINEAR)
        img.save(folder / f"{i + 1:06d}.jpg", quality=90)
    (root / "folder" / "list_eval_partition.txt").write_text(celeba_partition_text())
    (root / "zip").mkdir()
    (root / "zip" / "list_eval_partition.txt").write_text(celeba_partition_text())
    for target, with_partition in ((root / "zip" / "img_align_celeba.zip", False),
                                   (root / "inside.zip", True)):
        with zipfile.ZipFile(target, "w") as zf:
            for jpg in sorted(folder.iterdir()):
                zf.write(jpg, f"img_align_celeba/{jpg.name}")
            if with_partition:
                zf.writestr("list_eval_partition.txt", celeba_partition_text())
    return root


def inception_state_dict(variables) -> dict[str, np.ndarray]:
    """Inception variables as pytorch-fid's state dict (PyTorch names and layouts, with the
    ``fc`` and ``num_batches_tracked`` entries a real one has), for ``np.savez``."""
    arrays = {"fc.weight": np.zeros((1008, 2048), np.float32)}
    names = {("params", "kernel"): "weight", ("params", "scale"): "weight",
             ("params", "bias"): "bias", ("batch_stats", "mean"): "running_mean",
             ("batch_stats", "var"): "running_var"}
    for path, value in jax.tree_util.tree_leaves_with_path(variables):
        keys = [str(getattr(k, "key", k)) for k in path]
        value = np.asarray(value)
        if keys[-1] == "kernel":
            value = value.transpose(3, 2, 0, 1)  # HWIO → OIHW
        arrays[".".join(keys[1:-1] + [names[keys[0], keys[-1]]])] = value
        if keys[-1] == "var":
            arrays[".".join(keys[1:-1] + ["num_batches_tracked"])] = np.zeros((), np.int64)
    return arrays
