"""Which nodes are connected and which data partition each serves.

Node ids are random per run (Flower draws them), so sampling by node id could not be
reproduced. Each node is asked once, by a ``query`` message, for its ``partition-id``;
clients are then sampled by partition with an RNG seeded from (seed, round, purpose), so a
rerun with the same seed trains the same clients in the same rounds.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from server.delivery import send_and_receive


class NodesUnavailable(RuntimeError):
    """Too few nodes connected within the configured wait."""


class NodeDirectory:
    def __init__(self, grid: Grid, min_nodes: int, wait_timeout: float, query_timeout: float):
        self.grid = grid
        self.min_nodes = min_nodes
        self.wait_timeout = wait_timeout
        self.query_timeout = query_timeout
        self._partition: dict[int, int] = {}

    def partition_of(self, node_id: int) -> int | None:
        return self._partition.get(node_id)

    def live(self) -> list[tuple[int, int]]:
        """(partition, node id) of every connected node that told us its partition."""
        connected = set(self.grid.get_node_ids())
        self._discover(connected)
        return sorted((p, n) for n, p in self._partition.items() if n in connected)

    def wait(self) -> list[tuple[int, int]]:
        """Wait up to ``wait_timeout`` s for ``min_nodes`` nodes, else raise NodesUnavailable."""
        deadline = time.monotonic() + self.wait_timeout
        while len(nodes := self.live()) < self.min_nodes:
            if time.monotonic() > deadline:
                raise NodesUnavailable(
                    f"only {len(nodes)} node(s) available after waiting {self.wait_timeout:g} s; "
                    f"min-available-nodes={self.min_nodes}. Start more SuperNodes, lower "
                    "min-available-nodes, or raise node-wait-timeout."
                )
            log(INFO, "waiting for nodes: %d of %d connected", len(nodes), self.min_nodes)
            time.sleep(1.0)
        return nodes

    def sample(self, fraction: float, seed: int, server_round: int, purpose: int) -> list[int]:
        nodes = self.wait()
        k = min(len(nodes), max(1, int(len(nodes) * fraction)))
        rng = np.random.default_rng([seed, server_round, purpose])
        picked = rng.choice(len(nodes), size=k, replace=False)
        return [nodes[i][1] for i in sorted(picked)]

    def _discover(self, node_ids: set[int]) -> None:
        unknown = sorted(n for n in node_ids if n not in self._partition)
        if not unknown:
            return
        t0 = time.monotonic()
        queries = [
            Message(RecordDict(), dst_node_id=n, message_type=MessageType.QUERY) for n in unknown
        ]
        replies = send_and_receive(self.grid, queries, timeout=self.query_timeout)
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "node %d did not say its partition: %s", node, reply.error.reason)
                continue
            self._partition[node] = int(reply.content["identity"]["partition-id"])
        log(
            INFO,
            "asked %d node(s) for their partition in %.1f s",
            len(unknown),
            time.monotonic() - t0,
        )
