"""The registry: the right client for (settings, partition id), reproducibly and honestly."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from common.config import Settings
from common.data import registry
from common.data.sinusoid import sinusoid_client
from common.data.synthetic import synthetic_client
from common.data.types import ClientData, DataError

DIGITS = Settings(dataset="digits", partition="dirichlet", dirichlet_alpha=0.5, seed=3)


def assert_same(a: ClientData, b: ClientData) -> None:
    assert a.client_id == b.client_id
    for field in ("x_train", "y_train", "x_test", "y_test"):
        assert np.array_equal(getattr(a, field), getattr(b, field))


def test_same_arguments_give_the_same_client_in_any_process() -> None:
    first = registry.load_client_data(DIGITS, 4, 10)
    assert_same(first, registry.load_client_data(DIGITS, 4, 10))
    registry._client_indices.cache_clear()  # as a fresh process would rebuild it
    assert_same(first, registry.load_client_data(DIGITS, 4, 10))
    other_seed = registry.load_client_data(dataclasses.replace(DIGITS, seed=4), 4, 10)
    assert not np.array_equal(first.y_train, other_seed.y_train)


@pytest.mark.parametrize("partition", ["dirichlet", "pathological"])
def test_clients_splits_are_disjoint_and_cover_the_dataset(partition: str) -> None:
    settings = Settings(dataset="digits", partition=partition, seed=1)
    _, halves = registry._client_indices(registry._Split.from_settings(settings, 10))
    everything = np.concatenate([np.concatenate(pair) for pair in halves])
    assert np.array_equal(np.sort(everything), np.arange(1_797))
    assert all(len(train) > 0 and len(test) > 0 for train, test in halves)


def test_client_arrays_follow_dataset_info() -> None:
    data = registry.load_client_data(DIGITS, 0, 10)
    info = registry.dataset_info(DIGITS)
    assert data.x_train.shape[1:] == info.input_shape and data.x_train.dtype == np.float32
    assert data.y_train.dtype == np.int64 and data.y_test.max() < (info.num_classes or 0)
    assert data.num_test == round(0.2 * (data.num_train + data.num_test))


def test_generated_datasets_dispatch_to_their_generators() -> None:
    sinusoid = Settings(dataset="sinusoid", seed=2)
    assert_same(registry.load_client_data(sinusoid, 5, 10), sinusoid_client(2, 5, 20, 50))
    synthetic = Settings(dataset="synthetic", synthetic_alpha=1.0, synthetic_beta=0.0, seed=2)
    assert_same(registry.load_client_data(synthetic, 5, 10), synthetic_client(2, 5, 1.0, 0.0, 0.2))
    assert registry.dataset_info(sinusoid).num_classes is None
    assert registry.input_shape(synthetic) == (60,) and registry.num_classes(synthetic) == 10


def test_partition_id_out_of_range_raises() -> None:
    with pytest.raises(DataError, match="outside 0..9"):
        registry.load_client_data(DIGITS, 10, 10)


def test_a_dataset_without_writers_has_no_natural_partition() -> None:
    settings = Settings(dataset="digits", partition="natural")
    with pytest.raises(DataError, match="no writer ids"):
        registry.check_data_available(settings)


def test_missing_data_path_fails_early_and_names_it(tmp_path: Path) -> None:
    settings = Settings(
        dataset="fashion-mnist", partition="dirichlet", data_path=str(tmp_path / "fmnist")
    )
    with pytest.raises(DataError, match="fmnist"):
        registry.check_data_available(settings)
    with pytest.raises(DataError, match="fmnist"):
        registry.load_client_data(settings, 0, 10)


def test_femnist_clients_are_writers_with_their_own_split(femnist_npz: Path) -> None:
    settings = Settings(dataset="femnist", partition="natural", data_path=str(femnist_npz))
    registry.check_data_available(settings)
    raw = np.load(femnist_npz)
    first_writer = sorted(set(raw["writer"].tolist()))[0]
    data = registry.load_client_data(settings, 0, 20)
    assert data.client_id == f"femnist-{first_writer}"
    mine = raw["writer"] == first_writer
    assert data.num_train == int((mine & (raw["split"] == "train")).sum())
    assert data.num_test == int((mine & (raw["split"] == "test")).sum())
    assert data.x_train.shape[1:] == registry.input_shape(settings)
    with pytest.raises(DataError, match="only 105 writers"):
        registry.load_client_data(settings, 0, 106)


def test_fashion_mnist_perfedavg_clients(fashion_mnist_dir: Path) -> None:
    settings = Settings(
        dataset="fashion-mnist", partition="perfedavg", data_path=str(fashion_mnist_dir)
    )
    registry.check_data_available(settings)
    first_half, second_half = (registry.load_client_data(settings, i, 50) for i in (0, 25))
    assert set(np.concatenate([first_half.y_train, first_half.y_test])) == {0, 1, 2, 3, 4}
    assert len(set(np.concatenate([second_half.y_train, second_half.y_test]))) == 2
    assert first_half.x_train.shape[1:] == (1, 28, 28)
