"""Send a round's messages and collect the replies, sized for Flower's in-memory simulation.

On the Simulation Engine the ServerApp talks to an in-memory LinkState, and Flower's
message pump polls it node by node: every 0.1 s it asks each registered node for one
pending message, and each ask scans every stored message (Flower 1.42,
``vce_api.add_messages_to_queue`` -> ``InMemoryLinkState.get_message_ins``). A sweep
therefore costs (registered nodes) x (messages in the store), all under the GIL of the
process that also runs the ServerApp and feeds the Ray actors. With 1,000 nodes and
1,000 pushed messages (node discovery, a final round that scores everyone) a single
sweep took seconds.

:func:`send_and_receive` keeps at most ``max_in_flight`` messages in the store (a
sliding window: a reply pulled makes room for the next message) and checks for replies
every ``poll_interval`` s instead of Flower's 0.1 s. The clients do the same work; only
how many messages wait at once changes.

On the Deployment Engine (``HttpGrid``: the ServerApp talks to a SuperLink serving real
SuperNodes) every message is pushed at once, since every node works in parallel and nothing
scans per node, but replies are pulled every ``DEPLOYMENT_POLL_INTERVAL`` s instead of
``HttpGrid.send_and_receive``'s fixed 3 s, which added up to 3 s to each message trip,
twice a round. Any other ``Grid`` (:class:`simulations.loop.LoopGrid`) is handed the whole
list, as before.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable
from itertools import islice
from typing import Literal

from flwr.app import Message
from flwr.serverapp import Grid

from common.fingerprint import CodeMismatch

try:  # Flower's simulation and deployment grids
    from flwr.superlink.grid import HttpGrid, InMemoryGrid
except ImportError:  # pragma: no cover
    HttpGrid = InMemoryGrid = None  # type: ignore[assignment,misc]

FLOWER_DELIVERY_ENV = "FEDMETA_FLOWER_DELIVERY"  # =1: Grid.send_and_receive as Flower has it
POLL_INTERVAL = 0.01  # s; a pull scans only the messages in flight, so it is cheap
DEPLOYMENT_POLL_INTERVAL = 0.1  # s; one small request to the SuperLink per pull


def in_flight_limit(grid: Grid) -> int | None:
    """How many messages to keep pending at once on ``grid`` (None: no limit).

    Enough to keep every Ray actor busy between two sweeps of Flower's pump (one actor per
    core at client-resources-num-cpus=1), few enough that a sweep stays cheap.
    """
    if InMemoryGrid is None or not isinstance(grid, InMemoryGrid):
        return None
    if os.environ.get(FLOWER_DELIVERY_ENV) == "1":  # the benchmark's before/after switch
        return None
    return max(32, 16 * (os.cpu_count() or 1))


def send_and_receive(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout: float,
    max_in_flight: int | None | Literal["auto"] = "auto",
) -> list[Message]:
    """Replies to ``messages`` (in arrival order) received within ``timeout`` seconds.

    A node whose worker refused a message because it imported other code than this
    ServerApp (common/fingerprint.py) stops the run: :class:`CodeMismatch`, naming it.
    """
    replies = _exchange(grid, messages, timeout=timeout, max_in_flight=max_in_flight)
    for reply in replies:
        if not isinstance(reply, Message) or not reply.has_error():
            continue
        if found := _MISMATCH.search(reply.error.reason or ""):
            raise CodeMismatch(found.group(0))
    return replies


_MISMATCH = re.compile(r"code mismatch on machine .*?local edits\)")  # check_code's words


def _exchange(
    grid: Grid,
    messages: Iterable[Message],
    *,
    timeout: float,
    max_in_flight: int | None | Literal["auto"] = "auto",
) -> list[Message]:
    """Replies to ``messages`` (in arrival order) received within ``timeout`` seconds.

    Like ``Grid.send_and_receive``; with a ``max_in_flight`` (by default
    :func:`in_flight_limit` of the grid) the messages are pushed in a sliding window.
    Messages not yet pushed when the timeout expires are not sent, so their nodes report
    nothing, exactly like nodes that did not answer in time.
    """
    messages = list(messages)
    if max_in_flight == "auto":
        max_in_flight = in_flight_limit(grid)
    deployment = (
        HttpGrid is not None
        and isinstance(grid, HttpGrid)
        and os.environ.get(FLOWER_DELIVERY_ENV) != "1"
    )
    if max_in_flight is None and not deployment:
        return list(grid.send_and_receive(messages, timeout=timeout))
    window = len(messages) if max_in_flight is None else max_in_flight
    poll_interval = DEPLOYMENT_POLL_INTERVAL if deployment else POLL_INTERVAL
    deadline = time.monotonic() + timeout
    queue = iter(messages)
    in_flight: set[str] = set()
    replies: list[Message] = []
    while True:
        in_flight.update(grid.push_messages(list(islice(queue, window - len(in_flight)))))
        if not in_flight or time.monotonic() > deadline:
            return replies
        got = list(grid.pull_messages(in_flight))
        replies += got
        in_flight.difference_update(m.metadata.reply_to_message_id for m in got)
        if not got:
            time.sleep(poll_interval)
