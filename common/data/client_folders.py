"""A folder with one entry per client: ``<client>.npz`` or ``<client>/<label>/*.png``.

The client's id is the file or folder name. An npz client holds ``x`` (samples first, any
shape) and ``y`` (one label per sample). An image client holds one sub-folder per label;
label folders named by integers are those class ids, otherwise the sorted names over all
clients become ids 0..C-1 (as torchvision's ``ImageFolder`` does). Images are read as
float32 in [0, 1], (1, H, W) for grey and (3, H, W) for colour; every sample of the
federation must have the same shape. The same id as both ``alice.npz`` and ``alice/`` is
the "same client in two files" error of common/data/table.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from common.data.table import Columns, FilePart, UserTable, join_parts
from common.data.types import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
COLUMNS = Columns(client="file name", label="y", features=("x",))


def read_client_folders(data_path: str) -> UserTable:
    folder = Path(data_path).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"data-path '{folder}' is not a folder: dataset 'client-folders' reads a folder "
            "with <client>.npz files or <client>/<label>/*.png folders"
        )
    npz = sorted(folder.glob("*.npz"))
    image_dirs = sorted(p for p in folder.iterdir() if p.is_dir())
    if not npz and not image_dirs:
        raise DataError(f"folder '{folder}' holds no <client>.npz file and no <client>/ folder")
    label_ids = _label_ids(image_dirs)
    parts = [_read_npz(p) for p in npz] + [_read_images(d, label_ids) for d in image_dirs]
    _check_same_shape(parts)
    return join_parts(parts, COLUMNS, "row", 0)


def _read_npz(path: Path) -> FilePart:
    try:
        with np.load(path, allow_pickle=False) as arrays:
            missing = [k for k in ("x", "y") if k not in arrays.files]
            if missing:
                raise DataError(
                    f"{path}: no array '{missing[0]}' (client '{path.stem}'); a client file "
                    f"holds x (samples first) and y (one label per sample); it has: "
                    f"{', '.join(arrays.files)}"
                )
            x, y = arrays["x"], arrays["y"]
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: cannot be read as npz (client '{path.stem}'): {err}") from err
    if not np.issubdtype(x.dtype, np.number):
        raise DataError(
            f"{path}: array 'x' of client '{path.stem}' is of type {x.dtype}, not numbers"
        )
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"{path}: client '{path.stem}' has {len(x)} samples in x but y has shape "
            f"{y.shape}; y needs one label per sample"
        )
    ids = np.full(len(y), path.stem)
    return FilePart(str(path), x.astype(np.float32, copy=False), y, ids, None)


def _label_ids(image_dirs: list[Path]) -> dict[str, int]:
    names = sorted({d.name for c in image_dirs for d in c.iterdir() if d.is_dir()})
    if all(n.isdigit() for n in names):
        return {n: int(n) for n in names}
    return {n: i for i, n in enumerate(names)}


def _read_images(client: Path, label_ids: dict[str, int]) -> FilePart:
    from PIL import Image  # matplotlib's dependency; only image clients need it

    xs, ys = [], []
    for label_dir in sorted(d for d in client.iterdir() if d.is_dir()):
        for f in sorted(p for p in label_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                with Image.open(f) as img:
                    grey = img.mode in ("1", "L", "LA", "P", "I", "I;16")
                    pixels = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.float32)
            except OSError as err:
                raise DataError(
                    f"{f}: cannot be read as an image (client '{client.name}'): {err}"
                ) from err
            xs.append(pixels[None] if grey else pixels.transpose(2, 0, 1))
            ys.append(label_ids[label_dir.name])
    if not xs:
        raise DataError(f"{client}: client '{client.name}' has no <label>/*.png image")
    shapes = {a.shape for a in xs}
    if len(shapes) > 1:
        raise DataError(
            f"{client}: client '{client.name}' has images of shapes {sorted(shapes)}; "
            "resize them to one shape"
        )
    x = np.stack(xs) / np.float32(255.0)
    return FilePart(str(client), x, np.asarray(ys, np.int64), np.full(len(ys), client.name), None)


def _check_same_shape(parts: list[FilePart]) -> None:
    first = parts[0]
    for p in parts[1:]:
        if p.x.shape[1:] != first.x.shape[1:]:
            raise DataError(
                f"{p.file}: client '{p.client[0] if p.client is not None else ''}' has "
                f"samples of shape {p.x.shape[1:]}, but {first.file} has "
                f"{first.x.shape[1:]}; every client's x must have one shape"
            )
