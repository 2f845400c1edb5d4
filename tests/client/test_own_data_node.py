"""A SuperNode that holds its own data: node config data-path, no partition-id.

It hosts every user of its own file, checks that file itself (bad data is one DataError
line naming the file, the column and the client, which Flower returns to the server as
the node's error reply), and its handlers serve those users as any other clients.
"""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client.app import _cohort
from client.runtime import node_runtime
from common.data import user_data
from common.data.types import DataError
from common.messages import read_identity, write_identity
from tests.data.test_user_data import user_rows, write_csv

RUN = {
    "dataset": "table", "client-column": "user", "feature-columns": "a,b", "num-classes": 3,
    "batch-size": 4, "model": "mlp", "hidden-sizes": "8",
}  # fmt: skip


def _context(node_config: dict, **run: object) -> Context:
    return Context(
        run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config=RUN | run
    )


def test_a_node_hosts_every_user_of_its_own_file(tmp_path):
    path = write_csv(tmp_path / "phone.csv", user_rows(3, 12, prefix="me-"))
    node = node_runtime(_context({"data-path": str(path)}))
    assert node.own_data and node.num_partitions == 3
    assert set(node.partitions) == {user_data.client_number(f"me-{u}") for u in range(3)}
    names = {node.client(p).data.client_id for p in node.partitions}
    assert names == {"me-0", "me-1", "me-2"}
    cohort = _cohort(node, list(node.partitions))
    assert len(cohort.ready) == 3 and not cohort.skipped
    # what the node's identity reply tells the server (client/app.py identity())
    told = read_identity(write_identity(node.node_partition, node.partitions))
    assert sorted(told) == sorted(node.partitions)


def test_a_node_with_bad_data_names_file_column_and_client(tmp_path):
    rows = user_rows(3, 12, prefix="me-")
    rows[14]["b"] = "inf"
    path = write_csv(tmp_path / "phone.csv", rows)
    with pytest.raises(DataError) as err:
        node_runtime(_context({"data-path": str(path)}))
    message = str(err.value)
    assert "\n" not in message
    for part in ("phone.csv, line 16", "feature column 'b'", "client 'me-1'", "column 'user'"):
        assert part in message, message


def test_a_node_without_partition_id_or_data_path_says_what_to_give():
    with pytest.raises(DataError, match="data-path"):
        node_runtime(_context({}))


def test_a_nodes_model_matches_the_servers_built_from_config(tmp_path):
    """The server builds the model from feature-columns and num-classes alone: same shapes."""
    from common.config import parse_settings
    from common.models import model_for

    path = write_csv(tmp_path / "phone.csv", user_rows(2, 12, prefix="me-"))
    node = node_runtime(_context({"data-path": str(path)}))
    server = model_for(parse_settings(RUN))
    assert [p.shape for p in node.model.parameters()] == [p.shape for p in server.parameters()]
    x = node.client(node.partitions[0]).data.x_train
    assert x.dtype == np.float32 and x.shape[1] == 2
