"""What a client needs every round, built once per (run, node) in a process and reused.

Flower calls the ClientApp many times per process (a simulation process serves many
nodes), so the settings, the node's data and the model skeleton are cached here rather
than rebuilt on every message. Nothing learned lives here: the shared state arrives in
each message and a node's personal state lives in ``context.state``.
"""

from __future__ import annotations

import dataclasses
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
    return _build_runtime(
        tuple(sorted(context.run_config.items())),
        int(node["partition-id"]),
        int(node["num-partitions"]),
        str(node.get("data-path", "")),
    )


@lru_cache(maxsize=512)
def _build_runtime(
    run_config: tuple[tuple[str, object], ...],
    partition_id: int,
    num_partitions: int,
    node_data_path: str,
) -> ClientRuntime:
    settings = parse_settings(dict(run_config))
    if node_data_path:  # a SuperNode's own data overrides the run's default path
        settings = dataclasses.replace(settings, data_path=node_data_path)
    device = select_device(settings.device)
    data = load_client_data(settings, partition_id, num_partitions)
    x, y, _, _ = tensors_of(data, settings.task, device)
    return ClientRuntime(
        settings=settings,
        partition_id=partition_id,
        num_partitions=num_partitions,
        device=device,
        model=model_for(settings),
        data=data,
        train_tensors=(x, y),
    )
