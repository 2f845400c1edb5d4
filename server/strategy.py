"""A thin Flower strategy: sample clients reproducibly, screen every client's update before it
touches theta, aggregate the accepted ones with the configured rule (server/robust.py: the
weighted mean by default, or a Byzantine-robust rule), step theta with the server optimizer
(server/aggregate.py), and summarise per-client evaluation.

A node hosts one or many clients and answers for all of its sampled clients in one reply
(client/app.py): per-client lists in its ``metrics`` and, for training, every client's
update stacked on a leading axis of its ``updates`` ArrayRecord. Screening stays per
client: a reply that errored or is malformed as a whole (missing records, keys, shapes or
dtypes that differ from theta) drops every client it answers for; within a well-formed
reply, a client that was skipped (too little data), that the server did not ask for, that
claims a number of examples that is not a whole number in [1, MAX_CLAIMED_EXAMPLES], or
whose update holds a non-finite value is dropped alone, with its reason logged, and the
round goes on with the rest. Every accepted client's update norm and weight are logged in
metrics.jsonl (``robust.per-client``), and the round's train metrics are weighted by the same
weights the aggregate uses, so a client that lies about its examples does not set them.

With ``dp`` the accepted (client-clipped) updates are summed, re-clipped where a client did
not clip, noised and divided by the expected cohort (server/privacy.py); with ``secagg``
a training round runs through Flower's SecAgg+ instead (:meth:`MetaStrategy.train_secure`,
server/secagg.py) and the server screens nodes, not single updates (docs/privacy.md).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from logging import DEBUG, WARNING

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from common.arrays import UpdateRejected, check_stacked, from_record, nonfinite_rows, to_record
from common.config import Settings, Task
from common.dp_mechanism import (
    WITHIN_CLIP,
    clip_rows,
    distributed_noise,
    effective_noise_multiplier,
)
from common.messages import (
    FINAL,
    LOSS_AFTER,
    LOSS_BEFORE,
    NUM_EXAMPLES,
    PARTITION_ID,
    SKIPPED,
    SUM_PREFIX,
    read_reply,
    reply_updates,
    write_instruction,
)
from server.aggregate import (
    NamedArrays,
    OptimizerConfig,
    OptimizerState,
    client_stats,
    diverged_clients,
    server_step,
)  # fmt: skip
from server.nodes import NodeDirectory, cohort_size
from server.privacy import (
    NOISE_PURPOSE,
    NOT_PRIVATE,
    DPConfig,
    PrivacyState,
    noise_rng,
    private_mean,
)
from server.robust import Aggregate, RobustConfig, check_round_size, robust_aggregate
from server.secagg import node_drops, quantization_range, secure_sum

# The largest example count a client may claim: every integer up to 2**53 is exact in the
# float64 weights, and no client holds more. A claim above it is a lie or a bug, dropped.
MAX_CLAIMED_EXAMPLES = 2**53
CLIP_TOLERANCE = 1e-5  # relative: a client's clipped float32 row may exceed C by rounding


@dataclass(frozen=True)
class ClientUpdate:
    partition: int
    update: dict[str, np.ndarray]
    weight: float
    metrics: dict[str, float]


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


@dataclass
class RoundReport:
    """What happened to the clients of one round, for the run log."""

    accepted: int | None = 0  # None: hidden (distributed DP's nodes sample their clients)
    dropped: list[str] = field(default_factory=list)
    eval_clients: list[dict[str, float]] = field(default_factory=list)
    robust: dict = field(default_factory=dict)  # what the aggregation rule did, per client
    privacy: dict = field(default_factory=dict)  # the round's DP release / SecAgg+ sum


def robust_log(result: Aggregate, accepted: Sequence[ClientUpdate]) -> dict:
    """metrics.jsonl's view of one round's aggregation: the rule that ran, the norm bound,
    every accepted client's update norm (as sent) and weight (as used), and every client
    whose update was clipped, down-weighted or excluded."""
    out: dict = {"rule": result.rule.value}
    out["per-client"] = [
        {"partition": c.partition, "norm": norm, "weight": weight}
        for c, norm, weight in zip(accepted, result.norms, result.weights, strict=True)
    ]
    if result.bound is not None:
        out["bound"] = result.bound
    if result.note:
        out["note"] = result.note
    out["clients"] = [
        {"partition": accepted[a.index].partition, "norm": a.norm, "action": a.action}
        for a in result.actions
    ]
    return out


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
        self.robust = RobustConfig.from_settings(settings)
        self.dp = DPConfig.from_settings(settings) if settings.dp else None
        self.privacy: PrivacyState | None = None  # set by the ServerApp when dp is on
        self.distributed = settings.dp and settings.dp_mechanism == "distributed"
        self.current: dict[str, np.ndarray] | None = None
        self.report = RoundReport()
        self.asked: dict[int, list[int]] = {}  # node id -> partitions asked this round
        self.population = 0  # clients on live nodes when the round's sample was drawn

    # ---- sampling -------------------------------------------------------------------
    def _messages(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, kind: str
    ) -> list[Message]:
        fraction = (
            self.settings.fraction_train
            if kind == MessageType.TRAIN
            else self.settings.final_fraction_evaluate
            if config.get(FINAL)
            else self.settings.fraction_evaluate
        )  # fmt: skip  (the final round scores every client by default, for the summary)
        train = kind == MessageType.TRAIN
        self.sample_clients(server_round, fraction, train)
        if train:  # before anything is sent: a start-up error in round 1
            check_round_size(self.robust, sum(len(p) for p in self.asked.values()))
        clip = self.clip_bound if train else 0.0
        messages = []
        for node, partitions in self.asked.items():
            record = write_instruction(arrays, server_round, partitions, clip=clip, config=config)
            messages.append(Message(content=record, dst_node_id=node, message_type=kind))
        return messages

    def sample_clients(self, server_round: int, fraction: float, train: bool) -> None:
        """Draw the round's clients into ``self.asked`` (node id -> partitions).

        With DP, training clients are Poisson-sampled (the accountant's assumption); with
        SecAgg+ every live node takes part, those without sampled clients with a zero sum,
        so that each round has the two or more nodes the protocol needs. DP's sample is
        drawn from the run's secret noise key, not the seed (server/privacy.py): who took
        part must be as unpredictable as the noise."""
        purpose = 0 if train else 1
        dp = train and self.dp is not None
        key = self.privacy.noise_key if dp and self.privacy is not None else self.settings.seed
        if dp and self.distributed:  # every client is asked; each node samples its own
            fraction, dp = 1.0, False
        self.asked = self.nodes.sample(fraction, key, server_round, purpose, dp)
        self.population = self.nodes.population
        if train and self.settings.secagg:
            live = {node for _, node in self.nodes.live()}
            self.asked = {node: self.asked.get(node, []) for node in sorted(live)}

    @property
    def clip_bound(self) -> float:
        """C of this round: what the clients clip to (0 when neither DP nor SecAgg+ is on)."""
        if self.privacy is not None:
            return self.privacy.clip
        return self.settings.dp_clip if self.settings.secagg else 0.0

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
    def _drop(self, node: int, partition: int | None, reason: str) -> None:
        who = f"partition {partition} (node {node})" if partition is not None else f"node {node}"
        log(WARNING, "dropped %s: %s", who, reason)
        self.report.dropped.append(f"{who}: {reason}")

    def _drop_node(self, msg: Message, reason: str) -> None:
        node = msg.metadata.src_node_id
        for pid in self.asked.get(node, []) or [None]:
            self._drop(node, pid, reason)

    def _with_silent_nodes(self, replies: Iterable[Message], kind: str) -> list[Message]:
        """The replies; each asked node that sent none has its clients dropped by name."""
        replies = list(replies)
        answered = {m.metadata.src_node_id for m in replies}
        for node, partitions in self.asked.items():
            if node not in answered:
                for pid in partitions:
                    self._drop(node, pid, f"no {kind} reply within round-timeout")
        return replies

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if self.current is None:
            raise RuntimeError("aggregate_train called before configure_train")
        accepted: list[ClientUpdate] = []
        replies = self._with_silent_nodes(replies, "train")
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self._drop_node(msg, f"error reply: {msg.error.reason}")
                continue
            try:
                good, dropped = screen_train_reply(
                    msg.content, self.current, self.asked.get(node, [])
                )
            except UpdateRejected as err:
                self._drop_node(msg, str(err))
                continue
            accepted += good
            for pid, reason in sorted(dropped.items()):
                self._drop(node, pid, reason)
        # Aggregate in partition order, not arrival order: floating-point sums then do not
        # depend on which node answered first, and a rerun reproduces theta bit for bit.
        accepted.sort(key=lambda c: c.partition)
        self.report.accepted = len(accepted)
        every_node_failed = bool(replies) and all(m.has_error() for m in replies)
        if self.dp is not None and (accepted or not every_node_failed):
            # DP steps every round, also when no client was sampled or none answered: whether
            # a step happens must not reveal whether someone took part (only errors from
            # every node, a failure of the federation, skip the round).
            rows = [c.update for c in accepted]
            within = [c.metrics.get(WITHIN_CLIP, 0.0) >= 0.5 for c in accepted]
            total, within = self._checked_sum(server_round, accepted, rows, within)
            delta = self.private_delta(server_round, total, sum(w - 0.5 for w in within))
            client_metrics = [
                {k: v for k, v in c.metrics.items() if k != WITHIN_CLIP} for c in accepted
            ]
            metrics = _weighted_metrics(client_metrics, [1.0] * len(accepted)) if accepted else None
            return self.step(delta), metrics
        if not accepted:
            log(WARNING, "round %d: no valid update; theta unchanged", server_round)
            return None, None
        result = self._robust_delta(server_round, accepted)
        new_state, self.optimizer_state = server_step(
            self.current, result.delta, self.optimizer, self.optimizer_state
        )
        metrics = _weighted_metrics([c.metrics for c in accepted], result.weights)
        return to_record(new_state), metrics

    def step(self, delta: NamedArrays) -> ArrayRecord:
        """theta after the server optimizer's step with Delta."""
        if self.current is None:
            raise RuntimeError("step called before configure_train")
        new_state, self.optimizer_state = server_step(
            self.current, delta, self.optimizer, self.optimizer_state
        )
        return to_record(new_state)

    def train_secure(
        self, server_round: int, arrays: ArrayRecord, grid: Grid
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """A training round through SecAgg+ (server/secagg.py): the server learns only the
        sum of the clipped updates, the number of clients in it and the nodes' drops."""
        self.current = from_record(arrays)
        self.report = RoundReport()
        self.sample_clients(server_round, self.settings.fraction_train, train=True)
        clip = self.clip_bound
        if self.distributed:
            return self._train_distributed(server_round, grid)
        result = secure_sum(grid, self.settings, server_round, self.current, self.asked, clip)
        if result is None:
            for node, partitions in self.asked.items():
                for pid in partitions:
                    self._drop(node, pid, "SecAgg+ halted: too few nodes completed a stage")
            return None, None
        for node, partitions in self.asked.items():
            drops = node_drops(result.node_metrics.get(node, {}))
            for pid in partitions:
                if node not in result.node_metrics:
                    self._drop(node, pid, "no masked vector from its node in SecAgg+")
                elif pid in drops:
                    self._drop(node, pid, drops[pid])
        self.report.accepted = result.clients
        self.report.privacy["secagg"] = {
            "nodes": len(result.nodes), "clients": result.clients, "clip": clip,
            "quantization-range": result.quantization_range,
        }  # fmt: skip
        metrics = _node_metric_means(result.node_metrics.values(), result.clients)
        if self.dp is not None:
            return self.step(
                self.private_delta(server_round, result.total, result.within_centered)
            ), metrics
        if result.clients == 0:
            log(WARNING, "round %d: no valid update; theta unchanged", server_round)
            return None, None
        return self.step({k: v / result.clients for k, v in result.total.items()}), metrics

    def _train_distributed(
        self, server_round: int, grid: Grid
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """A SecAgg+ round under distributed DP: every node samples its own clients and adds
        its share of discrete Gaussian noise (client/secagg.py), so the unmasked sum is
        already private and the server adds nothing. It learns neither who took part nor
        any per-client metric; epsilon counts the noise shares of the nodes that answered."""
        assert self.current is not None and self.privacy is not None and self.dp is not None
        expected = cohort_size(self.population, self.settings.fraction_train)
        q = expected / self.population
        dim = sum(int(np.size(v)) for v in self.current.values())
        noise = distributed_noise(
            self.privacy.clip, self.privacy.noise_multiplier, dim, self.population,
            len(self.asked), len(self.asked) - self.settings.dp_tolerated_drops,
            quantization_range(len(self.asked)),
        )  # fmt: skip
        result = secure_sum(
            grid, self.settings, server_round, self.current, self.asked, self.privacy.clip,
            noise, q,
        )  # fmt: skip
        if result is None:
            self._drop_nodes(self.asked, "SecAgg+ halted: too few nodes completed a stage")
            return None, None
        missing = [node for node in self.asked if node not in result.node_metrics]
        self._drop_nodes(missing, "no masked vector from this node: its noise share is missing")
        z = effective_noise_multiplier(noise, len(result.nodes), dim)
        ledger = self.privacy.ledger.add(q, z)
        self.privacy = replace(self.privacy, ledger=ledger)
        self.report.accepted = None  # hidden: the nodes sampled their clients
        epsilon = ledger.epsilon(self.dp.delta, self.dp.accountant)
        self.report.privacy = {
            "mechanism": "distributed", "epsilon": epsilon,
            "accountant": self.dp.accountant, "delta": self.dp.delta, "q": q,
            "expected-clients": expected, "noise-multiplier": self.privacy.noise_multiplier,
            "effective-noise-multiplier": z, "nodes": len(self.asked),
            "nodes-summed": len(result.nodes), "clip": self.privacy.clip,
            "noise-std": noise.granularity * noise.node_std * math.sqrt(len(result.nodes)),
            "granularity": noise.granularity, "modulus": noise.modulus,
            "release": NOT_PRIVATE if self.dp.reproducible else "private",
        }  # fmt: skip
        return self.step({k: v / expected for k, v in result.total.items()}), None

    def _drop_nodes(self, nodes: Iterable[int], reason: str) -> None:
        for node in nodes:
            self._drop(node, None, reason)

    def _checked_sum(
        self, server_round: int, accepted: list[ClientUpdate], rows: list[NamedArrays],
        within: list[bool],
    ) -> tuple[NamedArrays, list[bool]]:  # fmt: skip
        """The sum of the clipped rows. Clients clip on their node; a row still above C (a
        client that did not clip) is clipped here and counted as clipped, and logged."""
        assert self.current is not None
        clip = self.clip_bound
        total = {k: np.zeros(v.shape, np.float64) for k, v in self.current.items()}
        if not rows:
            return total, within
        stacked = {k: np.stack([r[k] for r in rows]) for k in self.current}
        result = clip_rows(stacked, clip)
        for i, norm in enumerate(result.norms):
            if norm > clip * (1 + CLIP_TOLERANCE):
                within[i] = False
                self._server_clipped(
                    server_round, accepted[i].partition,
                    f"update norm {norm:.4g} above dp-clip {clip:.4g}: clipped by the server",
                )  # fmt: skip
        for k, v in result.updates.items():
            total[k] += np.asarray(v, np.float64).sum(axis=0)
        return total, within

    def _server_clipped(self, server_round: int, partition: int, what: str) -> None:
        log(WARNING, "round %d: partition %d: %s", server_round, partition, what)
        self.report.privacy.setdefault("server-clipped", []).append(partition)

    def private_delta(
        self, server_round: int, total: NamedArrays, within_centered: float
    ) -> NamedArrays:
        """DP's noised mean of the round's clipped sum (server/privacy.py); accounts the round."""
        if self.dp is None or self.privacy is None:
            raise RuntimeError("private_delta needs dp = true and a PrivacyState")
        expected = cohort_size(self.population, self.settings.fraction_train)
        q = expected / self.population
        rng = noise_rng(self.privacy.noise_key, server_round, NOISE_PURPOSE)
        release = private_mean(total, within_centered, self.privacy, self.dp, expected, rng)
        z = self.privacy.noise_multiplier
        ledger = self.privacy.ledger.add(q, z)
        self.privacy = replace(self.privacy, clip=release.next_clip, ledger=ledger)
        self.report.privacy |= {
            "epsilon": ledger.epsilon(self.dp.delta, self.dp.accountant),
            "accountant": self.dp.accountant, "delta": self.dp.delta,
            "q": q, "expected-clients": expected, "noise-multiplier": z,
            "noise-std": release.noise_std, "clip": release.clip,
            "next-clip": release.next_clip, "unclipped-fraction": release.unclipped_fraction,
            "release": NOT_PRIVATE if self.dp.reproducible else "private",
        }  # fmt: skip
        return release.delta

    def _robust_delta(self, server_round: int, accepted: list[ClientUpdate]) -> Aggregate:
        """The configured rule over the accepted updates; what it did goes to the run log."""
        result = robust_aggregate(
            [c.update for c in accepted], [c.weight for c in accepted], self.robust
        )
        self.report.robust = robust_log(result, accepted)
        # Capping and clipping are routine with the defaults (a claim above the round's
        # median; an update above 5 x the median norm, ~3% of honest sinusoid updates), so
        # they stay in metrics.jsonl and the debug log; a note or an exclusion is said.
        for level, kinds in ((DEBUG, ("clipped",)), (WARNING, ("excluded",))):
            said = [result.note] if result.note and level == WARNING else []
            said += [
                f"partition {c['partition']} (norm {c['norm']:.4g}) {c['action']}"
                for c in self.report.robust["clients"]
                if any(k in c["action"] for k in kinds)
            ]
            if said:
                log(level, "round %d %s: %s", server_round, result.rule.value, "; ".join(said))
        return result

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        rows = []
        replies = self._with_silent_nodes(replies, "evaluate")
        for msg in replies:
            node = msg.metadata.src_node_id
            if msg.has_error():
                self._drop_node(msg, f"error reply to evaluate: {msg.error.reason}")
                continue
            try:
                good, dropped = evaluation_rows(msg.content, self.asked.get(node, []))
            except UpdateRejected as err:
                self._drop_node(msg, f"evaluation reply: {err}")
                continue
            rows += good
            for pid, reason in sorted(dropped.items()):
                self._drop(node, pid, f"evaluation: {reason}")
        rows.sort(key=lambda r: r[PARTITION_ID])
        self.report.eval_clients = rows
        return summarise_evaluation(rows, self.settings.task) if rows else None


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


def _node_metric_means(node_metrics: Iterable[Mapping], clients: int) -> MetricRecord | None:
    """Train metrics of a SecAgg+ round: the nodes' per-metric sums over their clients."""
    if clients == 0:
        return None
    sums: dict[str, float] = {}
    for metrics in node_metrics:
        for key, value in metrics.items():
            if key.startswith(SUM_PREFIX):
                name = key[len(SUM_PREFIX) :]
                sums[name] = sums.get(name, 0.0) + float(value)
    return MetricRecord({**{k: v / clients for k, v in sums.items()}, "clients": clients})


def _weighted_metrics(records: list[dict[str, float]], weights: list[float]) -> MetricRecord:
    total = sum(weights)
    keys = [k for k in records[0] if all(k in r for r in records)]
    out = {k: sum(r[k] * w / total for r, w in zip(records, weights, strict=True)) for k in keys}
    return MetricRecord({**out, "clients": len(records)})


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
    # A client whose personalisation diverged (server/aggregate.diverged_clients: loss
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
