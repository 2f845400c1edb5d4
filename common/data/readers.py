"""Readers for the real datasets, in their official formats and the compact npz copies.

Every image reader returns float32 pixels in [0, 1] with 0 = background and 1 = ink,
whatever the source's convention (MNIST stores ink high; LEAF's FEMNIST and Omniglot
store white background high), so a model sees the same kind of input from every source.
Images carry a channel axis: ``(n, 1, H, W)``.

Nothing here knows where the data lives: every reader takes a path, and a missing or
unreadable one raises :class:`DataError` naming the path and where to get the data.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.data.types import DataError

WHERE_TO_GET = {
    "mnist": (
        "Get the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz; gzipped or not) from the "
        "MNIST page (yann.lecun.com/exdb/mnist or a mirror) into one folder."
    ),
    "fashion-mnist": (
        "Get the four IDX files (train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz) from "
        "github.com/zalandoresearch/fashion-mnist (data/fashion) or your Linux "
        "distribution's dataset-fashion-mnist package into one folder."
    ),
    "femnist": (
        "Get it by running LEAF's preprocess.sh (github.com/TalwalkarLab/leaf, "
        "data/femnist, e.g. './preprocess.sh -s niid --sf 0.05 -k 0 -t sample') and point "
        "the path at the folder holding its train/ and test/ folders, or at a compact npz "
        "with keys x, y, writer, split."
    ),
    "omniglot": (
        "Get images_background.zip / images_evaluation.zip from "
        "github.com/brendenlake/omniglot (python/) and point the path at a zip, its "
        "unzipped folder, or a compact npz with key 'images'."
    ),
}


def unreadable(what: str, path: Path | str, problem: str, source: str) -> DataError:
    """The one error every reader raises: what, where, why, and where to get it."""
    return DataError(f"{what} {problem} at '{path}'. {WHERE_TO_GET[source]}")


@dataclass(frozen=True)
class LabeledImages:
    """A pooled labelled image set, with the source's own writers and split if it has them.

    ``x`` float32 ``(n, 1, H, W)`` (0 = background, 1 = ink), ``y`` int64 ``(n,)``,
    ``writer`` str ``(n,)`` or None, ``is_test`` bool ``(n,)`` or None.
    """

    x: np.ndarray
    y: np.ndarray
    writer: np.ndarray | None = None
    is_test: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


def read_digits() -> LabeledImages:
    """scikit-learn's 1,797 8x8 digits (UCI optdigits test set), pixel counts 0..16 -> [0, 1].

    Already ink-high, like MNIST. No path: the data ships inside scikit-learn.
    """
    from sklearn.datasets import load_digits  # lazy: sklearn's import is slow

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None, :, :]
    return LabeledImages(x=x, y=bunch.target.astype(np.int64))


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)

# IDX magic: two zero bytes, a type code, the number of dimensions; then big-endian uint32
# sizes, then the data, big-endian (LeCun et al., the MNIST page's "FILE FORMATS").
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_GZIP_MAGIC = b"\x1f\x8b"
IDX_FILES = {
    "train-images": "train-images-idx3-ubyte",
    "train-labels": "train-labels-idx1-ubyte",
    "test-images": "t10k-images-idx3-ubyte",
    "test-labels": "t10k-labels-idx1-ubyte",
}


def _parse_idx_header(head: bytes, path: Path) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) from an IDX header; DataError if it is not IDX."""
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in _IDX_TYPES:
        raise DataError(f"'{path}' is not an IDX file (magic bytes {head[:4].hex()})")
    ndim = head[3]
    offset = 4 + 4 * ndim
    if len(head) < offset:
        raise DataError(f"IDX file '{path}' is truncated inside its header")
    shape = struct.unpack(f">{ndim}I", head[4:offset])
    return np.dtype(_IDX_TYPES[head[2]]), shape, offset


def _read_bytes(path: Path, limit: int = -1) -> bytes:
    """The file's (decompressed, if gzip) bytes, or its first ``limit`` of them."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == _GZIP_MAGIC
    with (gzip.open if gzipped else open)(path, "rb") as f:
        return f.read(limit)


def read_idx(path: Path | str) -> np.ndarray:
    """One IDX file (gzipped or not, told by its content, not its name) as a numpy array."""
    path = Path(path)
    try:
        raw = _read_bytes(path)
    except (OSError, EOFError) as err:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read IDX file '{path}': {err}") from err
    dtype, shape, offset = _parse_idx_header(raw, path)
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - offset != expected:
        raise DataError(
            f"IDX file '{path}' holds {len(raw) - offset} data bytes; its header "
            f"{shape} of {dtype} asks for {expected}"
        )
    return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_files(folder: Path | str, source: str = "mnist") -> dict[str, Path]:
    """The four MNIST-style files in ``folder``, each with or without ``.gz``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise unreadable(f"{source} folder", folder, "not found", source)
    found = {}
    for key, stem in IDX_FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise unreadable(f"{source} file {stem}(.gz)", folder, "not found", source)
        found[key] = path
    return found


def check_idx_folder(folder: Path | str, source: str = "mnist") -> None:
    """Cheap start-up check: the four files exist and their headers agree, no data read."""
    shapes = {}
    for key, path in find_idx_files(folder, source).items():
        try:
            head = _read_bytes(path, 16)
        except (OSError, EOFError) as err:
            raise unreadable(f"{source} file", path, f"is unreadable ({err})", source) from err
        shapes[key] = _parse_idx_header(head, path)[1]
    _check_idx_shapes(shapes, Path(folder))


def _check_idx_shapes(shapes: dict[str, tuple[int, ...]], folder: Path) -> None:
    for split in ("train", "test"):
        images, labels = shapes[f"{split}-images"], shapes[f"{split}-labels"]
        if len(images) != 3 or len(labels) != 1 or images[0] != labels[0]:
            raise DataError(
                f"IDX {split} files in '{folder}' disagree: images {images}, labels {labels} "
                "(expected (n, rows, cols) images and (n,) labels)"
            )


def read_mnist_folder(folder: Path | str, source: str = "mnist") -> LabeledImages:
    """MNIST or Fashion-MNIST: train and t10k pooled, ``is_test`` marking the t10k rows."""
    arrays = {key: read_idx(path) for key, path in find_idx_files(folder, source).items()}
    _check_idx_shapes({k: a.shape for k, a in arrays.items()}, Path(folder))
    if arrays["train-images"].dtype != np.uint8 or arrays["test-images"].dtype != np.uint8:
        raise DataError(f"IDX images in '{folder}' are not unsigned bytes (0..255)")
    images = np.concatenate([arrays["train-images"], arrays["test-images"]])
    x = images[:, None, :, :].astype(np.float32)
    x /= 255.0  # MNIST is already ink-high: 0 = background
    y = np.concatenate([arrays["train-labels"], arrays["test-labels"]]).astype(np.int64)
    is_test = np.arange(len(y)) >= len(arrays["train-labels"])
    return LabeledImages(x=x, y=y, is_test=is_test)


# ---------------------------------------------------------------- FEMNIST (LEAF)

_FEMNIST_KEYS = ("x", "y", "writer", "split")


def femnist_layout(path: Path | str) -> str:
    """'npz' for a compact file, 'leaf' for a folder holding LEAF's train/ and test/."""
    path = Path(path)
    if path.is_file():
        return "npz"
    if path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
        return "leaf"
    problem = "not found" if not path.exists() else "is neither an npz file nor a LEAF folder"
    raise unreadable(
        "FEMNIST data (npz file or folder with train/ and test/)", path, problem, "femnist"
    )


def check_femnist(path: Path | str) -> None:
    """Cheap start-up check: the npz has its keys, or each LEAF split has JSON files."""
    path = Path(path)
    if femnist_layout(path) == "npz":
        with _open_npz(path, "FEMNIST npz", "femnist") as data:
            _require_keys(data, _FEMNIST_KEYS, path)
    else:
        for split in ("train", "test"):
            if not any((path / split).glob("*.json")):
                raise unreadable(f"LEAF {split}/*.json", path / split, "not found", "femnist")


def _open_npz(path: Path, what: str, source: str) -> np.lib.npyio.NpzFile:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise unreadable(what, path, f"is unreadable ({err})", source) from err


def _require_keys(data: np.lib.npyio.NpzFile, keys: tuple[str, ...], path: Path) -> None:
    missing = [k for k in keys if k not in data.files]
    if missing:
        raise DataError(f"npz '{path}' lacks keys {missing} (has {data.files})")


def read_femnist(path: Path | str) -> LabeledImages:
    """FEMNIST from a compact npz or a LEAF folder, each writer keeping its own split.

    Both sources store white background high (LEAF: 1.0, the npz: 255); both come out
    as ink = 1 - background, so the same writer reads identically from either.
    """
    path = Path(path)
    return _read_femnist_npz(path) if femnist_layout(path) == "npz" else _read_leaf(path)


def _read_femnist_npz(path: Path) -> LabeledImages:
    with _open_npz(path, "FEMNIST npz", "femnist") as data:
        _require_keys(data, _FEMNIST_KEYS, path)
        raw, y, writer, split = (data[k] for k in _FEMNIST_KEYS)
    if raw.ndim != 3 or not (len(raw) == len(y) == len(writer) == len(split)):
        raise DataError(f"FEMNIST npz '{path}' has inconsistent shapes x {raw.shape}, y {y.shape}")
    x = (255.0 - raw[:, None, :, :].astype(np.float32)) / 255.0
    return LabeledImages(
        x=x, y=y.astype(np.int64), writer=writer.astype(str), is_test=split == "test"
    )


def _read_leaf(folder: Path) -> LabeledImages:
    """LEAF's JSON shards: ``{"users", "num_samples", "user_data": {u: {"x", "y"}}}``."""
    xs, ys, writers, is_test = [], [], [], []
    for split in ("train", "test"):
        files = sorted((folder / split).glob("*.json"))
        if not files:
            raise unreadable(f"LEAF {split}/*.json", folder / split, "not found", "femnist")
        for file in files:
            for user, x, y in _leaf_users(file):
                xs.append(x)
                ys.append(y)
                writers.append(np.full(len(y), user))
                is_test.append(np.full(len(y), split == "test"))
    return LabeledImages(
        x=np.concatenate(xs),
        y=np.concatenate(ys),
        writer=np.concatenate(writers).astype(str),
        is_test=np.concatenate(is_test),
    )


def _leaf_users(file: Path) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(writer, x float32 (n, 1, 28, 28) ink-high, y int64) for each user of one shard."""
    try:
        with open(file) as f:
            shard = json.load(f)
        for user in shard["users"]:
            record = shard["user_data"][user]
            pixels = np.asarray(record["x"], dtype=np.float64).reshape(-1, 1, 28, 28)
            y = np.asarray(record["y"], dtype=np.int64)
            if len(y) != len(pixels):
                raise ValueError(f"user {user} has {len(pixels)} images, {len(y)} labels")
            yield user, (1.0 - pixels).astype(np.float32), y
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"LEAF shard '{file}' is unreadable: {err}") from err


# ---------------------------------------------------------------- Omniglot

OMNIGLOT_SIZE = 105  # the official drawings are 105 x 105


def read_omniglot(path: Path | str, size: int | None = 28) -> np.ndarray:
    """Omniglot as float32 ``(n_characters, n_drawers, size, size)``, ink = 1.

    ``path`` is a compact npz (key ``images``, bool, True = background), an official zip
    (``images_background.zip``) or its unzipped folder of ``<alphabet>/character<NN>/
    <id>_<drawer>.png``. Rows follow the official character index (the ``<id>`` in the
    file names), so the npz and the PNGs give the same rows. ``size=None`` keeps 105 x 105
    (about 850 MB for the background set); otherwise each drawing is area-averaged to
    ``size`` x ``size`` (28 is the usual MAML setting).
    """
    path = Path(path)
    if not path.exists():
        raise unreadable("Omniglot data", path, "not found", "omniglot")
    if path.is_file() and path.suffix == ".npz":
        with _open_npz(path, "Omniglot npz", "omniglot") as data:
            _require_keys(data, ("images",), path)
            background = data["images"]
    else:
        background = _read_omniglot_pngs(path)
    if background.ndim != 4 or background.shape[2:] != (OMNIGLOT_SIZE, OMNIGLOT_SIZE):
        raise DataError(f"Omniglot images at '{path}' have shape {background.shape}")
    return _ink(background.astype(bool), size)


def _ink(background: np.ndarray, size: int | None, chunk: int = 64) -> np.ndarray:
    """1 - background, area-downsampled in chunks so no 850 MB float copy is made."""
    if size is None:
        return (~background).astype(np.float32)
    import torch  # lazy: only downsampling needs it
    import torch.nn.functional as F

    n_chars, n_drawers = background.shape[:2]
    out = np.empty((n_chars, n_drawers, size, size), dtype=np.float32)
    for start in range(0, n_chars, chunk):
        block = torch.from_numpy(~background[start : start + chunk]).float()
        flat = block.reshape(-1, 1, OMNIGLOT_SIZE, OMNIGLOT_SIZE)
        small = F.interpolate(flat, size=(size, size), mode="area")
        out[start : start + chunk] = small.reshape(len(block), n_drawers, size, size).numpy()
    return out


def _read_omniglot_pngs(path: Path) -> np.ndarray:
    """Bool ``(n_characters, n_drawers, 105, 105)`` from a zip or folder of PNGs."""
    from PIL import Image  # lazy: only the PNG layout needs it

    drawings: dict[int, dict[int, Callable[[], bytes]]] = {}
    for name, load in _png_entries(path):
        character, drawer = (int(part) for part in Path(name).stem.split("_"))
        drawings.setdefault(character, {})[drawer] = load
    if not drawings:
        raise unreadable("Omniglot PNGs (<id>_<drawer>.png)", path, "not found", "omniglot")
    drawers = sorted(next(iter(drawings.values())))
    rows = []
    for character in sorted(drawings):
        if sorted(drawings[character]) != drawers:
            raise DataError(f"Omniglot character {character} at '{path}' lacks drawers")
        images = [Image.open(io.BytesIO(drawings[character][d]())) for d in drawers]
        rows.append(np.stack([np.asarray(im.convert("L")) > 127 for im in images]))
    return np.stack(rows)


def _png_entries(path: Path) -> list[tuple[str, Callable[[], bytes]]]:
    """(file name, loader) for each PNG in a zip or below a folder."""
    try:
        if path.is_dir():
            return [(p.name, p.read_bytes) for p in path.rglob("*.png")]
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        raise unreadable("Omniglot zip", path, f"is unreadable ({err})", "omniglot") from err
    names = [n for n in archive.namelist() if n.endswith(".png")]
    return [(n, lambda n=n: archive.read(n)) for n in names]
