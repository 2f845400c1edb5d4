"""The same federation in one plain Python loop, without Flower's engine.

:class:`LoopGrid` is a ``Grid`` that delivers each message by calling the real ClientApp
in this process, one node after another. ``server.app.run_federation`` drives it exactly
as it drives the Simulation Engine, so the two differ only in transport and scheduling.
Uses: fast hyperparameter sweeps, and the baseline of the throughput benchmark (the
ratio engine time / loop time is the engine's overhead on our client work).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from common.config import Settings, parse_settings

SERVER_NODE_ID = 0


class LoopGrid(Grid):
    """Nodes 1..N serving partitions 0..N-1, each with its own persistent context.state."""

    def __init__(
        self, client_app: ClientApp, run_config: Mapping[str, Any], num_nodes: int,
        torch_threads: int = 0,
    ) -> None:  # fmt: skip
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, SERVER_NODE_ID, 0
        self.client_app = client_app
        self.contexts = {
            i + 1: Context(
                run_id=1,
                node_id=i + 1,
                # torch-threads 0: the ClientApp keeps the thread count run_in_loop set
                node_config={
                    "partition-id": i,
                    "num-partitions": num_nodes,
                    "torch-threads": torch_threads,
                },
                state=RecordDict(),
                run_config=dict(run_config),
            )
            for i in range(num_nodes)
        }

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return [self._deliver(m) for m in messages]

    def _deliver(self, msg: Message) -> Message:
        msg.content = _own_configs(msg.content)
        try:
            return self.client_app(msg, self.contexts[msg.metadata.dst_node_id])
        except Exception as err:  # reported as Flower reports a failed ClientApp
            return Message(Error(code=0, reason=f"{type(err).__name__}: {err}"), reply_to=msg)

    # The rest of Grid's interface is not needed by run_federation.
    def set_run(self, run: Any) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def run(self) -> Any:  # pragma: no cover
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:  # pragma: no cover
        raise NotImplementedError

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # pragma: no cover
        raise NotImplementedError

    def get_nodes(self) -> Iterable[Any]:  # pragma: no cover
        raise NotImplementedError


def _own_configs(content: RecordDict) -> RecordDict:
    """``content`` with its own copies of the (small) config records.

    Over a network every node receives its own copy of a message. Flower's SecAgg+ workflow
    sends one RecordDict object to all nodes and ``secaggplus_mod`` pops keys from its
    config record, so in one process the second node would find them gone. Arrays are only
    read by the handlers and stay shared."""
    own = RecordDict({**content.array_records, **content.metric_records})
    for name, record in content.config_records.items():
        own[name] = ConfigRecord(dict(record))
    return own


def run_in_loop(
    run_config: Mapping[str, Any], num_nodes: int, torch_threads: int | None = 1
) -> dict[str, float]:
    """Run the whole federation in this process; returns the server's summary.

    ``torch_threads`` (default 1) is what a Simulation Engine actor gets: Ray sets
    ``OMP_NUM_THREADS`` to the actor's ``client-resources-num-cpus``. On small models a
    thread pool only adds hand-offs: on this project's shared 2-core machine the default
    two threads made a sinusoid round 10-16x slower. ``None`` keeps torch's setting.
    """
    from client.app import app as client_app
    from server.app import run_federation

    settings: Settings = parse_settings(run_config)
    previous = torch.get_num_threads()
    if torch_threads is not None:
        torch.set_num_threads(torch_threads)
    try:
        grid = LoopGrid(client_app, run_config, num_nodes, torch_threads=torch_threads or 0)
        return run_federation(settings, grid)
    finally:
        torch.set_num_threads(previous)
