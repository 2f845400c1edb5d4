"""Sampling a million clients without a tuple per client (issue 20), chosen as before."""

from __future__ import annotations

import time

import numpy as np
import pytest

from server.nodes import Clients


def _listed(hosts) -> list[tuple[int, int]]:
    """What NodeDirectory.live() built before: every (partition, node), by partition."""
    return sorted((p, n) for n, parts in hosts for p in parts)


def _grouped(listed, picked) -> dict[int, list[int]]:
    grouped: dict[int, list[int]] = {}
    for i in sorted(picked):
        partition, node = listed[i]
        grouped.setdefault(node, []).append(partition)
    return grouped


@pytest.mark.parametrize("seed", range(5))
def test_blocks_index_and_group_clients_exactly_as_the_full_list(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 40, size=rng.integers(1, 12))
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]) + rng.integers(0, 3)
    node_ids = [int(x) + 2**63 for x in rng.permutation(1000)[: len(sizes)]]  # uint64 ids
    hosts = [
        (int(n), range(int(s), int(s + k))) for n, s, k in zip(node_ids, starts, sizes, strict=True)
    ]
    rng.shuffle(hosts)  # the directory's dict order is the order nodes answered
    clients, listed = Clients(hosts), _listed(hosts)
    assert len(clients) == len(listed) and list(clients) == listed
    assert [clients[i] for i in range(-len(listed), len(listed))] == listed + listed
    picked = rng.choice(len(listed), size=min(7, len(listed)), replace=False)
    assert clients.by_node(picked) == _grouped(listed, picked)


def test_interleaved_partitions_fall_back_to_the_full_list():
    hosts = [(1, (0, 2, 4)), (2, (1, 3))]
    clients = Clients(hosts)
    assert list(clients) == _listed(hosts) and clients == _listed(hosts)
    assert clients.by_node([4, 0, 1]) == {1: [0, 4], 2: [1]}  # positions 4, 0, 1


def test_a_million_clients_sample_in_milliseconds():
    big, small = 2**64 - 1, 12  # node ids are random uint64s
    hosts = [(big, range(0, 500_000)), (small, range(500_000, 1_000_000))]
    clients = Clients(hosts)
    t0 = time.perf_counter()
    picked = np.random.default_rng([0, 1, 0]).choice(len(clients), size=1000, replace=False)
    grouped = clients.by_node(picked)
    took = time.perf_counter() - t0
    assert sum(len(v) for v in grouped.values()) == 1000 and set(grouped) == {big, small}
    assert all(p < 500_000 for p in grouped[big]) and all(p >= 500_000 for p in grouped[small])
    assert clients[999_999] == (999_999, small) and clients[0] == (0, big)
    assert took < 0.5, took  # the full list took ~1 s per round to build at this size
