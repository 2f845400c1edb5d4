"""One training round through Flower's SecAgg+ protocol, inside our Message-API ServerApp.

Flower's ``SecAggPlusWorkflow`` drives the legacy strategy API: it asks
``strategy.configure_fit`` for (ClientProxy, FitIns) pairs, runs its four stages (setup,
share keys, collect masked vectors, unmask) over the Grid, and hands ``aggregate_fit`` the
unmasked, dequantized weighted mean in every FitRes. It refuses our Message-API strategy,
so :class:`_NodeSums` is the smallest legacy strategy that fits: it sends each node its
FitIns and keeps what the workflow unmasked. Nothing else of the legacy server runs.

What each node sends is built in client/secagg.py: (sum of its clients' clipped updates)/M
with weight M = clients-per-node, so the workflow's mean times n M is the plain sum S over
the n nodes that answered, to within the quantization error, and two counts ride along.
Quantization settings come from the clip bound: every value the node sends lies in [-C, C],
so the protocol's clipping range is C (it clips nothing) and its quantization range Q is
the largest power of two (at most 2^30, what Flower's int32 rounding holds) with
(n + 1) Q <= 2^32, the modulus, so that neither the summed values nor the summed weights
wrap around. Each node's value is rounded stochastically to a step of 2C/Q, so S is exact
to within n M 2C/Q per coordinate.

Every live node takes part in every SecAgg+ round (the protocol needs two or more); a node
with no sampled client sends zeros.

Distributed DP (``dp-mechanism = "distributed"``, common/dp_mechanism.py) hands the protocol
integers instead: each node sends its noised integer sum x in [0, m), m = Q, encoded as
x 2/Q - 1 with clipping range 1, which the mod's quantization maps back to x exactly (every
step is a multiplication by a power of two), so its stochastic rounding changes nothing.
The workflow's sum mod 2^32 is then reduced mod m (m divides 2^32) and centred: the noised
sum of the clients' rounded updates, in steps of gamma.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, RecordDict
from flwr.common import FitIns, FitRes, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp import Grid

from common.arrays import NamedArrays
from common.config import Settings
from common.dp_mechanism import DistributedNoise, centered
from common.messages import (
    CLIENTS,
    CLIP,
    DP_BOUND,
    DP_GRANULARITY,
    DP_MODULUS,
    DP_NODE_STD,
    DP_SAMPLE_RATE,
    DROPPED,
    SERVER_ROUND,
    STATE_KEYS,
)

MODULUS = 2**32  # Flower's default modulus_range (the largest it allows)


def quantization_range(nodes: int) -> int:
    """Q for ``nodes`` masked vectors: (nodes + 1) Q <= 2^32, Q <= 2^30, a power of two."""
    return 2 ** min(30, 32 - math.ceil(math.log2(nodes + 1)))


@dataclass(frozen=True)
class SecAggConfig:
    """What the SecAgg+ protocol reads of the settings."""

    num_shares: int | float  # shares of each node's secret (a fraction: of the nodes)
    threshold: int | float  # shares that reconstruct it
    clients_per_node: int  # M: a node's most clients, the weight of its vector
    timeout: float  # seconds each stage waits

    @classmethod
    def from_settings(cls, s: Settings) -> SecAggConfig:
        return cls(s.secagg_num_shares, s.secagg_threshold, s.clients_per_node, s.round_timeout)


@dataclass(frozen=True)
class SecureSum:
    """What the server learns from a SecAgg+ round: sums only, never one node's vector."""

    total: NamedArrays  # S: sum of every summed client's clipped update (noised: distributed)
    clients: int | None  # m: clients in S (None under distributed DP: the nodes sample)
    within_centered: float  # sum over those clients of (b_i - 1/2)
    nodes: list[int]  # node ids whose masked vectors were summed
    node_metrics: dict[int, dict]  # node id -> its FitRes metrics (per-node sums, drops)
    quantization_range: int


class _NodeSums(LegacyFedAvg):
    """The legacy-API strategy SecAggPlusWorkflow needs: our FitIns out, the sum kept."""

    def __init__(self, grid: Grid, fitins: dict[int, FitIns]) -> None:
        super().__init__(fraction_fit=1.0, min_fit_clients=len(fitins))
        self.grid, self.fitins = grid, fitins
        self.results: list[tuple[GridClientProxy, FitRes]] | None = None

    def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
        return [(GridClientProxy(n, self.grid, 0), ins) for n, ins in self.fitins.items()]

    def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
        self.results = list(results)
        return None, {}  # theta is stepped by our strategy, not by the workflow


def noise_config(noise: DistributedNoise, sample_rate: float) -> dict[str, float | int]:
    """The FitIns config entries that tell a node how to noise its sum (client/secagg.py)."""
    return {
        DP_GRANULARITY: noise.granularity, DP_BOUND: noise.bound, DP_NODE_STD: noise.node_std,
        DP_MODULUS: noise.modulus, DP_SAMPLE_RATE: sample_rate,
    }  # fmt: skip


def secure_sum(
    grid: Grid, cfg: SecAggConfig, server_round: int, state: NamedArrays,
    asked: dict[int, list[int]], clip: float, noise: DistributedNoise | None = None,
    sample_rate: float = 1.0,
) -> SecureSum | None:  # fmt: skip
    """Run SecAgg+ once over the nodes in ``asked``; None if the protocol halted (fewer
    nodes than its threshold completed a stage). With ``noise``, each node samples its
    clients at ``sample_rate`` and noises its sum (distributed DP)."""
    keys = list(state)
    parameters = ndarrays_to_parameters([state[k] for k in keys])
    config = {SERVER_ROUND: server_round, CLIP: clip, STATE_KEYS: ",".join(keys)}
    if noise is not None:
        config |= noise_config(noise, sample_rate)
    fitins = {
        node: FitIns(parameters, {**config, CLIENTS: ",".join(map(str, parts))})
        for node, parts in asked.items()
    }
    q_range = quantization_range(len(fitins))
    if noise is not None and noise.modulus != q_range:
        raise ValueError(f"distributed DP's modulus {noise.modulus} must be Q = {q_range}")
    workflow = SecAggPlusWorkflow(
        num_shares=cfg.num_shares,
        reconstruction_threshold=cfg.threshold,
        max_weight=float(cfg.clients_per_node),
        clipping_range=clip if noise is None else 1.0,
        quantization_range=q_range,
        modulus_range=MODULUS,
        timeout=cfg.timeout,
    )
    strategy = _NodeSums(grid, fitins)
    context = LegacyContext(
        Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
        strategy=strategy, client_manager=SimpleClientManager(),
    )  # fmt: skip
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord(
        {WorkflowKey.CURRENT_ROUND: server_round}
    )
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()  # read, never used
    workflow(grid, context)
    if not strategy.results:
        return None
    if noise is not None:
        return _decoded(strategy.results, keys, state, noise)
    return _unscaled(strategy.results, keys, state, clip, cfg.clients_per_node, q_range)


def _decoded(
    results: list[tuple[GridClientProxy, FitRes]], keys: list[str], state: NamedArrays,
    noise: DistributedNoise,
) -> SecureSum:  # fmt: skip
    """The noised sum S (distributed DP) from what the workflow unmasked."""
    mean = parameters_to_ndarrays(results[0][1].parameters)
    total = {
        k: decode_sum(mean[i], len(results), noise).reshape(state[k].shape)
        for i, k in enumerate(keys)
    }
    metrics = {proxy.node_id: dict(res.metrics) for proxy, res in results}
    return SecureSum(total, None, 0.0, sorted(metrics), metrics, noise.modulus)


def decode_sum(mean: np.ndarray, nodes: int, noise: DistributedNoise) -> np.ndarray:
    """The sum of ``nodes`` integers x_i, each encoded as x_i 2/Q - 1, from the workflow's
    mean (sum_i x_i 2/Q - n) / n: sum_i x_i (mod 2^32) = (mean n + n) Q/2, exact in float64
    (integers below 2^32, powers of two); then mod m, centred, in update units (x gamma)."""
    n, m = nodes, noise.modulus
    raw = np.rint((np.asarray(mean, np.float64) * n + n) * (m / 2)).astype(np.int64)
    return centered(raw, m).astype(np.float64) * noise.granularity


def _unscaled(
    results: list[tuple[GridClientProxy, FitRes]], keys: list[str], state: NamedArrays,
    clip: float, per_node: int, q_range: int,
) -> SecureSum:  # fmt: skip
    """S, m and sum (b_i - 1/2) from the workflow's mean over the n nodes (client/secagg.py)."""
    mean = parameters_to_ndarrays(results[0][1].parameters)
    n = len(results)
    scale = n * per_node
    total = {
        k: np.asarray(mean[i], np.float64).reshape(state[k].shape) * scale
        for i, k in enumerate(keys)
    }
    counts = np.asarray(mean[len(keys)], np.float64) * scale
    metrics = {proxy.node_id: dict(res.metrics) for proxy, res in results}
    return SecureSum(
        total=total,
        clients=int(round(counts[0] / clip)),
        within_centered=float(counts[1] / (2 * clip)),
        nodes=sorted(metrics),
        node_metrics=metrics,
        quantization_range=q_range,
    )


def node_drops(metrics: dict) -> dict[int, str]:
    """partition -> reason of the clients a node left out of its sum."""
    return {int(p): str(why) for p, why in json.loads(str(metrics.get(DROPPED, "{}"))).items()}
