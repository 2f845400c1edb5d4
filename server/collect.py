"""Collect, the first stage of a training round (server/round.py): what the clients sent,
screened, as values the combine stage can trust.

Two collectors, chosen once at start-up:

* :func:`collect_rows`: plain replies, one per node, screened into one
  :class:`ClientUpdate` per accepted client. A node hosts one or many clients and answers
  for all of its sampled clients in one reply (client/app.py): per-client lists in its
  ``metrics`` and every client's update stacked on a leading axis of its ``updates``
  ArrayRecord. A reply that errored or is malformed as a whole (missing records, keys,
  shapes or dtypes that differ from theta) drops every client it answers for; within a
  well-formed reply, a client that was skipped (too little data), that the server did not
  ask for, that claims a number of examples that is not a whole number in
  [1, MAX_CLAIMED_EXAMPLES], or whose update holds a non-finite value is dropped alone.
* :func:`collect_secure_sum`: a SecAgg+ round (server/secagg.py). The server learns only
  the sum of the clipped updates, the number of clients in it and each node's drops.

Every dropped client is logged with its reason and listed in the round's report.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore import log

from common.arrays import NamedArrays, UpdateRejected, check_stacked, from_record, nonfinite_rows
from common.dp_mechanism import DistributedNoise
from common.messages import NUM_EXAMPLES, read_reply, reply_updates
from server.divergence import federation_failed
from server.secagg import SecAggConfig, SecureSum, node_drops, secure_sum

# The largest example count a client may claim: every integer up to 2**53 is exact in the
# float64 weights, and no client holds more. A claim above it is a lie or a bug, dropped.
MAX_CLAIMED_EXAMPLES = 2**53


@dataclass(frozen=True)
class ClientUpdate:
    partition: int
    update: dict[str, np.ndarray]
    weight: float
    metrics: dict[str, float]


@dataclass(frozen=True)
class Rows:
    """The accepted client updates of a round, in partition order (floating-point sums then
    do not depend on which node answered first: a rerun reproduces theta bit for bit)."""

    updates: list[ClientUpdate]
    asked: int  # clients the round asked
    dropped: list[str] = field(default_factory=list)
    every_reply_failed: bool = False  # replies came and every one was an error
    failed: bool = False  # clients were asked and no node answered, or every one erred


@dataclass
class Drops:
    """The clients a round dropped, each logged with its reason as it is found."""

    asked: Mapping[int, Sequence[int]]  # node id -> partitions asked of it
    kind: str  # "train" or "evaluate", for the message of a silent node
    reasons: list[str] = field(default_factory=list)

    def client(self, node: int, partition: int | None, reason: str) -> None:
        who = f"partition {partition} (node {node})" if partition is not None else f"node {node}"
        log(WARNING, "dropped %s: %s", who, reason)
        self.reasons.append(f"{who}: {reason}")

    def node(self, node: int, reason: str) -> None:
        """Every client asked of ``node`` (or the node itself when it was asked for none)."""
        for pid in self.asked.get(node, []) or [None]:
            self.client(node, pid, reason)

    def with_silent_nodes(self, replies: Iterable[Message]) -> list[Message]:
        """The replies; each asked node that sent none has its clients dropped by name."""
        replies = list(replies)
        answered = {m.metadata.src_node_id for m in replies}
        for node, partitions in self.asked.items():
            if node not in answered:
                for pid in partitions:
                    self.client(node, pid, f"no {self.kind} reply within round-timeout")
        return replies


def collect_rows(
    replies: Iterable[Message], asked: Mapping[int, Sequence[int]], theta: NamedArrays
) -> Rows:
    """Screen a round's train replies (the nodes in ``asked``) into accepted updates."""
    drops, accepted = Drops(asked, "train"), []
    replies = drops.with_silent_nodes(replies)
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            drops.node(node, f"error reply: {msg.error.reason}")
            continue
        try:
            good, dropped = screen_train_reply(msg.content, theta, asked.get(node, []))
        except UpdateRejected as err:
            drops.node(node, str(err))
            continue
        accepted += good
        for pid, reason in sorted(dropped.items()):
            drops.client(node, pid, reason)
    accepted.sort(key=lambda c: c.partition)
    n_asked = sum(len(p) for p in asked.values())
    errors = [m.has_error() for m in replies]
    return Rows(
        accepted,
        n_asked,
        drops.reasons,
        bool(errors) and all(errors),
        federation_failed(replies, n_asked),
    )


def screen_train_reply(
    content: RecordDict, reference: Mapping[str, np.ndarray], asked: Sequence[int]
) -> tuple[list[ClientUpdate], dict[int, str]]:
    """Accepted client updates of one node's reply, and partition -> reason for the rest.

    Raises :class:`UpdateRejected` when the reply as a whole cannot be read.
    """
    reply = read_reply(content, asked)
    size, dropped = reply.size, reply.dropped
    stacked = from_record(reply_updates(content))
    check_stacked(stacked, reference, size)
    examples = reply.column(NUM_EXAMPLES)
    bad_rows = nonfinite_rows(stacked, size)
    extra = reply.metric_columns()
    accepted = []
    for j, pid in reply.rows:
        weight = claimed_examples(examples[j])
        if isinstance(weight, str):
            dropped[pid] = weight
            continue
        if j in bad_rows:
            dropped[pid] = f"'{bad_rows[j]}' contains NaN or infinite values"
            continue
        update = {k: v[j] for k, v in stacked.items()}
        values = {k: float(v[j]) for k, v in extra.items()}
        accepted.append(ClientUpdate(pid, update, float(weight), values))
    return accepted, dropped


def claimed_examples(value: object) -> float | str:
    """A client's claimed num-examples as a weight, or why it is refused.

    A whole number in [1, MAX_CLAIMED_EXAMPLES]; Python ints of any size are compared as
    ints (NumPy cannot hold 10**20 and would raise), floats must be finite and whole."""
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok and isinstance(value, float):
        ok = math.isfinite(value) and value.is_integer()
    if not ok or not 1 <= value <= MAX_CLAIMED_EXAMPLES:  # type: ignore[operator]
        shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:40] + "..."
        return (
            f"'{NUM_EXAMPLES}' must be a whole number in [1, {MAX_CLAIMED_EXAMPLES}], got {shown}"
        )
    return float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Secured:
    """A SecAgg+ round's sum (None: the protocol halted) and the clients it dropped."""

    result: SecureSum | None
    asked: int
    dropped: list[str]


def collect_secure_sum(
    grid: Grid, cfg: SecAggConfig, server_round: int, theta: NamedArrays,
    asked: Mapping[int, list[int]], clip: float, noise: DistributedNoise | None = None,
    sample_rate: float = 1.0,
) -> Secured:  # fmt: skip
    """One SecAgg+ run over every node in ``asked``. With ``noise`` (distributed DP) each
    node samples its own clients and noises its sum, so drops are named per node."""
    drops = Drops(asked, "train")
    result = secure_sum(grid, cfg, server_round, theta, dict(asked), clip, noise, sample_rate)
    n_asked = sum(len(p) for p in asked.values())
    if result is None:
        halted = "SecAgg+ halted: too few nodes completed a stage"
        for node, partitions in asked.items():  # distributed DP: who was sampled is unknown
            for pid in [None] if noise is not None else partitions:
                drops.client(node, pid, halted)
        return Secured(None, n_asked, drops.reasons)
    for node, partitions in asked.items():
        if noise is not None:
            if node not in result.node_metrics:
                missing = "no masked vector from this node: its noise share is missing"
                drops.client(node, None, missing)
            continue
        node_dropped = node_drops(result.node_metrics.get(node, {}))
        for pid in partitions:
            if node not in result.node_metrics:
                drops.client(node, pid, "no masked vector from its node in SecAgg+")
            elif pid in node_dropped:
                drops.client(node, pid, node_dropped[pid])
    return Secured(result, n_asked, drops.reasons)
