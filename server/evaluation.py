"""Evaluation rounds, server side: read each node's per-client scores, summarise them.

A node answers an evaluate message with one row of scores per client it was asked for
(client/app.py): the loss and metric before and after adapting on the client's own train
split, scored on its test split. The server keeps them per client (clients.jsonl) and
summarises them across clients: mean, std and the worst 10%, before and after; a client
whose personalisation diverged is counted and left out of the "after" statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Message, MetricRecord, RecordDict

from common.arrays import UpdateRejected
from common.config import Task
from common.messages import LOSS_AFTER, LOSS_BEFORE, NUM_EXAMPLES, PARTITION_ID, SKIPPED, read_reply
from server.collect import Drops
from server.divergence import DIVERGED_LOSS_FACTOR


@dataclass(frozen=True)
class ClientStats:
    """Distribution of a per-client score across the clients of one round."""

    mean: float
    std: float
    worst10: float  # mean over the worst 10% of clients (at least one)
    count: int


def client_stats(values: Sequence[float], higher_is_better: bool) -> ClientStats:
    if not values:
        raise ValueError("no client values to summarise")
    arr = np.sort(np.asarray(values, np.float64))
    if higher_is_better:  # worst = lowest accuracy
        worst = arr[: max(1, int(np.ceil(0.1 * arr.size)))]
    else:  # worst = highest error
        worst = arr[::-1][: max(1, int(np.ceil(0.1 * arr.size)))]
    return ClientStats(float(arr.mean()), float(arr.std()), float(worst.mean()), int(arr.size))


def diverged_clients(before: Sequence[float], after: Sequence[float]) -> list[bool]:
    """Per client, whether its personalisation diverged (see DIVERGED_LOSS_FACTOR). Such a
    client is counted, and left out of the across-client statistics after adapting."""
    b, a = np.asarray(before, np.float64), np.asarray(after, np.float64)
    # comparisons with NaN and inf raise no floating-point warning: no errstate needed
    exploded = np.isfinite(b) & (a > DIVERGED_LOSS_FACTOR * np.maximum(b, 1e-12))
    return [bool(x) for x in ~np.isfinite(a) | exploded]


def evaluation_rows(
    content: RecordDict, asked: Sequence[int]
) -> tuple[list[dict[str, float]], dict[int, str]]:
    """One row of scores per evaluated client of a node's reply, and the clients dropped."""
    reply = read_reply(content, asked)
    columns = {  # the scores and the bookkeeping the summary needs (PARTITION_ID, sizes)
        k: v
        for k, v in reply.metrics.items()
        if k != SKIPPED and isinstance(v, list) and len(v) == reply.size
    }
    rows, dropped = [], reply.dropped
    for j, pid in reply.rows:
        if LOSS_BEFORE not in columns or LOSS_AFTER not in columns:
            dropped[pid] = f"no '{LOSS_BEFORE}'/'{LOSS_AFTER}' scores"
            continue
        rows.append({k: float(v[j]) for k, v in columns.items()})  # type: ignore[arg-type,index]
    return rows, dropped


def summarise_evaluation(rows: list[dict[str, float]], task: Task) -> MetricRecord:
    """Mean, std and worst-10% mean across clients, before and after personalisation.

    Regression reports MSE (the loss); classification reports accuracy and loss, and the
    accuracy pooled over every test sample (``acc-*-pooled``) where each row has its
    ``num-examples`` (test size).
    """
    names = {"mse": ("loss", False)} if task is Task.REGRESSION else {
        "acc": ("acc", True), "loss": ("loss", False)
    }  # fmt: skip
    out: dict[str, float] = {"clients": len(rows)}
    # A client whose personalisation diverged (diverged_clients: loss
    # non-finite or over 10x its loss before) is counted here and left out of the "after"
    # statistics, which would otherwise read NaN or 1e31 as if measured.
    bad = diverged_clients([r[LOSS_BEFORE] for r in rows], [r[LOSS_AFTER] for r in rows])
    out["diverged-after"] = sum(bad)
    kept = [r for r, b in zip(rows, bad, strict=True) if not b]
    for when, scored in (("before", rows), ("after", kept)):
        if not scored:  # every client diverged: nothing measured after adapting
            continue
        for name, (key, higher_is_better) in names.items():
            stats = client_stats([r[f"{key}-{when}"] for r in scored], higher_is_better)
            out |= {
                f"{name}-{when}-mean": stats.mean,
                f"{name}-{when}-std": stats.std,
                f"{name}-{when}-worst10": stats.worst10,
            }
        if task is not Task.REGRESSION and all(r.get(NUM_EXAMPLES, 0) > 0 for r in scored):
            # Accuracy over all clients' test samples pooled (each client weighted by its
            # test size): what LEAF, Per-FedAvg and pFedMe report, beside the mean above.
            sizes = np.array([r[NUM_EXAMPLES] for r in scored], dtype=np.float64)
            acc = np.array([r[f"acc-{when}"] for r in scored], dtype=np.float64)
            out[f"acc-{when}-pooled"] = float(acc @ sizes / sizes.sum())
    return MetricRecord(out)


@dataclass(frozen=True)
class Evaluation:
    """What one evaluation round gave: the summary (None: no client scored), the per-client
    rows for clients.jsonl, and the clients dropped and why."""

    metrics: MetricRecord | None
    clients: list[dict[str, float]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def collect_evaluation(
    replies: Iterable[Message], asked: dict[int, list[int]], task: Task
) -> Evaluation:
    """Screen an evaluation round's replies into per-client rows, in partition order."""
    drops, rows = Drops(asked, "evaluate"), []
    for msg in drops.with_silent_nodes(replies):
        node = msg.metadata.src_node_id
        if msg.has_error():
            drops.node(node, f"error reply to evaluate: {msg.error.reason}")
            continue
        try:
            good, dropped = evaluation_rows(msg.content, asked.get(node, []))
        except UpdateRejected as err:
            drops.node(node, f"evaluation reply: {err}")
            continue
        rows += good
        for pid, reason in sorted(dropped.items()):
            drops.client(node, pid, f"evaluation: {reason}")
    rows.sort(key=lambda r: r[PARTITION_ID])
    return Evaluation(summarise_evaluation(rows, task) if rows else None, rows, drops.reasons)
