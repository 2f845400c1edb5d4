"""The message contract between the ServerApp (server/) and the ClientApp (client/).

Both sides import this module and nothing else about each other: the keys a message
carries, their types, and how one is written and read. No key of a message appears as a
string literal anywhere else.

**Instruction** (server -> node, a ``train`` or ``evaluate`` message)::

    RecordDict {
      ARRAYS: ArrayRecord   theta (+ Meta-SGD's alpha, common/arrays.py ALPHA_PREFIX)
      CONFIG: ConfigRecord  SERVER_ROUND int, CLIENTS list[int] (partition ids asked of
                            this node), CLIP float (train, when DP/SecAgg+ clip), FINAL bool
                            (evaluate: the final round scores every client), CODE str (the
                            ServerApp's code fingerprint, common/fingerprint.py)
    }

**Reply** (node -> server), per-client lists in the order of ``PARTITION_ID``::

    RecordDict {
      METRICS: MetricRecord  PARTITION_ID list[int], SKIPPED list[0|1],
                             NUM_EXAMPLES list[int] (train: train-split size, the weight;
                             evaluate: test-split size), and one list[float] per metric
                             (train losses; evaluate LOSS_BEFORE, LOSS_AFTER, ACC_*)
      SKIP:    ConfigRecord  REASONS list[str] ("" for a client that ran)
      UPDATES: ArrayRecord   train only: every client's update stacked on a leading axis
    }

**Identity** (node -> server, a ``query`` at start-up, whose ``CONFIG`` holds CODE):
``IDENTITY: MetricRecord {PARTITION_ID: int, PARTITIONS: list[int]}``, the clients the
node hosts; a contiguous block of them as ``HOSTED_START``, ``HOSTED_STOP`` (a range, so a
node hosting 500,000 clients does not send their list).

**SecAgg+ rounds** speak Flower's legacy FitIns/FitRes instead (client/secagg.py,
server/secagg.py): the FitIns config holds SERVER_ROUND, CLIP, STATE_KEYS (the names of its
arrays, comma-joined) and CLIENTS (comma-joined); the FitRes metrics hold the node's
CLIENTS count, DROPPED (partition -> reason, JSON) and SUM_PREFIX + metric sums.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from common.arrays import UpdateRejected
from common.fingerprint import code_fingerprint

# ---- instruction --------------------------------------------------------------------
ARRAYS = "arrays"
CONFIG = "config"
SERVER_ROUND = "server-round"
CLIENTS = "clients"
CLIP = "dp-clip"
FINAL = "final"
CODE = "code"  # issue 20: the sender's code fingerprint; a worker with other code refuses

# ---- reply ----------------------------------------------------------------------------
METRICS = "metrics"
SKIP = "skip"
UPDATES = "updates"
REASONS = "reasons"
PARTITION_ID = "partition-id"
SKIPPED = "skipped"
NUM_EXAMPLES = "num-examples"
LOSS_BEFORE, LOSS_AFTER = "loss-before", "loss-after"
ACC_BEFORE, ACC_AFTER = "acc-before", "acc-after"
BOOKKEEPING = (NUM_EXAMPLES, SKIPPED, PARTITION_ID)  # reply columns that are not metrics

# ---- SecAgg+ (legacy FitIns / FitRes) ---------------------------------------------------
STATE_KEYS = "state-keys"
DROPPED = "dropped"
SUM_PREFIX = "sum/"

# ---- distributed DP under SecAgg+ (FitIns config; common/dp_mechanism.py DistributedNoise) ---
DP_GRANULARITY = "dp-granularity"  # gamma
DP_BOUND = "dp-bound"  # Delta_2
DP_NODE_STD = "dp-node-std"  # sigma of a node's discrete Gaussian share
DP_MODULUS = "dp-modulus"  # m
DP_SAMPLE_RATE = "dp-sample-rate"  # q: each node samples its own clients

# ---- identity -------------------------------------------------------------------------
IDENTITY = "identity"
PARTITIONS = "partitions"
HOSTED_START, HOSTED_STOP = "hosted-start", "hosted-stop"  # issue 20: range(start, stop)


@dataclass(frozen=True)
class Instruction:
    """What a node is asked to do, besides the arrays."""

    server_round: int
    clients: list[int] | None  # partition ids asked of this node; None: every hosted one
    clip: float  # C every client clips its update to (DP, SecAgg+); 0: no clipping
    final: bool
    code: str = ""  # the ServerApp's code fingerprint ("": not stamped, not checked)


def write_instruction(
    arrays: ArrayRecord, server_round: int, clients: Sequence[int], *, clip: float = 0.0,
    config: ConfigRecord | None = None,
) -> RecordDict:  # fmt: skip
    """A train/evaluate message's content (``config`` adds e.g. FINAL)."""
    values = {**dict(config or {}), SERVER_ROUND: server_round, CLIENTS: list(clients)}
    values[CODE] = code_fingerprint()
    if clip:
        values[CLIP] = clip
    return RecordDict({ARRAYS: arrays, CONFIG: ConfigRecord(values)})


def read_instruction(content: RecordDict) -> tuple[ArrayRecord, Instruction]:
    return content.array_records[ARRAYS], instruction_of(content.config_records[CONFIG])


def instruction_of(config: Mapping) -> Instruction:
    """The instruction in a config mapping (a ConfigRecord, or a SecAgg+ FitIns config)."""
    clients = config.get(CLIENTS)
    return Instruction(
        server_round=int(config[SERVER_ROUND]),
        clients=None if clients is None else [int(c) for c in clients],
        clip=float(config.get(CLIP, 0.0)),
        final=bool(config.get(FINAL, False)),
        code=str(config.get(CODE, "")),
    )


def write_reply(
    order: Sequence[int], skipped: Mapping[int, str],
    values: Mapping[int, Mapping[str, float | int]], updates: ArrayRecord | None,
) -> RecordDict:  # fmt: skip
    """Per-client lists in ``order``; a skipped client gets zeros and its reason."""
    keys = sorted({k for v in values.values() for k in v})
    metrics: dict[str, list] = {
        PARTITION_ID: list(order),
        SKIPPED: [int(p in skipped) for p in order],
    }
    for k in keys:
        column = [values.get(p, {}).get(k, 0) for p in order]
        metrics[k] = column if k == NUM_EXAMPLES else [float(x) for x in column]
    metrics.setdefault(NUM_EXAMPLES, [0] * len(order))
    content = RecordDict(
        {
            METRICS: MetricRecord(metrics),
            SKIP: ConfigRecord({REASONS: [skipped.get(p, "") for p in order]}),
        }
    )
    if updates is not None:
        content[UPDATES] = updates
    return content


@dataclass(frozen=True)
class ReplyRows:
    """A node's reply read per client: the rows left to check, and who was dropped."""

    metrics: MetricRecord
    size: int  # clients the reply answers for
    rows: list[tuple[int, int]]  # (row, partition) of asked-for clients that did not skip
    dropped: dict[int, str]  # partition -> reason

    def column(self, key: str) -> list:
        """A per-client list of the reply; UpdateRejected when it is not one."""
        values = self.metrics.get(key)
        if not isinstance(values, list) or len(values) != self.size:
            raise UpdateRejected(
                f"metrics '{key}' must be a list of {self.size} values, got {values!r}"
            )
        return values

    def metric_columns(self) -> dict[str, list]:
        """Every per-client metric list of the reply (bookkeeping columns left out)."""
        return {
            k: v
            for k, v in self.metrics.items()
            if k not in BOOKKEEPING and isinstance(v, list) and len(v) == self.size
        }


def read_reply(content: RecordDict, asked: Sequence[int]) -> ReplyRows:
    """Split a reply into its clients: a row answering a client the server did not ask this
    node for (or a second answer for one) and a client that skipped are dropped with their
    reason, as is every asked-for client without a row. Raises :class:`UpdateRejected` when
    the reply as a whole cannot be read."""
    metrics = content.metric_records.get(METRICS)
    if metrics is None:
        raise UpdateRejected(f"reply has no '{METRICS}' MetricRecord")
    partitions = metrics.get(PARTITION_ID)
    if not isinstance(partitions, list):
        raise UpdateRejected(f"metrics '{PARTITION_ID}' must list the clients of the reply")
    reply = ReplyRows(metrics, len(partitions), [], {})
    skipped = reply.column(SKIPPED)
    skip = content.config_records.get(SKIP)
    reasons = skip.get(REASONS) if skip is not None else None
    wanted, seen = set(asked), set()
    for j, raw in enumerate(partitions):
        pid = int(raw)
        if pid not in wanted or pid in seen:
            reply.dropped[pid] = "a result for a client the server did not ask this node for"
            continue
        seen.add(pid)
        if skipped[j]:
            why = reasons[j] if isinstance(reasons, list) and j < len(reasons) else ""
            reply.dropped[pid] = f"client skipped: {why or 'no reason given'}"
            continue
        reply.rows.append((j, pid))
    for pid in asked:
        if pid not in seen:
            reply.dropped.setdefault(pid, "the node's reply has no result for this client")
    return reply


def reply_updates(content: RecordDict) -> ArrayRecord:
    record = content.array_records.get(UPDATES)
    if record is None:
        raise UpdateRejected(f"reply has no '{UPDATES}' ArrayRecord")
    return record


def write_query() -> RecordDict:
    """The identity query's content: the ServerApp's code fingerprint, for the node to check."""
    return RecordDict({CONFIG: ConfigRecord({CODE: code_fingerprint()})})


def query_code(content: RecordDict) -> str:
    """The code fingerprint a query carries ("" from a sender that stamps none)."""
    config = content.config_records.get(CONFIG)
    return str(config.get(CODE, "")) if config is not None else ""


def write_identity(node_partition: int, partitions: Sequence[int]) -> RecordDict:
    if isinstance(partitions, range) and partitions.step == 1:
        hosted = {HOSTED_START: partitions.start, HOSTED_STOP: partitions.stop}
    else:
        hosted = {PARTITIONS: list(partitions)}
    return RecordDict({IDENTITY: MetricRecord({PARTITION_ID: node_partition, **hosted})})


def read_identity(content: RecordDict) -> Sequence[int]:
    """The partitions a node hosts, from its identity reply (a range when contiguous)."""
    identity = content[IDENTITY]
    if HOSTED_START in identity:
        return range(int(identity[HOSTED_START]), int(identity[HOSTED_STOP]))  # type: ignore[arg-type]
    hosted = identity.get(PARTITIONS, [identity[PARTITION_ID]])
    return [int(p) for p in hosted]  # type: ignore[union-attr]
