"""Talk to one node's real ClientApp the way the server does, and read its reply.

Tests that pin what a reply *contains* (its example counts, its scores, its updates) send
one message straight to a node of a :class:`simulations.loop.LoopGrid` instead of running
a whole federation, so each one runs in well under a second and its expectation can be
computed by hand from the message that was sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from flwr.app import Message, MessageType

from client.app import app as client_app
from common import messages
from common.arrays import from_record, to_record
from simulations.loop import LoopGrid


def node_grid(run_config: Mapping[str, Any], num_nodes: int) -> LoopGrid:
    return LoopGrid(client_app, dict(run_config), num_nodes)


def ask(
    grid: LoopGrid,
    node_id: int,
    kind: str,
    state: Mapping[str, np.ndarray],
    server_round: int = 1,
    clients: list[int] | None = None,
) -> Message:
    """Send ``state`` to node ``node_id`` (1-based) as a train or evaluate message; with
    ``clients`` None the node is asked for every client it hosts."""
    hosted = grid.contexts[node_id].node_config  # partition-id i of n nodes
    if clients is None:
        per_node = int(grid.contexts[node_id].run_config.get("clients-per-node", 1))
        first = int(hosted["partition-id"]) * per_node
        clients = list(range(first, first + per_node))
    content = messages.write_instruction(to_record(dict(state)), server_round, clients)
    msg = Message(content=content, dst_node_id=node_id, message_type=kind)
    (reply,) = grid.send_and_receive([msg])
    if reply.has_error():
        raise AssertionError(f"node {node_id} failed: {reply.error.reason}")
    return reply


def train(grid: LoopGrid, node_id: int, state: Mapping[str, np.ndarray], **kw: Any) -> Message:
    return ask(grid, node_id, MessageType.TRAIN, state, **kw)


def evaluate(grid: LoopGrid, node_id: int, state: Mapping[str, np.ndarray], **kw: Any) -> Message:
    return ask(grid, node_id, MessageType.EVALUATE, state, **kw)


def metric(reply: Message, key: str) -> list:
    """One per-client column of a reply's metrics (a list, in the reply's client order)."""
    value = reply.content.metric_records[messages.METRICS][key]
    return list(value) if isinstance(value, list) else [value]


def updates(reply: Message) -> dict[str, np.ndarray]:
    """The stacked per-client updates of a train reply (its one ArrayRecord)."""
    return from_record(messages.reply_updates(reply.content))
