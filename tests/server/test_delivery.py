"""The windowed send of server/delivery.py: every message answered, never too many pending."""

from __future__ import annotations

from collections.abc import Iterable

import pytest
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from server import delivery
from server.delivery import send_and_receive
from simulations.loop import LoopGrid


class SlowGrid:
    """Answers each pushed message on the second pull after it was pushed."""

    def __init__(self, answer: bool = True) -> None:
        self.pending: dict[str, tuple[Message, int]] = {}
        self.max_pending = 0
        self.pushed = 0
        self.answer = answer

    def push_messages(self, messages: Iterable[Message]) -> list[str]:
        ids = []
        for m in messages:
            self.pushed += 1
            m.metadata.__dict__["_message_id"] = f"m{self.pushed}"
            self.pending[m.metadata.message_id] = (m, 0)
            ids.append(m.metadata.message_id)
        self.max_pending = max(self.max_pending, len(self.pending))
        return ids

    def pull_messages(self, ids: Iterable[str]) -> list[Message]:
        out = []
        for i in list(ids):
            msg, pulls = self.pending[i]
            if pulls >= 1 and self.answer:
                reply = Message(RecordDict({"m": MetricRecord({"i": int(i[1:])})}), reply_to=msg)
                out.append(reply)
                del self.pending[i]
            else:
                self.pending[i] = (msg, pulls + 1)
        return out


def _messages(n: int) -> list[Message]:
    return [
        Message(RecordDict(), dst_node_id=k + 1, message_type=MessageType.QUERY) for k in range(n)
    ]


@pytest.fixture(autouse=True)
def _server_identity_and_no_sleep(monkeypatch):
    LoopGrid(ClientApp(), {}, 0)  # sets the ServerApp's task identity that Message needs
    monkeypatch.setattr(delivery, "POLL_INTERVAL", 0.0)


def test_window_keeps_at_most_max_in_flight_pending_and_answers_all():
    grid = SlowGrid()
    replies = send_and_receive(grid, _messages(50), timeout=10, max_in_flight=8)  # type: ignore[arg-type]
    assert sorted(r.content["m"]["i"] for r in replies) == list(range(1, 51))
    assert grid.max_pending == 8


def test_timeout_returns_what_arrived_and_sends_no_more():
    grid = SlowGrid(answer=False)
    assert send_and_receive(grid, _messages(20), timeout=0.05, max_in_flight=4) == []  # type: ignore[arg-type]
    assert grid.pushed == 4


def test_other_grids_get_the_whole_list_as_before():
    class Echo(SlowGrid):
        def send_and_receive(self, messages, *, timeout=None):
            return [m.metadata.dst_node_id for m in messages]

    grid = Echo()
    assert delivery.in_flight_limit(grid) is None  # type: ignore[arg-type]
    assert send_and_receive(grid, _messages(3), timeout=1) == [1, 2, 3]  # type: ignore[arg-type]
    assert grid.pushed == 0


class DeploymentGrid(SlowGrid, delivery.HttpGrid):
    """A stand-in for the Deployment Engine's grid (HttpGrid, whose own loop sleeps 3 s)."""

    def __init__(self) -> None:  # no SuperLink behind it
        SlowGrid.__init__(self)

    def send_and_receive(self, messages, *, timeout=None):
        raise AssertionError("HttpGrid.send_and_receive waits 3 s between pulls")


def test_the_deployment_grid_gets_every_message_at_once_and_short_pulls(monkeypatch):
    monkeypatch.setattr(delivery, "DEPLOYMENT_POLL_INTERVAL", 0.0)
    grid = DeploymentGrid()
    replies = send_and_receive(grid, _messages(5), timeout=10)  # type: ignore[arg-type]
    assert sorted(r.content["m"]["i"] for r in replies) == [1, 2, 3, 4, 5]
    assert grid.max_pending == 5  # no window: every node works in parallel


def test_flowers_own_delivery_stays_reachable_on_the_deployment_grid(monkeypatch):
    monkeypatch.setenv(delivery.FLOWER_DELIVERY_ENV, "1")
    with pytest.raises(AssertionError, match="waits 3 s"):
        send_and_receive(DeploymentGrid(), _messages(2), timeout=1)  # type: ignore[arg-type]
