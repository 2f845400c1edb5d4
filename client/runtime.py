"""What a node needs every round, built once per (run, client) in a process and reused.

A Flower node hosts ``clients-per-node`` = M clients: node ``partition-id`` i of
``num-partitions`` N serves partitions i*M .. (i+1)*M-1 of N*M (M = 1 is one client per
node). Flower calls the ClientApp many times per process (a Simulation Engine actor serves
many nodes), so the settings, every client's data and the model skeleton are cached here
rather than rebuilt on every message. Settings are parsed and the skeleton built once per
run config and shared by every client: the skeleton only gives ``functional_call`` its
structure (models carry no buffers, common/models.py), so no client can leave anything in
it. Client data is kept for the most recently served clients up to ``DATA_CACHE_BYTES``
per process (their arrays plus the objects around them), so ~120,000 sinusoid clients stay
cached while a process serving FEMNIST or Omniglot writers holds a bounded amount, however
many clients the federation has. Nothing learned lives here: the shared state
arrives in each message and a client's personal state lives in ``context.state``.

A SuperNode whose node config has ``data-path`` and no ``partition-id`` holds its own data
(a user's table or folder, common/data/user_data.py): it hosts every client in it, known
by numbers hashed from their ids, and checks that data itself before its first answer.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import Context
from torch import nn

from client.attacks import AttackConfig
from client.train import TrainConfig
from common.config import MetaOrder, Settings, parse_settings
from common.data.registry import (
    check_data_available,
    hosted_client_numbers,
    load_client_data,
    load_hosted_client_data,
)
from common.data.types import ClientData, DataError
from common.device import select_device
from common.models import model_for


@dataclass(frozen=True)
class ClientRuntime:
    """One client (data partition): its data and randomness."""

    seed: int
    partition_id: int
    num_partitions: int
    data: ClientData

    def too_small_reason(self, cfg: TrainConfig) -> str | None:
        """Why this client cannot train with ``cfg``'s batches, or None."""
        n, b = self.data.num_train, cfg.batches.batch_size
        if n < b:
            return (
                f"partition {self.partition_id} has {n} training examples, fewer than "
                f"batch-size={b}; lower batch-size or give this client more data"
            )
        # D'' larger than D only with hessian-batch-size set (episodes draw shots per class)
        h = cfg.batches.hessian_size
        hessian_free = cfg.meta_step is not None and cfg.meta_step.order is MetaOrder.HESSIAN_FREE
        if hessian_free and cfg.batches.episode is None and n < h:
            return (
                f"partition {self.partition_id} has {n} training examples, fewer than "
                f"hessian-batch-size={h} for perfedavg-hf's D''; lower hessian-batch-size"
            )
        if self.data.num_test == 0:
            return f"partition {self.partition_id} has no test examples to score on"
        return None

    def rng(self, server_round: int, purpose: int) -> np.random.Generator:
        """Randomness from (seed, client, round, purpose) only: runs are reproducible."""
        return np.random.default_rng([self.seed, self.partition_id, server_round, purpose])


@dataclass(frozen=True)
class NodeRuntime:
    """One Flower node: which clients it hosts, the shared model skeleton and device, and
    what its local training and simulated attackers read (built once, as the node starts)."""

    settings: Settings
    train: TrainConfig
    attack: AttackConfig  # simulated attackers (kind none: every client is honest)
    node_partition: int  # the node config's partition-id (OWN_DATA: none, its own data)
    partitions: Sequence[int]  # the clients this node hosts (a range, or its own clients)
    num_partitions: int  # clients in the whole federation (own data: on this node)
    device: torch.device
    model: nn.Module
    data_path: str

    @property
    def own_data(self) -> bool:
        return self.node_partition == OWN_DATA

    @property
    def hosted(self) -> str:
        """Which clients this node hosts, for messages."""
        if self.own_data:
            return f"the {len(self.partitions)} clients of its own data at {self.data_path}"
        return f"{self.partitions[0]}..{self.partitions[-1]}"

    def client(self, partition_id: int) -> ClientRuntime:
        if partition_id not in self.partitions:
            raise KeyError(
                f"partition {partition_id} is not hosted by this node (it hosts {self.hosted})"
            )
        return _CLIENTS.get((self.settings, partition_id, self.num_partitions, self.own_data))


TORCH_THREADS_KEY = "torch-threads"  # node config: torch's intra-op threads in this node
DEFAULT_TORCH_THREADS = 1  # small models on small (or shared) CPUs: a pool only adds hand-offs


def torch_threads(node_config: Mapping[str, object]) -> int:
    """The node config's ``torch-threads`` (default 1; 0 keeps torch's own choice)."""
    value = node_config.get(TORCH_THREADS_KEY, DEFAULT_TORCH_THREADS)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(
            f"node config {TORCH_THREADS_KEY}={value!r} is not a thread count: give a whole "
            f"number >= 1 (e.g. --node-config '{TORCH_THREADS_KEY}=1'), or 0 to keep torch's "
            "default of one thread per core"
        )
    return value


def apply_torch_threads(node_config: Mapping[str, object]) -> None:
    """Set torch's thread count from the node config, before any work of the message.

    On the project's shared 2-core machine one thread made the small models' rounds 10-15x
    faster than torch's default of one thread per core (docs/deployment.md).
    """
    wanted = torch_threads(node_config)
    if wanted and torch.get_num_threads() != wanted:
        torch.set_num_threads(wanted)


OWN_DATA = -1  # node_partition of a node that hosts its own data (no partition-id)


def node_runtime(context: Context) -> NodeRuntime:
    node = context.node_config
    apply_torch_threads(node)
    data_path = str(node.get("data-path", ""))
    settings = _settings(tuple(sorted(context.run_config.items())), data_path)
    if "partition-id" not in node:
        return _own_data_node(settings, data_path)
    index, nodes = int(node["partition-id"]), int(node["num-partitions"])
    per_node = settings.clients_per_node
    model = _skeleton(settings)
    _check_node_memory(settings)
    return NodeRuntime(
        settings=settings,
        train=TrainConfig.from_settings(settings),
        attack=AttackConfig.from_settings(settings),
        node_partition=index,
        partitions=range(index * per_node, (index + 1) * per_node),
        num_partitions=nodes * per_node,
        device=select_device(settings.device, model),
        model=model,
        data_path=data_path,
    )


def _own_data_node(settings: Settings, data_path: str) -> NodeRuntime:
    """A device that holds its own data: it hosts every client of its file(s).

    The node checks its data itself before it answers anything (the server never reads
    it): bad data raises one DataError line naming the file, column and client, which
    Flower returns to the server as this node's error reply, logged there by name.
    """
    if not data_path:
        raise DataError(
            "this SuperNode's node config has neither partition-id/num-partitions (a share "
            "of the run's data) nor data-path (its own data): give --node-config "
            "'data-path=<its file or folder>'"
        )
    hosted = _hosted_clients(settings)
    model = _skeleton(settings)
    return NodeRuntime(
        settings=settings,
        train=TrainConfig.from_settings(settings),
        attack=AttackConfig.from_settings(settings),
        node_partition=OWN_DATA,
        partitions=hosted,
        num_partitions=len(hosted),
        device=select_device(settings.device, model),
        model=model,
        data_path=data_path,
    )


@lru_cache(maxsize=8)
def _hosted_clients(settings: Settings) -> tuple[int, ...]:
    check_data_available(settings)  # once per process and run config
    return hosted_client_numbers(settings)


@lru_cache(maxsize=8)
def _settings(run_config: tuple[tuple[str, object], ...], node_data_path: str) -> Settings:
    settings = parse_settings(dict(run_config))
    if node_data_path:  # a SuperNode's own data overrides the run's default path
        settings = dataclasses.replace(settings, data_path=node_data_path)
    return settings


@lru_cache(maxsize=8)
def _skeleton(settings: Settings) -> nn.Module:
    return model_for(settings)


# ---- memory for clients-per-node, estimated before anything is allocated -------------------
# Without the estimate, clients-per-node=100000000 ran out of memory while the nodes listed
# their clients, and the server reported it after its 120 s wait as "start more
# SuperNodes". Nodes now report their clients as a range, so what grows with the clients
# is the final round, which scores final-fraction-evaluate of them (every one by default):
# each scored client's result on its node, in the reply, and as the server's row. Measured
# as peak RSS of the loop engine (node and server in one process, sinusoid, 20,000 ->
# 60,000 clients, all scored): 5.0 KB per client, split here evenly between node and server.
NODE_BYTES_PER_SCORED_CLIENT = 2500
SERVER_BYTES_PER_SCORED_CLIENT = 2500
SERVER_BYTES_PER_CLIENT = 16  # the sample drawn each round (DP's Poisson draw: 8 B + mask)


class MemoryEstimateError(ValueError):
    """The federation's clients would not fit in this machine's memory."""


def federation_bytes(settings: Settings, num_clients: int, hosted: int, server_here: bool) -> int:
    """Bytes this machine needs for ``hosted`` of the federation's ``num_clients`` clients
    (and for the server, when it runs here): the final round's scored clients, plus one
    round's updates of the clients fraction-train samples (on a node: its stacked rows and
    the reply; on the server: its rows of every sampled client)."""
    model = _skeleton(settings)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    if settings.learns_inner_lr:
        model_bytes *= 2  # Meta-SGD's alpha travels with theta

    def share(fraction: float) -> tuple[int, int]:  # (in the federation, on this machine)
        total = min(num_clients, max(1, int(num_clients * fraction)))
        return total, -(-total * hosted // num_clients)

    trained, trained_here = share(settings.fraction_train)
    scored, scored_here = share(settings.final_fraction_evaluate)
    need = scored_here * NODE_BYTES_PER_SCORED_CLIENT + trained_here * model_bytes * 2
    if server_here:
        need += scored * SERVER_BYTES_PER_SCORED_CLIENT + trained * model_bytes
        need += num_clients * SERVER_BYTES_PER_CLIENT
    return need


def available_memory() -> int:
    """Bytes the kernel says can be allocated now (MemAvailable), else physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(
    settings: Settings, num_clients: int, hosted: int, server_here: bool, where: str
) -> None:
    """MemoryEstimateError naming clients-per-node and the estimate when the clients would
    not fit into the memory available on this machine (``where`` says what it hosts)."""
    need = federation_bytes(settings, num_clients, hosted, server_here)
    have = available_memory()
    if need <= have:
        return
    raise MemoryEstimateError(
        f"config key 'clients-per-node' has value {settings.clients_per_node}: {hosted:,} "
        f"clients on {where} need an estimated {_size(need)} (the final round's scores of "
        "final-fraction-evaluate of them, one round's updates of fraction-train of them), "
        f"more than the {_size(have)} available; lower clients-per-node, "
        "final-fraction-evaluate or fraction-train, or spread the clients over more machines"
    )


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


@lru_cache(maxsize=8)
def _check_node_memory(settings: Settings) -> None:
    """The node's own share, checked once per run config before its first reply lists
    its clients (the server's share lives on the server's machine)."""
    per_node = settings.clients_per_node
    check_memory(settings, per_node, per_node, server_here=False, where="this node")


def _build_client(
    settings: Settings, partition_id: int, num_partitions: int, own_data: bool
) -> ClientRuntime:
    if own_data:  # partition_id is the client's number (common/data/user_data.py)
        data = load_hosted_client_data(settings, partition_id)
    else:
        data = load_client_data(settings, partition_id, num_partitions)
    return ClientRuntime(settings.seed, partition_id, num_partitions, data)


# Python objects around a cached client's arrays: the runtime, its ClientData, four array
# headers, the key and the cache's slot. Measured: 2.1 KB per sinusoid client whose arrays
# hold 560 bytes, so counting array bytes alone let the 256 MiB cache grow to ~1 GB of
# tiny clients (a million-client federation would cache every client it ever served).
ENTRY_OVERHEAD_BYTES = 1600


def _data_bytes(rt: ClientRuntime) -> int:
    d = rt.data
    return ENTRY_OVERHEAD_BYTES + sum(a.nbytes for a in (d.x_train, d.y_train, d.x_test, d.y_test))


class RuntimeCache:
    """Least-recently-used client runtimes, bounded by the bytes of their data (>= 1 kept)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple, tuple[ClientRuntime, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple) -> ClientRuntime:
        with self._lock:
            if (hit := self._items.get(key)) is not None:
                self._items.move_to_end(key)
                return hit[0]
            rt = _build_client(*key)
            size = _data_bytes(rt)
            self._items[key] = (rt, size)
            self.bytes += size
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, (_, freed) = self._items.popitem(last=False)
                self.bytes -= freed
            return rt


DATA_CACHE_BYTES = 256 * 2**20
_CLIENTS = RuntimeCache(DATA_CACHE_BYTES)
