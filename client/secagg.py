"""The node's side of SecAgg+ (Flower's ``secaggplus_mod``) for a cohort of clients.

Flower's SecAgg+ workflow (server/secagg.py) speaks the legacy FitIns/FitRes format: in its
'collect masked vectors' stage, ``secaggplus_mod`` calls our train handler with a FitIns,
quantizes the FitRes parameters to integers in [0, Q) after clipping every value to
[-R, R], masks them and sends only the masked vector. What leaves the node is therefore
one vector per *node*, and it must be built so that the server can recover the plain sum:

* every client of the node clips its whole update to L2 norm C (common/dp_mechanism.py) before
  anything is summed, so DP's per-client sensitivity holds with M clients on one node;
* the node sends p = (sum of its clipped rows) / M, M = clients-per-node, with weight M
  (= the protocol's ``max_weight``): each coordinate of p lies in [-C, C], so with R = C
  the protocol clips nothing, and the workflow's weighted mean over the n nodes that
  answered is sum(p) / n, from which the server takes S = n M mean;
* two more numbers ride in the same masked vector, scaled into [-C, C]: the count of
  clients summed (C m / M) and, for adaptive clipping, sum_i (b_i - 1/2) (2C/M times it).

Per-client metrics cannot travel in a FitRes (scalars only), and the server must not see a
client's update; the node reports, in the FitRes metrics, only per-node sums of the
training metrics and which clients it dropped and why (a JSON string).
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
from flwr.compat.common import recorddict_compat as compat

from common.config import Settings
from common.dp_mechanism import DistributedNoise, noised_node_sum
from common.messages import (
    CLIENTS,
    DP_BOUND,
    DP_GRANULARITY,
    DP_MODULUS,
    DP_NODE_STD,
    DP_SAMPLE_RATE,
    DROPPED,
    STATE_KEYS,
    SUM_PREFIX,
)
from common.streams import NODE_NOISE_PURPOSE

COUNTS_KEY = "secagg/counts"  # the extra array: [C m / M, 2C/M sum_i (b_i - 1/2)]
FITINS_CONFIG = "fitins.config"


def secagg_when_asked(msg: Message, ctxt: Context, call_next: ClientAppCallable) -> Message:
    """Flower's ``secaggplus_mod`` for the messages of a SecAgg+ round; others pass by.

    (The mod itself requires SecAgg+ stage records in every train message, so it cannot
    sit on a ClientApp that also serves plain rounds.)"""
    if RECORD_KEY_CONFIGS in msg.content.config_records:
        return secaggplus_mod(msg, ctxt, call_next)
    return call_next(msg, ctxt)


def is_secagg_train(msg: Message) -> bool:
    """A FitIns from SecAgg+'s 'collect masked vectors' stage (not our plain train message)."""
    return FITINS_CONFIG in msg.content.config_records


def unpack_fitins(msg: Message) -> tuple[dict[str, np.ndarray], dict]:
    """The state theta (+ alpha) by name and the round's config, from a SecAgg+ FitIns."""
    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    config = dict(fitins.config)
    keys = str(config[STATE_KEYS]).split(",")
    arrays = parameters_to_ndarrays(fitins.parameters)
    if len(arrays) != len(keys):
        raise ValueError(f"FitIns holds {len(arrays)} arrays for {len(keys)} state keys")
    text = str(config.get(CLIENTS, ""))
    config[CLIENTS] = [int(c) for c in text.split(",")] if text else []
    return dict(zip(keys, arrays, strict=True)), config


def node_sum_reply(
    msg: Message, keys: list[str], updates: Mapping[str, np.ndarray], within: np.ndarray,
    rows: list[int], dropped: Mapping[int, str], values: Mapping[int, Mapping[str, float]],
    clip: float, per_node: int,
) -> Message:  # fmt: skip
    """The FitRes the mod masks: the node's scaled sum of clipped rows ``rows`` (see the
    module docstring), the two scaled counts, per-node metric sums and the drops."""
    m = len(rows)
    scaled = [np.asarray(updates[k], np.float64)[rows].sum(axis=0) / per_node for k in keys]
    within_centered = float(np.sum(within[rows] - 0.5)) if m else 0.0
    counts = np.array([clip * m / per_node, 2 * clip * within_centered / per_node])
    metrics: dict[str, int | float | str] = {CLIENTS: m, DROPPED: json.dumps(dropped)}
    for row in values.values():
        for key, value in row.items():
            total = SUM_PREFIX + key
            metrics[total] = float(metrics.get(total, 0.0)) + float(value)
    fitres = FitRes(
        Status(Code.OK, "secagg"), ndarrays_to_parameters([*scaled, counts]), per_node, metrics
    )
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)


# ---- distributed DP: the node samples its clients and noises its sum ---------------------
def read_noise(config: Mapping) -> tuple[DistributedNoise, float] | None:
    """The integer mechanism and the sampling rate q of a distributed-DP round, if it is
    one (server/secagg.py ``noise_config``)."""
    if DP_NODE_STD not in config:
        return None
    noise = DistributedNoise(
        float(config[DP_GRANULARITY]), float(config[DP_BOUND]), float(config[DP_NODE_STD]),
        int(config[DP_MODULUS]),
    )  # fmt: skip
    return noise, float(config[DP_SAMPLE_RATE])


def node_rng(settings: Settings, server_round: int, partitions: list[int]) -> np.random.Generator:
    """The node's own randomness for sampling, rounding and noise: OS entropy, so that
    neither the server nor anyone who knows the seed can predict or subtract it; from the
    seed only with the labelled ``dp-reproducible-noise`` (not a private release)."""
    if settings.dp_reproducible_noise:
        return np.random.default_rng([settings.seed, server_round, NODE_NOISE_PURPOSE, *partitions])
    return np.random.default_rng(np.random.SeedSequence())


def node_sample(clients: list[int], rate: float, rng: np.random.Generator) -> list[int]:
    """Poisson sampling on the node: each asked client trains with probability q. The
    server asks every client and, behind SecAgg+, never learns who took part."""
    return [c for c in clients if rng.random() < rate]


def noised_node_reply(
    msg: Message, keys: list[str], updates: Mapping[str, np.ndarray], rows: list[int],
    noise: DistributedNoise, per_node: int, rng: np.random.Generator,
) -> Message:  # fmt: skip
    """The FitRes the mod masks under distributed DP: the noised integer sum x in [0, m) of
    the clipped rows ``rows`` (common/dp_mechanism.py), each array encoded as x 2/m - 1 so that
    the mod's quantization (clipping range 1, Q = m) gives back x exactly. Nothing else:
    no count, no drop and no metric, which would tell the server who was sampled."""
    sizes = [int(np.prod(np.shape(updates[k])[1:])) for k in keys]
    flat = np.concatenate(
        [
            np.asarray(updates[k], np.float64)[rows].reshape(len(rows), size)
            for k, size in zip(keys, sizes, strict=True)
        ],
        axis=1,
    )  # (clients, d); a node none of whose clients was sampled has no rows
    x = noised_node_sum(flat, noise, rng).astype(np.float64)
    parts = np.split(x * (2 / noise.modulus) - 1, np.cumsum(sizes)[:-1])
    arrays = [p.reshape(np.shape(updates[k])[1:]) for p, k in zip(parts, keys, strict=True)]
    fitres = FitRes(Status(Code.OK, "secagg"), ndarrays_to_parameters(arrays), per_node, {})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=False), reply_to=msg)
