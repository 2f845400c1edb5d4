"""A round waits at most node-wait-timeout for min-available-nodes, then fails clearly."""

from __future__ import annotations

import threading
import time

import pytest
from flwr.app import Context, RecordDict

from client.app import app as client_app
from server.nodes import NodeDirectory, NodesUnavailable
from simulations.loop import LoopGrid


def test_too_few_nodes_fail_after_the_wait_with_a_message_naming_the_fix():
    grid = LoopGrid(client_app, {}, num_nodes=1)
    nodes = NodeDirectory(grid, 2, 0.5, 10.0)  # min nodes, wait timeout, query timeout
    started = time.monotonic()
    with pytest.raises(NodesUnavailable) as err:
        nodes.wait()
    assert 0.5 <= time.monotonic() - started < 5
    message = str(err.value)
    assert "only 1 node(s)" in message and "min-available-nodes=2" in message
    assert "node-wait-timeout" in message


def test_a_node_that_connects_during_the_wait_is_used():
    grid = LoopGrid(client_app, {}, num_nodes=1)
    nodes = NodeDirectory(grid, 2, 30.0, 10.0)

    def connect_second_node() -> None:
        time.sleep(0.5)
        grid.contexts[2] = Context(
            run_id=1, node_id=2, node_config={"partition-id": 1, "num-partitions": 2},
            state=RecordDict(), run_config={},
        )  # fmt: skip

    thread = threading.Thread(target=connect_second_node)
    thread.start()
    started = time.monotonic()
    assert nodes.wait() == [(0, 1), (1, 2)]  # (partition, node id)
    assert time.monotonic() - started < 10
    thread.join()
