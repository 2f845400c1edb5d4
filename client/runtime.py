"""What a client needs every round, built once per (run, node) in a process and reused.

Flower calls the ClientApp many times per process (a Simulation Engine actor serves
hundreds of nodes), so the settings, the node's data and the model skeleton are cached
here rather than rebuilt on every message. Settings are parsed and the skeleton built
once per run config, and shared by every node: the skeleton only gives
``functional_call`` its structure (models carry no buffers, common/models.py), so no node
can leave anything in it. Node data is kept for the most recently served nodes up to
``DATA_CACHE_BYTES`` per process, so 1,000 sinusoid clients all stay cached while a
process serving FEMNIST or Omniglot writers holds a bounded amount. Nothing learned lives
here: the shared state arrives in each message and a node's personal state lives in
``context.state``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Context
from torch import Tensor, nn

from common.config import Settings, parse_settings
from common.data.registry import load_client_data
from common.data.types import ClientData
from common.device import select_device
from common.models import model_for
from common.personalize import tensors_of


@dataclass(frozen=True)
class ClientRuntime:
    settings: Settings
    partition_id: int
    num_partitions: int
    device: torch.device
    model: nn.Module
    data: ClientData
    train_tensors: tuple[Tensor, Tensor]

    @property
    def too_small_reason(self) -> str | None:
        n, b = self.data.num_train, self.settings.batch_size
        if n < b:
            return (
                f"partition {self.partition_id} has {n} training examples, fewer than "
                f"batch-size={b}; lower batch-size or give this client more data"
            )
        if self.data.num_test == 0:
            return f"partition {self.partition_id} has no test examples to score on"
        return None

    def rng(self, server_round: int, purpose: int) -> np.random.Generator:
        """Randomness from (seed, client, round, purpose) only: runs are reproducible."""
        return np.random.default_rng([self.settings.seed, self.partition_id, server_round, purpose])


def runtime_for(context: Context) -> ClientRuntime:
    node = context.node_config
    key = (
        tuple(sorted(context.run_config.items())),
        int(node["partition-id"]),
        int(node["num-partitions"]),
        str(node.get("data-path", "")),
    )
    return _RUNTIMES.get(key)


@lru_cache(maxsize=8)
def _settings(run_config: tuple[tuple[str, object], ...], node_data_path: str) -> Settings:
    settings = parse_settings(dict(run_config))
    if node_data_path:  # a SuperNode's own data overrides the run's default path
        settings = dataclasses.replace(settings, data_path=node_data_path)
    return settings


@lru_cache(maxsize=8)
def _skeleton(settings: Settings) -> nn.Module:
    return model_for(settings)


def _build_runtime(
    run_config: tuple[tuple[str, object], ...],
    partition_id: int,
    num_partitions: int,
    node_data_path: str,
) -> ClientRuntime:
    settings = _settings(run_config, node_data_path)
    device = select_device(settings.device)
    data = load_client_data(settings, partition_id, num_partitions)
    x, y, _, _ = tensors_of(data, settings.task, device)
    return ClientRuntime(
        settings=settings,
        partition_id=partition_id,
        num_partitions=num_partitions,
        device=device,
        model=_skeleton(settings),
        data=data,
        train_tensors=(x, y),
    )


def _data_bytes(rt: ClientRuntime) -> int:
    d = rt.data
    host = sum(a.nbytes for a in (d.x_train, d.y_train, d.x_test, d.y_test))
    on_device = 0 if rt.device.type == "cpu" else sum(t.nbytes for t in rt.train_tensors)
    return host + on_device


class RuntimeCache:
    """Least-recently-used runtimes, bounded by the bytes of their data (at least one kept)."""

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
            rt = _build_runtime(*key)
            size = _data_bytes(rt)
            self._items[key] = (rt, size)
            self.bytes += size
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, (_, freed) = self._items.popitem(last=False)
                self.bytes -= freed
            return rt


DATA_CACHE_BYTES = 256 * 2**20
_RUNTIMES = RuntimeCache(DATA_CACHE_BYTES)
