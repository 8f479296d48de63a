"""CelebA 64×64 from tfds ``celeb_a`` (array_record) or a local zip/folder (docs/design.md §6).

Both routes yield aligned 178×218 RGB images, preprocessed as in score_sde: centre crop
140×140, antialiased linear resize to ``image_size`` (:func:`mlem.data.pipeline.resize`,
equal to ``jax.image.resize(method='linear', antialias=True)``), scale to ``[-1, 1]``;
random flips belong to the training pipeline. Splits follow
``list_eval_partition.txt``: ``train`` = 0, ``heldout`` = 1 (validation), ``test`` = 2.
Reading needs no TensorFlow; preparing the tfds copy does.
"""

from __future__ import annotations

import io
import os
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from mlem.data.pipeline import resize, to_signed

__all__ = ["CROP", "PARTITION_FILES", "SPLIT_IDS", "TFDS_SPLITS", "CelebASource",
           "DatasetNotFoundError", "FolderReader", "TfdsReader", "ZipReader", "celeba_source",
           "decode_jpeg", "local_reader", "not_found", "parse_partition", "preprocess",
           "tfds_reader"]

CROP = 140
PARTITION_FILES = ("list_eval_partition.txt", "list_eval_partition.csv")
SPLIT_IDS = {"train": 0, "heldout": 1, "test": 2}
TFDS_SPLITS = {"train": "train", "heldout": "validation", "test": "test"}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not where the config says; the message says how to provide it."""


def not_found(reason: str) -> DatasetNotFoundError:
    """The one CelebA-missing error, naming both ways to provide the data."""
    return DatasetNotFoundError(
        f"CelebA not found ({reason}). Provide it one of two ways: (a) tfds: "
        "`pip install tensorflow-cpu` then `tfds build celeb_a --file_format=array_record "
        "--data_dir=DIR` and pass --config.data.data_dir=DIR; or (b) local files: "
        "--config.data.local_path=/path/to/img_align_celeba.zip (or the extracted folder) "
        "with list_eval_partition.txt beside it or inside. See README, section Data.")


def preprocess(image: np.ndarray, image_size: int) -> np.ndarray:
    """uint8 ``(H, W, 3)`` aligned face → float32 ``(image_size, image_size, 3)`` in [-1, 1].

    Centre crop 140 (top ``(H-140)//2``, left ``(W-140)//2``), then antialiased resize.
    """
    h, w = image.shape[:2]
    if h < CROP or w < CROP or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: need RGB of at least {CROP}×{CROP}, got shape {image.shape}")
    top, left = (h - CROP) // 2, (w - CROP) // 2
    crop = image[top:top + CROP, left:left + CROP]
    return np.clip(resize(to_signed(crop), image_size), -1.0, 1.0)  # clip: float rounding


def decode_jpeg(data: bytes) -> np.ndarray:
    """JPEG bytes → uint8 ``(H, W, 3)``."""
    with Image.open(io.BytesIO(data)) as img:
        return np.asarray(img.convert("RGB"))


class CelebASource:
    """Random-access CelebA split; ``source[idx]`` → float32 ``(n, S, S, 3)`` in [-1, 1].

    ``read(i)`` of the reader gives image ``i`` as uint8 ``(218, 178, 3)``; decoding and
    preprocessing run on a small thread pool (PIL and numpy release the GIL). No cache.
    """

    def __init__(self, reader, image_size: int, num_threads: int | None = None):
        self.reader, self.image_size = reader, image_size
        self._pool = ThreadPoolExecutor(num_threads or min(8, os.cpu_count() or 1),
                                        thread_name_prefix="celeba-decode")

    def __len__(self) -> int:
        return len(self.reader)

    def _load(self, i: int) -> np.ndarray:
        return preprocess(self.reader.read(int(i)), self.image_size)

    def __getitem__(self, idx) -> np.ndarray:
        if np.ndim(idx) == 0:
            return self._load(idx)
        return np.stack(list(self._pool.map(self._load, np.asarray(idx).ravel())))


class TfdsReader:
    """Images of a ``tfds.data_source`` split (records ``{'image': uint8 (218, 178, 3), …}``).

    Safe from several threads: array_record shares one thread-safe reader per shard, and
    tfds decodes the JPEG with PIL (or OpenCV) inside ``__getitem__``.
    """

    def __init__(self, data_source):
        self.data_source = data_source

    def __len__(self) -> int:
        return len(self.data_source)

    def read(self, i: int) -> np.ndarray:
        return np.asarray(self.data_source[i]["image"])


class ZipReader:
    """JPEG members of ``img_align_celeba.zip``, one ``ZipFile`` handle per thread."""

    def __init__(self, path: Path, members: list[str]):
        self.path, self.members = path, members
        self._local = threading.local()

    def __len__(self) -> int:
        return len(self.members)

    def read(self, i: int) -> np.ndarray:
        handle = getattr(self._local, "zip", None)
        if handle is None:
            handle = self._local.zip = zipfile.ZipFile(self.path)
        return decode_jpeg(handle.read(self.members[i]))


class FolderReader:
    """JPEG files of an extracted ``img_align_celeba/`` folder."""

    def __init__(self, files: list[Path]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def read(self, i: int) -> np.ndarray:
        return decode_jpeg(self.files[i].read_bytes())


def parse_partition(text: str) -> list[tuple[str, int]]:
    """``"000001.jpg 0"`` lines (or Kaggle CSV ``image_id,partition``) → [(name, split id)]."""
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.replace(",", " ").split()
        if not parts or (number == 1 and not parts[-1].isdigit()):
            continue  # blank line or CSV header
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise ValueError(f"list_eval_partition: line {number} is {line!r}; expected "
                             "'<image>.jpg <0|1|2>'")
        rows.append((parts[0], int(parts[1])))
    return rows


def _partition_text(path: Path) -> str:
    """Find list_eval_partition beside/above ``path`` or inside it when it is a zip."""
    search = [path.parent] if path.is_file() else [path, path.parent, path.parent.parent]
    for folder in search:
        for name in PARTITION_FILES:
            if (folder / name).is_file():
                return (folder / name).read_text()
    if path.is_file() and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            for member in zf.namelist():
                if os.path.basename(member) in PARTITION_FILES:
                    return zf.read(member).decode()
    raise not_found(f"no list_eval_partition.txt beside or inside {path}")


def _zip_reader(path: Path, names: list[str]) -> ZipReader:
    with zipfile.ZipFile(path) as zf:
        by_name = {os.path.basename(m): m for m in zf.namelist() if m.lower().endswith(".jpg")}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise not_found(f"{len(missing)} images listed in list_eval_partition.txt are missing "
                        f"from {path}, e.g. {missing[0]}; the zip may be incomplete")
    return ZipReader(path, [by_name[n] for n in names])


def _folder_reader(path: Path, names: list[str], first: str) -> ZipReader | FolderReader:
    for folder in (path, path / "img_align_celeba", path / "img_align_celeba" / "img_align_celeba"):
        if (folder / first).is_file():
            present = set(os.listdir(folder))
            missing = [n for n in names if n not in present]
            if missing:
                raise not_found(f"{len(missing)} listed images are missing from {folder}, "
                                f"e.g. {missing[0]}; the extraction may be incomplete")
            return FolderReader([folder / n for n in names])
    if (path / "img_align_celeba.zip").is_file():
        return _zip_reader(path / "img_align_celeba.zip", names)
    raise not_found(f"no {first} (first listed image) in {path} or its img_align_celeba/")


def local_reader(local_path: str, split: str) -> ZipReader | FolderReader:
    """Reader over a local ``img_align_celeba.zip`` or extracted folder, partition order."""
    path = Path(local_path).expanduser()
    if not path.exists():
        raise not_found(f"config.data.local_path={local_path} does not exist")
    rows = parse_partition(_partition_text(path))
    if not rows:
        raise not_found(f"list_eval_partition for {path} lists no images")
    names = [name for name, part in rows if part == SPLIT_IDS[split]]
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise not_found(f"config.data.local_path={local_path} is neither a zip nor a folder")
        return _zip_reader(path, names)
    return _folder_reader(path, names, rows[0][0])


def tfds_reader(split: str, data_dir: str | None) -> TfdsReader:
    """Reader over tfds ``celeb_a`` (array_record) in ``data_dir``; never downloads."""
    import tensorflow_datasets as tfds

    try:
        ds = tfds.data_source("celeb_a", split=TFDS_SPLITS[split], data_dir=data_dir,
                              download=False)
    except Exception as err:  # tfds raises NotImplementedError/ValueError/... when absent
        where = data_dir or "the tfds default ~/tensorflow_datasets"
        if not tfds.builder("celeb_a", data_dir=data_dir).is_prepared():
            raise not_found(f"tfds celeb_a is not prepared in {where}") from err
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise not_found(f"tfds celeb_a in {where} cannot be read randomly ({detail}); "
                        "rebuild it with --file_format=array_record") from err
    return TfdsReader(ds)


def celeba_source(data_config, split: str) -> CelebASource:
    """``config.data`` (source, data_dir, local_path, image_size) → :class:`CelebASource`."""
    if split not in SPLIT_IDS:
        raise ValueError(f"split: CelebA has {sorted(SPLIT_IDS)}, got {split!r}")
    route = data_config.get("source", "auto")
    local_path = data_config.get("local_path", None)
    if route == "auto":
        route = "local" if local_path else "tfds"
    if route == "local":
        if not local_path:
            raise not_found("config.data.source='local' but config.data.local_path is unset")
        reader = local_reader(local_path, split)
    elif route == "tfds":
        reader = tfds_reader(split, data_config.get("data_dir", None))
    else:
        raise ValueError(f"config.data.source: must be 'auto', 'tfds' or 'local', got {route!r}")
    return CelebASource(reader, data_config.image_size, data_config.get("num_threads", None))
