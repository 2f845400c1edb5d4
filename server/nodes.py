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
from collections.abc import Iterable, Iterator, Sequence
from logging import INFO, WARNING

import numpy as np
from flwr.app import Message, MessageType
from flwr.serverapp import Grid
from flwr.supercore import log

from common.messages import read_identity, write_query
from server.delivery import send_and_receive


def cohort_size(clients: int, fraction: float) -> int:
    """Clients sampled per round (the expected number under Poisson sampling)."""
    return min(clients, max(1, int(clients * fraction)))


class Clients(Sequence[tuple[int, int]]):
    """Every client of the live nodes as (partition, node id), by partition.

    Nodes that host contiguous, disjoint blocks of partitions (every node of this project's
    layouts) are kept as those blocks, so a million clients cost a few arrays, not a million
    tuples built every round; any other layout is listed client by client, as before.
    """

    def __init__(self, hosts: Iterable[tuple[int, Sequence[int]]]) -> None:
        blocks = sorted(
            ((_first(parts), node, parts) for node, parts in hosts if len(parts)),
            key=lambda b: b[0],
        )
        contiguous = all(isinstance(b[2], range) and b[2].step == 1 for b in blocks) and all(
            a[2].stop <= b[2].start for a, b in zip(blocks, blocks[1:], strict=False)
        )
        if contiguous:
            self._starts = np.array([b[2].start for b in blocks], dtype=np.int64)
            self._nodes = [b[1] for b in blocks]  # Flower's node ids are uint64: not int64
            self._ends = np.cumsum([len(b[2]) for b in blocks], dtype=np.int64)
            self._flat: list[tuple[int, int]] | None = None
        else:
            hosts = [(n, parts) for _, n, parts in blocks]
            self._flat = sorted((p, n) for n, parts in hosts for p in parts)

    def __len__(self) -> int:
        if self._flat is not None:
            return len(self._flat)
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, i):  # type: ignore[override]
        if self._flat is not None:
            return self._flat[i]
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        parts, blocks = self._locate(np.array([i % len(self)]))
        return int(parts[0]), self._nodes[int(blocks[0])]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self._flat is not None:
            yield from self._flat
            return
        for start, node, end, before in zip(
            self._starts.tolist(), self._nodes, self._ends.tolist(),
            [0, *self._ends.tolist()][:-1], strict=True,  # no blocks: no node known yet
        ):  # fmt: skip
            yield from ((p, node) for p in range(start, start + end - before))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Partitions, and blocks (nodes), of the clients at ``indices`` (positions by
        partition)."""
        block = np.searchsorted(self._ends, indices, side="right")
        before = np.where(block > 0, self._ends[block - 1], 0)
        return self._starts[block] + (indices - before), block

    def by_node(self, indices: Iterable[int]) -> dict[int, list[int]]:
        """The clients at ``indices``, grouped by node: node id -> partitions, ascending."""
        picked = np.sort(np.asarray(list(indices), dtype=np.int64))
        if self._flat is not None:
            pairs = [self._flat[i] for i in picked]
        else:
            parts, blocks = self._locate(picked)
            nodes = [self._nodes[b] for b in blocks.tolist()]
            pairs = list(zip(parts.tolist(), nodes, strict=True))
        grouped: dict[int, list[int]] = {}
        for partition, node in pairs:
            grouped.setdefault(node, []).append(partition)
        return grouped


def _first(parts: Sequence[int]) -> int:
    return parts.start if isinstance(parts, range) else min(parts)


class NodesUnavailable(RuntimeError):
    """Too few nodes connected within the configured wait."""


class NodeDirectory:
    def __init__(self, grid: Grid, min_nodes: int, wait_timeout: float, query_timeout: float):
        self.grid = grid
        self.min_nodes = min_nodes
        self.wait_timeout = wait_timeout
        self.query_timeout = query_timeout
        self._partitions: dict[int, Sequence[int]] = {}  # node id -> hosted partitions
        self._refusals: dict[int, str] = {}  # node id -> why it could not say (its error)
        self.population = 0  # clients on live nodes at the last sample

    def partitions_of(self, node_id: int) -> Sequence[int]:
        return self._partitions.get(node_id, ())

    def live(self) -> Clients:
        """(partition, node id) of every client on a connected node, by partition."""
        connected = set(self.grid.get_node_ids())
        self._discover(connected)
        return Clients([(n, parts) for n, parts in self._partitions.items() if n in connected])

    def wait(self) -> Clients:
        """Wait up to ``wait_timeout`` s for ``min_nodes`` nodes, else raise NodesUnavailable.

        Returns every client of the live nodes as (partition, node id), by partition.
        """
        deadline = time.monotonic() + self.wait_timeout
        while True:
            clients = self.live()
            connected = len({n for _, n in clients})
            if connected >= self.min_nodes:
                return clients
            if refused := self._refused_by_all():
                raise NodesUnavailable(refused)
            if time.monotonic() > deadline:
                raise NodesUnavailable(
                    f"only {connected} node(s) available after waiting {self.wait_timeout:g} s; "
                    f"min-available-nodes={self.min_nodes}. Start more SuperNodes, lower "
                    "min-available-nodes, or raise node-wait-timeout."
                )
            log(INFO, "waiting for nodes: %d of %d connected", connected, self.min_nodes)
            time.sleep(1.0)

    def _refused_by_all(self) -> str:
        """Why, when min-available-nodes nodes are connected and every one of them failed
        to say its clients ('' otherwise).

        Its error is the node's settings (too many clients for its memory, a bad value):
        asking again cannot help, so the run stops now instead of after node-wait-timeout.
        """
        connected = set(self.grid.get_node_ids())
        if len(connected) < self.min_nodes or not connected <= self._refusals.keys():
            return ""
        node = min(connected)
        return (
            f"every connected node ({len(connected)}) failed to say which clients it hosts; "
            f"node {node}: {' '.join(self._refusals[node].split())[:500]}"
        )

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
        return clients.by_node(picked)

    def _discover(self, node_ids: set[int]) -> None:
        unknown = sorted(n for n in node_ids if n not in self._partitions)
        if not unknown:
            return
        t0 = time.monotonic()
        queries = [
            Message(write_query(), dst_node_id=n, message_type=MessageType.QUERY) for n in unknown
        ]
        replies = send_and_receive(self.grid, queries, timeout=self.query_timeout)
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                log(WARNING, "node %d did not say its partition: %s", node, reply.error.reason)
                self._refusals[node] = reply.error.reason
                continue
            self._refusals.pop(node, None)
            hosted = read_identity(reply.content)  # a range stays a range: no list per client
            self._partitions[node] = hosted if isinstance(hosted, range) else tuple(hosted)
        log(
            INFO,
            "asked %d node(s) for their partition in %.1f s",
            len(unknown),
            time.monotonic() - t0,
        )
