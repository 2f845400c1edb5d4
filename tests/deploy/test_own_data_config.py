"""The federation script with --own-data: each node's config names its own file, no partition."""

from __future__ import annotations

import argparse

import pytest
from flwr.common.config import parse_config_args

from deploy.federation import Federation, FederationError, _node_count, own_data_paths


def test_each_node_gets_its_own_file_and_no_partition_id(tmp_path):
    for name in ("b.csv", "a.csv", "notes.txt", "c.parquet"):
        (tmp_path / name).write_text("x")
    files = own_data_paths(tmp_path)
    assert [f.rsplit("/", 1)[-1] for f in files] == ["a.csv", "b.csv", "c.parquet"]
    federation = Federation(tmp_path / "state", 3, node_data=files)
    for index, path in enumerate(files):
        parsed = parse_config_args([federation.node_config(index)])
        assert parsed == {"model-dir": str(federation.layout.model_dir(index)), "data-path": path}


def test_one_node_per_file_unless_nodes_is_given(tmp_path):
    for name in ("a.csv", "b.csv"):
        (tmp_path / name).write_text("x")
    assert _node_count(argparse.Namespace(nodes=None, own_data=tmp_path)) == 2
    assert _node_count(argparse.Namespace(nodes=None, own_data=None)) == 3
    with pytest.raises(FederationError, match="one per node"):
        Federation(tmp_path / "state", 3, node_data=own_data_paths(tmp_path))
    with pytest.raises(FederationError, match="not a folder"):
        own_data_paths(tmp_path / "state")
