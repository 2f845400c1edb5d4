"""One training round as a pipeline: collect -> combine -> step.

    collect   server/collect.py   plain replies screened into client rows, or a SecAgg+ sum
    combine   server/combine.py   rows or sum -> Delta: the mean, a robust rule, or DP
    step      server/optimizer.py theta, Delta -> theta' (SGD or Adam)

:func:`pipeline_for` picks the stages once, at start-up, from the settings. A pipeline is
either a :class:`ReplyRound` (rows, combined by a rule or by central DP) or a
:class:`SecureRound` (a SecAgg+ sum, averaged or released with DP): a robust rule only
combines rows, so robust aggregation with SecAgg+ cannot be built.

A round is a function of its inputs: ``train_round(server_round, state, grid)`` returns a
:class:`RoundOutcome` with the new theta (None: no step), the optimizer's and DP's state
after it, and the report metrics.jsonl logs. The ServerApp (server/app.py) owns the state
between rounds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from flwr.app import Message, MetricRecord
from flwr.serverapp import Grid

from common.arrays import NamedArrays, to_record
from common.config import Settings
from common.dp_mechanism import distributed_noise
from server.collect import Rows, collect_rows, collect_secure_sum
from server.combine import (
    Combined,
    PrivateRound,
    combine_distributed,
    combine_private_rows,
    combine_private_sum,
    combine_rows,
    combine_secure_sum,
)  # fmt: skip
from server.delivery import send_and_receive
from server.optimizer import OptimizerConfig, OptimizerState, server_step
from server.privacy import DPConfig, PrivacyState
from server.robust import RobustConfig, check_round_size
from server.secagg import SecAggConfig, quantization_range
from server.strategy import Cohort, MetaStrategy


@dataclass(frozen=True)
class ServerState:
    """What the server carries from round to round (and checkpoints)."""

    theta: NamedArrays  # theta, and Meta-SGD's alpha under "alpha/" keys
    optimizer: OptimizerState = field(default_factory=OptimizerState)
    privacy: PrivacyState | None = None  # DP only


@dataclass(frozen=True)
class RoundReport:
    """What happened to the clients of one training round, for metrics.jsonl."""

    accepted: int | None = 0  # None: hidden (distributed DP's nodes sample their clients)
    dropped: list[str] = field(default_factory=list)
    robust: dict = field(default_factory=dict)  # what the aggregation rule did, per client
    privacy: dict = field(default_factory=dict)  # the round's DP release / SecAgg+ sum
    asked: int = 0  # clients asked
    failed: bool = False  # clients were asked and every node failed or none answered
    every_reply_failed: bool = False  # replies came, and each was an error


@dataclass(frozen=True)
class RoundOutcome:
    theta: NamedArrays | None  # None: no update was accepted, theta stays
    optimizer_state: OptimizerState
    privacy_state: PrivacyState | None
    report: RoundReport
    metrics: MetricRecord | None = None  # train metrics, weighted like Delta

    def state(self, before: ServerState) -> ServerState:
        """The state the next round starts from."""
        theta = before.theta if self.theta is None else self.theta
        return ServerState(theta, self.optimizer_state, self.privacy_state)


def step(
    state: ServerState, combined: Combined, optimizer: OptimizerConfig, report: RoundReport
) -> RoundOutcome:
    """The server optimizer's step with the combined Delta (none: theta stays)."""
    report = replace(report, accepted=combined.accepted, robust=combined.robust)
    report = replace(report, privacy=combined.release)
    privacy = combined.privacy if combined.privacy is not None else state.privacy
    if combined.delta is None:
        return RoundOutcome(None, state.optimizer, privacy, report, combined.metrics)
    theta, opt = server_step(state.theta, combined.delta, optimizer, state.optimizer)
    return RoundOutcome(theta, opt, privacy, report, combined.metrics)


@dataclass(frozen=True)
class ReplyRound:
    """Plain replies: sample, send theta, screen the replies into rows, combine, step."""

    strategy: MetaStrategy
    optimizer: OptimizerConfig
    timeout: float
    robust: RobustConfig | None  # the rule; None: central DP combines
    dp: DPConfig | None
    fraction: float

    def train_round(self, server_round: int, state: ServerState, grid: Grid) -> RoundOutcome:
        cohort = self.sample(server_round, state)
        private = _private(self.dp, state)
        clip = private.clip if private else 0.0
        messages = self.strategy.train_messages(server_round, to_record(state.theta), cohort, clip)
        replies = send_and_receive(grid, messages, timeout=self.timeout)
        return self.after_replies(server_round, state, cohort, replies)

    def sample(self, server_round: int, state: ServerState) -> Cohort:
        """The round's clients: DP's Poisson sample from its secret key, else the seeded
        draw; a robust rule the cohort is too small for stops here, before anything is sent
        (a start-up error in round 1)."""
        private = _private(self.dp, state)
        key = private.noise_key if private else None
        cohort = self.strategy.sample_train(server_round, key, poisson=private is not None)
        if self.robust is not None:
            check_round_size(self.robust, cohort.size)
        return cohort

    def after_replies(
        self, server_round: int, state: ServerState, cohort: Cohort, replies: Iterable[Message]
    ) -> RoundOutcome:
        """Collect the replies into rows, combine them, step."""
        rows = collect_rows(replies, cohort.asked, state.theta)
        if self.robust is not None:
            combined = combine_rows(server_round, rows, self.robust)
        else:
            dp_round = _dp_round(self.dp, _private(self.dp, state), cohort, self.fraction)
            combined = combine_private_rows(server_round, rows, dp_round, state.theta)
        return step(state, combined, self.optimizer, _report(rows))


@dataclass(frozen=True)
class SecureRound:
    """SecAgg+: every live node takes part; the server sees only the sum of the clipped
    updates (server/secagg.py), which it averages or releases with DP."""

    strategy: MetaStrategy
    optimizer: OptimizerConfig
    protocol: SecAggConfig
    dp: DPConfig | None
    distributed: bool  # distributed DP: the nodes sample and noise, the server adds nothing
    fraction: float
    clip: float  # C the clients clip to without DP (dp-clip); DP's own C otherwise
    tolerated_drops: int  # distributed DP: nodes that may drop before the noise falls short

    def train_round(self, server_round: int, state: ServerState, grid: Grid) -> RoundOutcome:
        private = _private(self.dp, state)
        key = private.noise_key if private else None
        cohort = self.strategy.sample_train(
            server_round, key, poisson=private is not None and not self.distributed,
            everyone=self.distributed, every_node=True,
        )  # fmt: skip
        clip = private.clip if private else self.clip
        if self.distributed:
            return self._distributed(server_round, state, grid, cohort)
        secured = collect_secure_sum(
            grid, self.protocol, server_round, state.theta, cohort.asked, clip
        )
        report = RoundReport(asked=secured.asked, dropped=secured.dropped)
        if secured.result is None:
            return RoundOutcome(None, state.optimizer, state.privacy, report)
        if private is None:
            combined = combine_secure_sum(server_round, secured.result, clip)
        else:
            dp_round = _dp_round(self.dp, private, cohort, self.fraction)
            combined = combine_private_sum(server_round, secured.result, dp_round)
        return step(state, combined, self.optimizer, report)

    def _distributed(
        self, server_round: int, state: ServerState, grid: Grid, cohort: Cohort
    ) -> RoundOutcome:
        private = state.privacy
        assert private is not None
        dp_round = _dp_round(self.dp, private, cohort, self.fraction)
        dim = sum(int(v.size) for v in state.theta.values())
        nodes = len(cohort.asked)
        noise = distributed_noise(
            private.clip, private.noise_multiplier, dim, cohort.population, nodes,
            nodes - self.tolerated_drops, quantization_range(nodes),
        )  # fmt: skip
        secured = collect_secure_sum(
            grid, self.protocol, server_round, state.theta, cohort.asked, private.clip, noise,
            dp_round.q,
        )  # fmt: skip
        report = RoundReport(asked=secured.asked, dropped=secured.dropped)
        if secured.result is None:
            return RoundOutcome(None, state.optimizer, state.privacy, report)
        combined = combine_distributed(secured.result, dp_round, noise, nodes)
        return step(state, combined, self.optimizer, report)


def pipeline_for(
    settings: Settings, strategy: MetaStrategy, optimizer: OptimizerConfig
) -> ReplyRound | SecureRound:
    """The round's stages, chosen once from the settings."""
    dp = DPConfig.from_settings(settings) if settings.dp else None
    if settings.secagg:
        distributed = dp is not None and settings.dp_mechanism == "distributed"
        return SecureRound(
            strategy, optimizer, SecAggConfig.from_settings(settings), dp, distributed,
            settings.fraction_train, settings.dp_clip, settings.dp_tolerated_drops,
        )  # fmt: skip
    robust = None if dp is not None else RobustConfig.from_settings(settings)
    return ReplyRound(
        strategy, optimizer, settings.round_timeout, robust, dp, settings.fraction_train
    )


def _private(dp: DPConfig | None, state: ServerState) -> PrivacyState | None:
    if dp is None:
        return None
    if state.privacy is None:
        raise RuntimeError("a DP round needs the PrivacyState the ServerApp starts")
    return state.privacy


def _dp_round(
    dp: DPConfig | None, private: PrivacyState | None, cohort: Cohort, fraction: float
) -> PrivateRound:
    assert dp is not None and private is not None
    expected = cohort.expected(fraction)
    return PrivateRound(private, dp, expected, expected / cohort.population)


def _report(rows: Rows) -> RoundReport:
    return RoundReport(
        dropped=rows.dropped, asked=rows.asked, failed=rows.failed,
        every_reply_failed=rows.every_reply_failed,
    )  # fmt: skip
