"""Which nodes are connected and which clients (data partitions) each one hosts.

Node ids are random per run (Flower draws them), so sampling by node id could not be
reproduced. Each node is asked once, by a ``query`` message, for the partitions it hosts
(one, or ``clients-per-node`` of them); clients are then sampled by partition with an RNG
seeded from (seed, round, purpose), so a rerun with the same seed trains the same clients
in the same rounds, however many clients share a node: 100 clients on 100 nodes and the
same 100 clients on 2 nodes are sampled alike. DP's Poisson sample is seeded instead from
the run's secret noise key (server/privacy.py), so that it cannot be predicted.
"""

from __future__ import annotations

import time
from logging import INFO, WARNING

import numpy as np
from flwr.app import Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from common.messages import read_identity
from server.delivery import send_and_receive


def cohort_size(clients: int, fraction: float) -> int:
    """Clients sampled per round (the expected number under Poisson sampling)."""
    return min(clients, max(1, int(clients * fraction)))


class NodesUnavailable(RuntimeError):
    """Too few nodes connected within the configured wait."""


class NodeDirectory:
    def __init__(self, grid: Grid, min_nodes: int, wait_timeout: float, query_timeout: float):
        self.grid = grid
        self.min_nodes = min_nodes
        self.wait_timeout = wait_timeout
        self.query_timeout = query_timeout
        self._partitions: dict[int, tuple[int, ...]] = {}  # node id -> hosted partitions
        self.population = 0  # clients on live nodes at the last sample

    def partitions_of(self, node_id: int) -> tuple[int, ...]:
        return self._partitions.get(node_id, ())

    def live(self) -> list[tuple[int, int]]:
        """(partition, node id) of every client on a connected node, by partition."""
        connected = set(self.grid.get_node_ids())
        self._discover(connected)
        return sorted(
            (p, n) for n, parts in self._partitions.items() if n in connected for p in parts
        )

    def wait(self) -> list[tuple[int, int]]:
        """Wait up to ``wait_timeout`` s for ``min_nodes`` nodes, else raise NodesUnavailable.

        Returns every client of the live nodes as (partition, node id), by partition.
        """
        deadline = time.monotonic() + self.wait_timeout
        while True:
            clients = self.live()
            connected = len({n for _, n in clients})
            if connected >= self.min_nodes:
                return clients
            if time.monotonic() > deadline:
                raise NodesUnavailable(
                    f"only {connected} node(s) available after waiting {self.wait_timeout:g} s; "
                    f"min-available-nodes={self.min_nodes}. Start more SuperNodes, lower "
                    "min-available-nodes, or raise node-wait-timeout."
                )
            log(INFO, "waiting for nodes: %d of %d connected", connected, self.min_nodes)
            time.sleep(1.0)

    def sample(
        self, fraction: float, seed: int, server_round: int, purpose: int, poisson: bool = False
    ) -> dict[int, list[int]]:
        """A ``fraction`` of all clients, grouped by node: node id -> partitions, ascending.

        Exactly k = :func:`cohort_size` clients, drawn without replacement; with ``poisson``
        each client joins independently with probability k / N instead (k on average, what
        differential privacy's accounting assumes, server/privacy.py). ``seed`` is the
        experiment seed, or for DP's sample the run's secret noise key."""
        clients = self.wait()
        self.population = len(clients)
        k = cohort_size(len(clients), fraction)
        rng = np.random.default_rng([seed, server_round, purpose])
        if poisson:
            picked = np.flatnonzero(rng.random(len(clients)) < k / len(clients))
        else:
            picked = rng.choice(len(clients), size=k, replace=False)
        by_node: dict[int, list[int]] = {}
        for i in sorted(picked):
            partition, node = clients[i]
            by_node.setdefault(node, []).append(partition)
        return by_node

    def _discover(self, node_ids: set[int]) -> None:
        unknown = sorted(n for n in node_ids if n not in self._partitions)
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
            self._partitions[node] = tuple(read_identity(reply.content))
        log(
            INFO,
            "asked %d node(s) for their partition in %.1f s",
            len(unknown),
            time.monotonic() - t0,
        )
