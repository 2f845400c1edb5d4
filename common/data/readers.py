"""Readers for the real datasets, in their official formats and the compact npz copies.

Every image reader returns float32 pixels in [0, 1] with 0 = background and 1 = ink,
whatever the source's convention (MNIST stores ink high; LEAF's FEMNIST and Omniglot
store white background high), so a model sees the same kind of input from every source.
Images carry a channel axis: ``(n, 1, H, W)``.

Nothing here knows where the data lives: every reader takes a path, and a missing or
unreadable one raises :class:`DataError` naming the path and where to get the data. A
reader checks what it reads (lengths, label ranges, complete compressed streams), so a
corrupt file is named in one line by the server's start-up check, not by every client.
"""

from __future__ import annotations

import gzip
import importlib.util
import io
import json
import struct
import zipfile
import zlib
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


MNIST_CLASSES = 10  # MNIST and Fashion-MNIST
FEMNIST_CLASSES = 62  # 10 digits, 26 upper, 26 lower case

# What a damaged archive raises: zipfile and gzip (OSError, EOFError), zlib on flipped
# bytes inside a compressed stream, numpy's npy reader (ValueError) on a cut-short array.
CORRUPT = (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error)


def unreadable(what: str, path: Path | str, problem: str, source: str) -> DataError:
    """The one error every reader raises: what, where, why, and where to get it."""
    return DataError(f"{what} {problem} at '{path}'. {WHERE_TO_GET[source]}")


def check_labels(y: np.ndarray, num_classes: int, where: str) -> None:
    """DataError unless every label is a class index 0..num_classes-1."""
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        first = int(np.argmax(bad))
        raise DataError(
            f"{where}: label {y[first]} at position {first} is outside 0..{num_classes - 1} "
            f"({int(bad.sum())} of {len(y)} labels are out of range)"
        )


def check_pixels(x: np.ndarray, top: float, where: str) -> None:
    """DataError unless float pixels are finite and in [0, top] (integer pixels are).

    One NaN or 1e30 pixel is no image: it passes through training as NaN or as a loss
    that blows theta up, long after the file that held it was read.
    """
    if not np.issubdtype(x.dtype, np.floating):
        return
    bad = ~((x >= 0) & (x <= top))  # NaN compares False, so it is caught here too
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), x.shape)
        raise DataError(
            f"{where}: pixel {float(x[first])} at index {tuple(int(i) for i in first)} is not a "
            f"number in [0, {top:g}] ({int(bad.sum())} of {x.size} pixels are not); fix or "
            "re-export the file"
        )


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

    Already ink-high, like MNIST. No path: the data ships inside scikit-learn, as
    ``sklearn/datasets/data/digits.csv.gz`` (64 pixel columns and the label), which is read
    here as ``load_digits`` reads it but without importing scikit-learn (with SciPy and
    pandas that import costs a node ~140 MiB and 2 s; a test checks both give the same
    arrays).
    """
    pixels = np.loadtxt(_sklearn_data_file("digits.csv.gz"), delimiter=",", dtype=np.float64)
    x = (pixels[:, :-1].reshape(-1, 8, 8) / 16.0).astype(np.float32)[:, None, :, :]
    return LabeledImages(x=x, y=pixels[:, -1].astype(np.int64))


def _sklearn_data_file(name: str) -> Path:
    """A data file bundled with scikit-learn, found without importing scikit-learn."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "dataset 'digits' ships inside scikit-learn, which is not installed: "
            "pip install scikit-learn"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / name
    if not path.is_file():
        raise DataError(f"dataset 'digits': scikit-learn has no {path}; reinstall scikit-learn")
    return path


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


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, decompressed if it is gzip (checked to its end: length and CRC)."""
    with open(path, "rb") as f:
        raw = f.read()
    return gzip.decompress(raw) if raw[:2] == _GZIP_MAGIC else raw


def read_idx(path: Path | str) -> np.ndarray:
    """One IDX file (gzipped or not, told by its content, not its name) as a numpy array."""
    path = Path(path)
    try:
        raw = _read_bytes(path)
    except EOFError as err:
        raise DataError(f"IDX file '{path}' is cut short (gzip: {err}); download it again") from err
    except (gzip.BadGzipFile, zlib.error) as err:
        raise DataError(f"IDX file '{path}' is corrupt (gzip: {err}); download it again") from err
    except OSError as err:
        raise DataError(f"IDX file '{path}' cannot be read: {err}") from err
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
    paths = find_idx_files(folder, source)
    arrays = {key: read_idx(path) for key, path in paths.items()}
    _check_idx_shapes({k: a.shape for k, a in arrays.items()}, Path(folder))
    for key in ("train-images", "test-images"):
        if arrays[key].dtype != np.uint8:
            raise DataError(f"IDX images in '{paths[key]}' are {arrays[key].dtype}, not ubyte")
    for key in ("train-labels", "test-labels"):
        check_labels(arrays[key], MNIST_CLASSES, f"IDX labels '{paths[key]}'")
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


def _read_npz(path: Path, keys: tuple[str, ...], what: str, source: str) -> tuple[np.ndarray, ...]:
    """The arrays ``keys`` of an npz, each read whole (so a damaged member is found here)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in keys if k not in data.files]
            if missing:
                raise DataError(f"{what} '{path}' lacks keys {missing} (has {data.files})")
            return tuple(data[k] for k in keys)
    except DataError:
        raise
    except CORRUPT as err:
        problem = f"is unreadable, cut short or corrupt ({err})"
        raise unreadable(what, path, problem, source) from err


def read_femnist(path: Path | str) -> LabeledImages:
    """FEMNIST from a compact npz or a LEAF folder, each writer keeping its own split.

    Both sources store white background high (LEAF: 1.0, the npz: 255); both come out
    as ink = 1 - background, so the same writer reads identically from either.
    """
    path = Path(path)
    return _read_femnist_npz(path) if femnist_layout(path) == "npz" else _read_leaf(path)


def _read_femnist_npz(path: Path) -> LabeledImages:
    raw, y, writer, split = _read_npz(path, _FEMNIST_KEYS, "FEMNIST npz", "femnist")
    if raw.ndim != 3 or not (len(raw) == len(y) == len(writer) == len(split)):
        raise DataError(
            f"FEMNIST npz '{path}' has inconsistent shapes: x {raw.shape}, y {y.shape}, "
            f"writer {writer.shape}, split {split.shape}"
        )
    check_labels(y, FEMNIST_CLASSES, f"FEMNIST npz '{path}'")
    check_pixels(raw, 255, f"FEMNIST npz '{path}' key 'x'")
    unknown = set(np.unique(split).tolist()) - {"train", "test"}
    if unknown:
        raise DataError(f"FEMNIST npz '{path}': split holds {sorted(unknown)}, not train/test")
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
        with open(file, "rb") as f:
            shard = json.loads(f.read())
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"LEAF shard '{file}' is unreadable ({err})") from err
    except json.JSONDecodeError as err:
        raise DataError(
            f"LEAF shard '{file}' is not complete JSON ({err}): cut short while being written? "
            "Rerun LEAF's preprocess.sh"
        ) from err
    try:
        for user in shard["users"]:
            yield (user, *_leaf_user(shard["user_data"][user], user))
    except KeyError as err:
        raise DataError(f"LEAF shard '{file}' lacks the key {err}") from err
    except (ValueError, TypeError) as err:
        raise DataError(f"LEAF shard '{file}': {err}") from err


def _leaf_user(record: dict, user: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        pixels = np.asarray(record["x"], dtype=np.float64)
        y = np.asarray(record["y"], dtype=np.int64)
    except ValueError as err:  # ragged rows, strings
        raise ValueError(f"user {user}'s x or y is not a table of numbers ({err})") from err
    if pixels.size == 0:
        pixels = pixels.reshape(0, 28 * 28)
    if pixels.ndim != 2 or pixels.shape[1] != 28 * 28:
        raise ValueError(f"user {user}'s x is {pixels.shape}, not (n, 784) pixel rows")
    if len(y) != len(pixels):
        raise ValueError(f"user {user} has {len(pixels)} images but {len(y)} labels")
    if not np.all((pixels >= 0) & (pixels <= 1)):  # NaN fails too
        raise ValueError(f"user {user}'s pixels are not all in [0, 1] (LEAF's scale)")
    check_labels(y, FEMNIST_CLASSES, f"user {user}")
    return (1.0 - pixels).reshape(-1, 1, 28, 28).astype(np.float32), y


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
        (background,) = _read_npz(path, ("images",), "Omniglot npz", "omniglot")
        check_pixels(background, 1, f"Omniglot npz '{path}' key 'images'")
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
        try:
            images = [Image.open(io.BytesIO(drawings[character][d]())) for d in drawers]
            rows.append(np.stack([np.asarray(im.convert("L")) > 127 for im in images]))
        except CORRUPT as err:  # PIL's UnidentifiedImageError is an OSError
            problem = f"holds an unreadable PNG of character {character} ({err})"
            raise unreadable("Omniglot data", path, problem, "omniglot") from err
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
