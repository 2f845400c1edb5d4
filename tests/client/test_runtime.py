"""The per-process runtime cache: one skeleton per run, node data bounded by bytes."""

from __future__ import annotations

from flwr.app import Context, RecordDict

from client import runtime
from client.runtime import RuntimeCache, runtime_for


def _context(partition: int, **config: object) -> Context:
    return Context(
        run_id=1,
        node_id=partition + 1,
        node_config={"partition-id": partition, "num-partitions": 50},
        state=RecordDict(),
        run_config={"dataset": "sinusoid", **config},
    )


def test_nodes_of_one_run_share_settings_and_skeleton_but_not_data():
    a, b = runtime_for(_context(0)), runtime_for(_context(1))
    assert a.model is b.model and a.settings is b.settings
    assert a.data.client_id != b.data.client_id
    assert runtime_for(_context(0)) is a  # cached
    other = runtime_for(_context(0, **{"hidden-sizes": "8"}))
    assert other.model is not a.model


def test_cache_keeps_recent_nodes_within_its_byte_budget(monkeypatch):
    one = runtime_for(_context(0)).data
    per_node = sum(x.nbytes for x in (one.x_train, one.y_train, one.x_test, one.y_test))
    cache = RuntimeCache(max_bytes=3 * per_node)
    monkeypatch.setattr(runtime, "_RUNTIMES", cache)
    first = [runtime_for(_context(p)) for p in range(5)]
    assert len(cache) == 3 and cache.bytes == 3 * per_node
    assert runtime_for(_context(4)) is first[4]  # recent: kept
    assert runtime_for(_context(0)) is not first[0]  # oldest: rebuilt, equal data
    assert runtime_for(_context(0)).data.client_id == first[0].data.client_id


def test_a_node_larger_than_the_budget_is_still_served(monkeypatch):
    monkeypatch.setattr(runtime, "_RUNTIMES", RuntimeCache(max_bytes=1))
    rt = runtime_for(_context(7))
    assert rt.partition_id == 7 and len(runtime._RUNTIMES) == 1
