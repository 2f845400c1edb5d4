"""A user's own data behind the registry: tables, client folders, saved Hugging Face datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.config import parse_settings
from common.data import registry, user_data
from common.data.types import DataError


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def user_rows(users: int, per_user: int, seed: int = 0, prefix: str = "u") -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {"user": f"{prefix}{u}", "a": round(float(rng.normal()), 4),
         "b": round(float(rng.normal()), 4), "label": int(rng.integers(0, 3))}
        for u in range(users) for _ in range(per_user)
    ]  # fmt: skip


def table_settings(path: Path, **extra):
    return parse_settings(
        {"dataset": "table", "data-path": str(path), "client-column": "user"} | extra
    )


@pytest.fixture(autouse=True)
def fresh_caches():
    """Every test reads its own files: the per-process caches must not carry one over."""
    user_data.read_user_table.cache_clear()
    user_data._natural_clients.cache_clear()
    yield
    user_data.read_user_table.cache_clear()
    user_data._natural_clients.cache_clear()


# ---------------------------------------------------------------- clients


def test_natural_clients_follow_flower_datasets_natural_id_partitioner(tmp_path: Path):
    import datasets
    from flwr_datasets.partitioner import NaturalIdPartitioner

    rows = user_rows(7, 9, seed=1)
    rng = np.random.default_rng(0)
    rows = [rows[i] for i in rng.permutation(len(rows))]  # clients' rows interleaved
    path = write_csv(tmp_path / "users.csv", rows)
    s = table_settings(path, **{"feature-columns": "a,b"})
    registry.check_data_available(s)

    flower = NaturalIdPartitioner(partition_by="user")
    flower.dataset = datasets.Dataset.from_list(rows)
    assert flower.num_partitions == 7
    for pid in range(7):
        ours = registry.load_client_data(s, pid, 7)
        theirs = flower.load_partition(pid)
        assert ours.client_id == flower.partition_id_to_natural_id[pid]
        x = np.concatenate([ours.x_train, ours.x_test])
        expected = np.stack([theirs["a"], theirs["b"]], axis=1).astype(np.float32)
        key = lambda m: np.lexsort(m.T)  # noqa: E731  (same rows, any order)
        np.testing.assert_array_equal(x[key(x)], expected[key(expected)])


def test_each_client_gets_its_own_seeded_split_and_new_clients_are_held_out_ids(tmp_path):
    path = write_csv(tmp_path / "users.csv", user_rows(10, 20))
    s = table_settings(path, **{"new-clients": 3, "test-fraction": 0.25})
    registry.check_data_available(s)
    train_ids = {registry.load_client_data(s, i, 7).client_id for i in range(7)}
    new_ids = {registry.load_new_client_data(s, i).client_id for i in range(3)}
    assert len(train_ids) == 7 and len(new_ids) == 3 and not train_ids & new_ids
    assert train_ids | new_ids == {f"u{u}" for u in range(10)}
    one = registry.load_client_data(s, 0, 7)
    assert (one.num_train, one.num_test) == (15, 5)
    # the split is a function of (seed, client): again the same, another seed another
    again = registry.load_client_data(s, 0, 7)
    np.testing.assert_array_equal(one.x_test, again.x_test)
    other = registry.load_client_data(
        table_settings(path, **{"new-clients": 3, "seed": 1, "test-fraction": 0.25}), 0, 7
    )
    if other.client_id == one.client_id:
        assert not np.array_equal(one.x_test, other.x_test)
    with pytest.raises(DataError, match="7 clients"):
        registry.load_client_data(s, 0, 8)


def test_a_split_column_decides_train_and_test(tmp_path: Path):
    rows = user_rows(3, 10)
    for i, r in enumerate(rows):
        r["part"] = "test" if i % 10 < 3 else "train"
    s = table_settings(write_csv(tmp_path / "u.csv", rows), **{"split-column": "part"})
    registry.check_data_available(s)
    c = registry.load_client_data(s, 1, 3)
    assert (c.num_train, c.num_test) == (7, 3)
    assert registry.dataset_info(s).input_shape == (2,)  # the split column is no feature


def test_rows_without_clients_are_split_by_flower_partitioners(tmp_path: Path):
    path = write_csv(tmp_path / "rows.csv", user_rows(20, 30))
    for partition in ("iid", "dirichlet", "pathological", "shard", "linear"):
        s = parse_settings(
            {"dataset": "table", "data-path": str(path), "partition": partition,
             "feature-columns": "a,b", "new-clients": 2}
        )  # fmt: skip
        registry.check_data_available(s)
        clients = [registry.load_client_data(s, i, 5) for i in range(5)]
        new = [registry.load_new_client_data(s, i) for i in range(2)]
        total = sum(c.num_train + c.num_test for c in clients + new)
        assert total == 600, partition  # every row once: 20% held out, the rest in 5 clients
        assert clients[0].client_id == f"{partition}-0"


def test_parquet_and_a_folder_of_tables(tmp_path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "shards"
    folder.mkdir()
    for k in range(2):
        rows = user_rows(3, 8, seed=k, prefix=f"s{k}-")
        pq.write_table(pa.Table.from_pylist(rows), folder / f"part{k}.parquet")
    s = table_settings(folder)
    registry.check_data_available(s)
    names = {registry.load_client_data(s, i, 6).client_id for i in range(6)}
    assert names == {f"s{k}-{u}" for k in range(2) for u in range(3)}


def test_client_folders_of_npz_and_png(tmp_path: Path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("alice", "bob"):
        np.savez(tmp_path / f"{name}.npz", x=rng.normal(size=(12, 1, 4, 4)), y=np.arange(12) % 2)
    for label in ("0", "1"):
        (tmp_path / "carol" / label).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 256, size=(4, 4), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / "carol" / label / f"{i}.png")
    s = parse_settings({"dataset": "client-folders", "data-path": str(tmp_path)})
    registry.check_data_available(s)
    assert registry.dataset_info(s) == registry.DatasetInfo((1, 4, 4), 2)
    carol = registry.load_client_data(s, 2, 3)
    assert carol.client_id == "carol" and carol.num_train + carol.num_test == 12
    assert carol.x_train.min() >= 0 and carol.x_train.max() <= 1


def test_hf_disk_dataset_dict_keeps_its_split_and_takes_flower_partitioners(tmp_path: Path):
    import datasets

    rows = user_rows(4, 10)
    train = [r for i, r in enumerate(rows) if i % 10 < 7]
    test = [r for i, r in enumerate(rows) if i % 10 >= 7]
    saved = datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(train), "test": datasets.Dataset.from_list(test)}
    )
    saved.save_to_disk(str(tmp_path / "hf"))
    base = {"dataset": "hf-disk", "data-path": str(tmp_path / "hf"), "feature-columns": "a,b"}
    natural = parse_settings(base | {"client-column": "user", "split-column": "split"})
    registry.check_data_available(natural)
    u3 = registry.load_client_data(natural, 3, 4)
    assert (u3.client_id, u3.num_train, u3.num_test) == ("u3", 7, 3)
    spread = parse_settings(base | {"partition": "dirichlet", "dirichlet-alpha": 100.0})
    registry.check_data_available(spread)
    assert sum(registry.load_client_data(spread, i, 2).num_train for i in range(2)) == 32


def test_a_table_of_100_rows_is_held_once_and_cut_per_client_on_request(tmp_path: Path):
    s = table_settings(write_csv(tmp_path / "u.csv", user_rows(5, 20)))
    registry.check_data_available(s)
    table = user_data.read_user_table(user_data.Source.from_settings(s))
    assert user_data.read_user_table(user_data.Source.from_settings(s)) is table  # read once
    c = registry.load_client_data(s, 0, 5)
    assert not np.shares_memory(c.x_train, table.x)  # the client's own copy, made now


# ---------------------------------------------------------------- data on the SuperNodes


def test_a_server_without_data_builds_the_model_from_the_config_alone(tmp_path: Path):
    s = parse_settings(
        {"dataset": "table", "client-column": "user", "feature-columns": "a,b,c",
         "num-classes": 4}
    )  # fmt: skip
    registry.check_data_available(s)
    assert registry.dataset_info(s) == registry.DatasetInfo((3,), 4)
    with pytest.raises(DataError, match="num-classes"):
        registry.dataset_info(
            parse_settings({"dataset": "table", "client-column": "user", "feature-columns": "a"})
        )
    with pytest.raises(DataError, match="feature-columns"):
        registry.dataset_info(
            parse_settings({"dataset": "table", "client-column": "user", "num-classes": 2})
        )
    with pytest.raises(DataError, match="new-clients"):
        registry.check_data_available(
            parse_settings(
                {
                    "dataset": "table",
                    "client-column": "user",
                    "feature-columns": "a",
                    "num-classes": 2,
                    "new-clients": 1,
                }
            )
        )


def test_a_node_hosts_every_client_of_its_own_file_by_stable_numbers(tmp_path: Path):
    s = table_settings(write_csv(tmp_path / "mine.csv", user_rows(3, 10, prefix="dev-")))
    numbers = registry.hosted_client_numbers(s)
    assert set(numbers) == {user_data.client_number(f"dev-{u}") for u in range(3)}
    assert all(0 <= n < 2**48 for n in numbers)
    got = {registry.load_hosted_client_data(s, n).client_id for n in numbers}
    assert got == {"dev-0", "dev-1", "dev-2"}


def test_a_real_valued_label_is_a_regression_target_when_task_says_so(tmp_path: Path):
    rows = user_rows(3, 10)
    for r in rows:
        r["label"] = round(r["a"] * 2.5 + 0.1, 4)
    path = write_csv(tmp_path / "u.csv", rows)
    s = table_settings(path, task="regression")
    registry.check_data_available(s)
    assert registry.dataset_info(s).num_classes is None
    c = registry.load_client_data(s, 0, 3)
    assert c.y_train.dtype == np.float32 and c.y_train.shape == (c.num_train, 1)
    user_data.read_user_table.cache_clear()
    with pytest.raises(DataError, match="not an integer class id.*task = 'regression'"):
        registry.check_data_available(table_settings(path))  # task auto: classification


def test_hf_disk_image_column_becomes_channels_first_pixels(tmp_path: Path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)) for _ in range(24)]
    ds = datasets.Dataset.from_dict(
        {
            "img": images,
            "label": [i % 2 for i in range(24)],
            "user": [f"u{i % 3}" for i in range(24)],
        }
    ).cast_column("img", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    s = parse_settings(
        {"dataset": "hf-disk", "data-path": str(tmp_path / "hf"), "client-column": "user"}
    )
    registry.check_data_available(s)
    assert registry.dataset_info(s) == registry.DatasetInfo((3, 5, 5), 2)
    c = registry.load_client_data(s, 1, 3)
    assert c.client_id == "u1" and c.x_train.dtype == np.float32
    assert c.x_train.min() >= 0 and c.x_train.max() <= 1
