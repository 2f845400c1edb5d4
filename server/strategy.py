"""A thin Flower strategy: sample clients reproducibly, screen every reply before it touches
theta, aggregate with server/aggregate.py, and summarise per-client evaluation.

A reply that errored, was skipped by its client (too little data), lacks the expected
records, or whose update differs from theta in keys, shapes or dtypes or holds a
non-finite value is dropped with a logged reason; the round goes on with the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from logging import WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from common.arrays import UpdateRejected, check_update, from_record, to_record
from common.config import Settings, Task
from server.aggregate import (
    OptimizerConfig,
    OptimizerState,
    client_stats,
    server_step,
    weighted_mean,
)
from server.nodes import NodeDirectory

NON_METRICS = ("num-examples", "skipped", "partition-id")


def screen_update(content: RecordDict, reference: Mapping[str, np.ndarray]) -> tuple[dict, float]:
    """(update, weight) of a train reply, or :class:`UpdateRejected` saying what is wrong."""
    metrics = content.metric_records.get("metrics")
    if metrics is None:
        raise UpdateRejected("reply has no 'metrics' MetricRecord")
    if metrics.get("skipped", 0):
        skip = content.config_records.get("skip")
        raise UpdateRejected(f"client skipped: {skip['reason'] if skip else 'no reason given'}")
    record = content.array_records.get("arrays")
    if record is None:
        raise UpdateRejected("reply has no 'arrays' ArrayRecord")
    weight = metrics.get("num-examples")
    if not isinstance(weight, int | float) or not np.isfinite(weight) or weight <= 0:
        raise UpdateRejected(f"'num-examples' must be a positive number, got {weight!r}")
    update = from_record(record)
    check_update(update, reference)
    return update, float(weight)


@dataclass
class RoundReport:
    """What happened to the replies of one round, for the run log."""

    accepted: int = 0
    dropped: list[str] = field(default_factory=list)
    eval_clients: list[dict[str, float]] = field(default_factory=list)


class MetaStrategy(FedAvg):
    def __init__(
        self,
        settings: Settings,
        nodes: NodeDirectory,
        optimizer: OptimizerConfig,
        optimizer_state: OptimizerState | None = None,
    ) -> None:
        super().__init__(
            fraction_train=settings.fraction_train,
            fraction_evaluate=settings.fraction_evaluate,
            min_train_nodes=1,
            min_evaluate_nodes=1,
            min_available_nodes=settings.min_available_nodes,
        )
        self.settings = settings
        self.nodes = nodes
        self.optimizer = optimizer
        self.optimizer_state = optimizer_state or OptimizerState()
        self.current: dict[str, np.ndarray] | None = None
        self.report = RoundReport()

    # ---- sampling -------------------------------------------------------------------
    def _messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, kind: str
    ) -> list[Message]:
        fraction = (
            self.settings.fraction_train
            if kind == MessageType.TRAIN
            else 1.0
            if config.get("final")
            else self.settings.fraction_evaluate
        )  # fmt: skip  (the final round scores every client, for the summary table)
        purpose = 0 if kind == MessageType.TRAIN else 1
        node_ids = self.nodes.sample(fraction, self.settings.seed, server_round, purpose)
        config["server-round"] = server_round
        record = RecordDict({"arrays": arrays, "config": config})
        return [Message(content=record, dst_node_id=n, message_type=kind) for n in node_ids]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.current = from_record(arrays)
        self.report = RoundReport()
        return self._messages(server_round, arrays, config, MessageType.TRAIN)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self._messages(server_round, arrays, config, MessageType.EVALUATE)

    # ---- aggregation ----------------------------------------------------------------
    def _drop(self, msg: Message, reason: str) -> None:
        node = msg.metadata.src_node_id
        text = f"node {node} (partition {self.nodes.partition_of(node)}): {reason}"
        log(WARNING, "dropped reply from %s", text)
        self.report.dropped.append(text)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.current is None:
            raise RuntimeError("aggregate_train called before configure_train")
        updates, weights, metrics = [], [], []
        # Aggregate in partition order, not arrival order: floating-point sums then do not
        # depend on which client answered first, and a rerun reproduces theta bit for bit.
        for msg in sorted(replies, key=self._partition_order):
            if msg.has_error():
                self._drop(msg, f"error reply: {msg.error.reason}")
                continue
            try:
                update, weight = screen_update(msg.content, self.current)
            except UpdateRejected as err:
                self._drop(msg, str(err))
                continue
            updates.append(update)
            weights.append(weight)
            metrics.append(msg.content["metrics"])
        self.report.accepted = len(updates)
        if not updates:
            log(WARNING, "round %d: no valid update; theta unchanged", server_round)
            return None, None
        delta = weighted_mean(updates, weights)
        new_state, self.optimizer_state = server_step(
            self.current, delta, self.optimizer, self.optimizer_state
        )
        return to_record(new_state), _weighted_metrics(metrics, weights)

    def _partition_order(self, msg: Message) -> tuple[int, int]:
        node = msg.metadata.src_node_id
        partition = self.nodes.partition_of(node)
        return (partition if partition is not None else 1 << 62, node)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        rows = []
        for msg in replies:
            if msg.has_error():
                self._drop(msg, f"error reply to evaluate: {msg.error.reason}")
                continue
            metrics = msg.content.metric_records.get("metrics")
            if metrics is None or metrics.get("skipped", 0):
                self._drop(msg, "evaluation skipped by client (too little data)")
                continue
            rows.append({k: float(v) for k, v in metrics.items()})  # type: ignore[arg-type]
        self.report.eval_clients = rows
        return summarise_evaluation(rows, self.settings.task) if rows else None


def _weighted_metrics(records: list[MetricRecord], weights: list[float]) -> MetricRecord:
    total = sum(weights)
    keys = [k for k in records[0] if k not in NON_METRICS]
    out = {
        k: sum(float(r[k]) * w / total for r, w in zip(records, weights, strict=True)) for k in keys
    }  # type: ignore[arg-type]
    return MetricRecord({**out, "clients": len(records)})


def summarise_evaluation(rows: list[dict[str, float]], task: Task) -> MetricRecord:
    """Mean, std and worst-10% mean across clients, before and after personalisation.

    Regression reports MSE (the loss); classification reports accuracy and loss.
    """
    names = {"mse": ("loss", False)} if task is Task.REGRESSION else {
        "acc": ("acc", True), "loss": ("loss", False)
    }  # fmt: skip
    out: dict[str, float] = {"clients": len(rows)}
    # A personalisation that diverged (NaN/inf) stays in the statistics, which then read
    # NaN/inf instead of flattering the mean; this count says how many clients did.
    out["diverged-after"] = sum(not np.isfinite(r["loss-after"]) for r in rows)
    for name, (key, higher_is_better) in names.items():
        for when in ("before", "after"):
            stats = client_stats([r[f"{key}-{when}"] for r in rows], higher_is_better)
            out |= {
                f"{name}-{when}-mean": stats.mean,
                f"{name}-{when}-std": stats.std,
                f"{name}-{when}-worst10": stats.worst10,
            }
    return MetricRecord(out)
