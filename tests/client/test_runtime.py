"""The per-process runtime cache: one skeleton per run, client data bounded by bytes; which
clients a node hosts."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from client import runtime
from client.runtime import ClientRuntime, RuntimeCache, node_runtime
from client.train import TrainConfig
from common.config import parse_settings
from common.data.types import ClientData


def _context(partition: int, nodes: int = 50, **config: object) -> Context:
    return Context(
        run_id=1,
        node_id=partition + 1,
        node_config={"partition-id": partition, "num-partitions": nodes},
        state=RecordDict(),
        run_config={"dataset": "sinusoid", **config},
    )


def _client(partition: int, **config: object):
    return node_runtime(_context(partition, **config)).client(partition)


def test_clients_of_one_run_share_settings_and_skeleton_but_not_data():
    a, b = node_runtime(_context(0)), node_runtime(_context(1))
    assert a.model is b.model and a.settings is b.settings
    assert a.client(0).data.client_id != b.client(1).data.client_id
    assert a.client(0) is node_runtime(_context(0)).client(0)  # cached
    other = node_runtime(_context(0, **{"hidden-sizes": "8"}))
    assert other.model is not a.model


def test_a_node_hosts_a_contiguous_block_of_clients_per_node():
    node = node_runtime(_context(2, nodes=4, **{"clients-per-node": 3}))
    assert list(node.partitions) == [6, 7, 8] and node.num_partitions == 12
    assert node.client(7).num_partitions == 12
    with pytest.raises(KeyError, match="partition 5 is not hosted by this node"):
        node.client(5)
    one = node_runtime(_context(2, nodes=4))
    assert list(one.partitions) == [2] and one.num_partitions == 4  # the M = 1 layout


def test_cache_keeps_recent_clients_within_its_byte_budget(monkeypatch):
    one = _client(0).data
    arrays = sum(x.nbytes for x in (one.x_train, one.y_train, one.x_test, one.y_test))
    per_client = arrays + runtime.ENTRY_OVERHEAD_BYTES  # the objects around them count too
    cache = RuntimeCache(max_bytes=3 * per_client)
    monkeypatch.setattr(runtime, "_CLIENTS", cache)
    first = [_client(p) for p in range(5)]
    assert len(cache) == 3 and cache.bytes == 3 * per_client
    assert _client(4) is first[4]  # recent: kept
    assert _client(0) is not first[0]  # oldest: rebuilt, equal data
    assert _client(0).data.client_id == first[0].data.client_id


def test_a_client_larger_than_the_budget_is_still_served(monkeypatch):
    monkeypatch.setattr(runtime, "_CLIENTS", RuntimeCache(max_bytes=1))
    rt = _client(7)
    assert rt.partition_id == 7 and len(runtime._CLIENTS) == 1


def test_a_client_too_small_for_its_batches_says_which_batch():
    x = np.zeros((8, 1), np.float32)
    rt = ClientRuntime(0, 3, 10, ClientData(x, x, x[:2], x[:2]))

    def reason(**config: object) -> str | None:
        return rt.too_small_reason(TrainConfig.from_settings(parse_settings(config)))

    assert reason(**{"batch-size": 8}) is None
    assert "fewer than batch-size=9" in str(reason(**{"batch-size": 9}))
    # D'' of 10 only matters to perfedavg-hf, which computes with it
    hf = {"algorithm": "perfedavg-hf", "batch-size": 5, "hessian-batch-size": 10}
    assert "fewer than hessian-batch-size=10" in str(reason(**hf))
    assert reason(**(hf | {"algorithm": "maml"})) is None
    untestable = ClientRuntime(0, 3, 10, ClientData(x, x, x[:0], x[:0]))
    default = TrainConfig.from_settings(parse_settings({}))
    assert "no test examples" in str(untestable.too_small_reason(default))
