"""The start-up check reads what a client will read: every damaged input is named in one line.

Each case writes a small valid dataset in its official format (IDX, FEMNIST npz, LEAF JSON,
Omniglot npz), damages one file as a crash, a bad download or a bad export would, and
expects :func:`check_data_available` to raise a DataError that names that file and the
problem, on one line, before any client runs.
"""

from __future__ import annotations

import gzip
import json
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from common.config import Settings
from common.data import readers, registry
from common.data.types import DataError


def write_idx(path: Path, array: np.ndarray) -> Path:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    return path


N_TRAIN, N_TEST = 50, 10


def mnist_folder(folder: Path) -> Settings:
    """50 train and 10 test 28x28 images, drawn like digits: mostly background."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    images = np.where(rng.random((N_TRAIN + N_TEST, 28, 28)) < 0.2, 255, 0).astype(np.uint8)
    labels = np.arange(N_TRAIN + N_TEST, dtype=np.uint8) % 10
    write_idx(folder / "train-images-idx3-ubyte.gz", images[:N_TRAIN])
    write_idx(folder / "train-labels-idx1-ubyte.gz", labels[:N_TRAIN])
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images[N_TRAIN:])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", labels[N_TRAIN:])
    return Settings(dataset="mnist", partition="dirichlet", data_path=str(folder))


def femnist_npz(path: Path, y: np.ndarray | None = None, x: np.ndarray | None = None) -> Settings:
    n = 6
    with path.open("wb") as f:  # np.savez would append ".npz" to another name
        np.savez(
            f,
            x=np.full((n, 28, 28), 255, np.uint8) if x is None else x,
            y=np.arange(n, dtype=np.uint8) if y is None else y,
            writer=np.array(["w0", "w0", "w0", "w1", "w1", "w1"]),
            split=np.array(["train", "train", "test"] * 2),
        )
    return Settings(dataset="femnist", partition="natural", data_path=str(path))


def leaf_user(n_images: int, labels: list[int]) -> dict:
    return {"x": [[1.0] * 784 for _ in range(n_images)], "y": labels}


def leaf_folder(folder: Path, user: dict | None = None) -> Settings:
    """LEAF's layout: train/ and test/ shards of {"users", "num_samples", "user_data"}."""
    for split in ("train", "test"):
        (folder / split).mkdir(parents=True)
        record = user if (user is not None and split == "train") else leaf_user(2, [0, 61])
        shard = {"users": ["f0"], "num_samples": [len(record["y"])], "user_data": {"f0": record}}
        (folder / split / "shard_0.json").write_text(json.dumps(shard))
    return Settings(dataset="femnist", partition="natural", data_path=str(folder))


def omniglot_folder(folder: Path) -> Settings:
    folder.mkdir()
    np.savez_compressed(
        folder / "images_background.npz", images=np.ones((6, 20, 105, 105), dtype=bool)
    )
    return Settings(dataset="omniglot", data_path=str(folder), n_way=2)


def cut(path: Path, keep: float = 0.5) -> Path:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    return path


def flip_bytes(path: Path) -> Path:
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    raw[middle : middle + 8] = bytes(b ^ 0xFF for b in raw[middle : middle + 8])
    path.write_bytes(bytes(raw))
    return path


def _truncated_idx(tmp: Path) -> tuple[Settings, Path, str]:
    settings = mnist_folder(tmp / "mnist")
    return settings, cut(tmp / "mnist/train-images-idx3-ubyte.gz"), "cut short"


def _flipped_idx(tmp: Path) -> tuple[Settings, Path, str]:
    settings = mnist_folder(tmp / "mnist")
    return settings, flip_bytes(tmp / "mnist/train-images-idx3-ubyte.gz"), "corrupt"


def _idx_label_out_of_range(tmp: Path) -> tuple[Settings, Path, str]:
    settings = mnist_folder(tmp / "mnist")
    labels = np.arange(N_TEST, dtype=np.uint8)
    labels[1] = 12
    write_idx(tmp / "mnist/t10k-labels-idx1-ubyte.gz", labels)
    return settings, tmp / "mnist/t10k-labels-idx1-ubyte.gz", "label 12 at position 1 is outside"


def _wrong_image_size(tmp: Path) -> tuple[Settings, Path, str]:
    settings = mnist_folder(tmp / "mnist")
    for name, n in (("train", N_TRAIN), ("t10k", N_TEST)):
        write_idx(tmp / f"mnist/{name}-images-idx3-ubyte.gz", np.zeros((n, 8, 8), np.uint8))
    return settings, tmp / "mnist", "(8, 8) pixels; the model takes (28, 28)"


def _truncated_npz(tmp: Path) -> tuple[Settings, Path, str]:
    settings = femnist_npz(tmp / "femnist.npz")
    return settings, cut(tmp / "femnist.npz"), "cut short or corrupt"


def _npz_label_out_of_range(tmp: Path) -> tuple[Settings, Path, str]:
    settings = femnist_npz(tmp / "femnist.npz", y=np.array([0, 1, 2, 62, 4, 5], np.uint8))
    return settings, tmp / "femnist.npz", "label 62 at position 3 is outside 0..61"


def _npz_float_pixels(bad: float) -> Callable[[Path], tuple[Settings, Path, str]]:
    def make(tmp: Path) -> tuple[Settings, Path, str]:
        x = np.full((6, 28, 28), 255.0, np.float32)
        x[2, 3, 4] = bad
        settings = femnist_npz(tmp / "femnist.npz", x=x)
        return settings, tmp / "femnist.npz", f"key 'x': pixel {float(np.float32(bad))} at index"

    return make


def _omniglot_npz_nan(tmp: Path) -> tuple[Settings, Path, str]:
    settings = omniglot_folder(tmp / "omniglot")
    images = np.ones((6, 20, 105, 105), np.float64)
    images[5, 19, 104, 104] = np.nan
    np.savez_compressed(tmp / "omniglot/images_background.npz", images=images)
    where = "key 'images': pixel nan at index (5, 19, 104, 104) is not a number in [0, 1]"
    return settings, tmp / "omniglot/images_background.npz", where


def _half_written_shard(tmp: Path) -> tuple[Settings, Path, str]:
    settings = leaf_folder(tmp / "leaf")
    return settings, cut(tmp / "leaf/test/shard_0.json", 0.6), "not complete JSON"


def _leaf_length_mismatch(tmp: Path) -> tuple[Settings, Path, str]:
    settings = leaf_folder(tmp / "leaf", leaf_user(3, [1, 2]))
    return settings, tmp / "leaf/train/shard_0.json", "user f0 has 3 images but 2 labels"


def _leaf_label_out_of_range(tmp: Path) -> tuple[Settings, Path, str]:
    settings = leaf_folder(tmp / "leaf", leaf_user(2, [5, 70]))
    return settings, tmp / "leaf/train/shard_0.json", "label 70 at position 1 is outside 0..61"


def _leaf_short_pixel_rows(tmp: Path) -> tuple[Settings, Path, str]:
    settings = leaf_folder(tmp / "leaf", {"x": [[0.5] * 783] * 2, "y": [1, 2]})
    return settings, tmp / "leaf/train/shard_0.json", "not (n, 784) pixel rows"


def _truncated_omniglot(tmp: Path) -> tuple[Settings, Path, str]:
    settings = omniglot_folder(tmp / "omniglot")
    return settings, cut(tmp / "omniglot/images_background.npz"), "cut short or corrupt"


CASES: dict[str, Callable[[Path], tuple[Settings, Path, str]]] = {
    "truncated gzip IDX": _truncated_idx,
    "gzip IDX with flipped bytes": _flipped_idx,
    "IDX label out of range": _idx_label_out_of_range,
    "IDX images of the wrong size": _wrong_image_size,
    "truncated FEMNIST npz": _truncated_npz,
    "FEMNIST npz label out of range": _npz_label_out_of_range,
    "half-written LEAF shard": _half_written_shard,
    "LEAF user with more images than labels": _leaf_length_mismatch,
    "LEAF label out of range": _leaf_label_out_of_range,
    "LEAF pixel rows of the wrong length": _leaf_short_pixel_rows,
    "truncated Omniglot npz": _truncated_omniglot,
    "FEMNIST npz with a NaN pixel": _npz_float_pixels(np.nan),
    "FEMNIST npz with a 1e30 pixel": _npz_float_pixels(1e30),
    "FEMNIST npz with a negative pixel": _npz_float_pixels(-1.0),
    "Omniglot npz with a NaN pixel": _omniglot_npz_nan,
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_damaged_input_is_named_in_one_line_before_round_one(tmp_path: Path, case) -> None:
    settings, damaged, problem = case(tmp_path)
    with pytest.raises(DataError) as err:
        registry.check_data_available(settings)
    message = str(err.value)
    assert "\n" not in message
    assert f"'{damaged}'" in message and problem in message


@pytest.mark.parametrize(
    "make", [mnist_folder, femnist_npz, leaf_folder, omniglot_folder], ids=lambda f: f.__name__
)
def test_the_undamaged_inputs_pass(tmp_path: Path, make) -> None:
    registry.check_data_available(make(tmp_path / "data"))


def test_the_check_reads_each_file_once_for_the_whole_process(tmp_path: Path, monkeypatch) -> None:
    settings = mnist_folder(tmp_path / "mnist")
    reads = []
    read = readers.read_mnist_folder
    monkeypatch.setattr(readers, "read_mnist_folder", lambda *a: reads.append(a) or read(*a))
    registry.check_data_available(settings)
    registry.load_client_data(settings, 0, 2)
    registry.load_client_data(settings, 1, 2)
    assert len(reads) == 1  # the clients of this process reuse what the check read
