"""One training round's pipeline (server/round.py) driven with hand-made replies, no Grid:
sample -> (the replies given) -> collect -> combine -> step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from flwr.app import Message

from common.config import parse_settings
from server.optimizer import OptimizerConfig, OptimizerState
from server.privacy import PrivacyState
from server.round import RoundOutcome, ServerState, pipeline_for
from server.strategy import MetaStrategy, SamplingConfig


class FixedNodes:
    """Nodes whose every sample is ``asked`` (node id -> partitions)."""

    def __init__(self, asked: Mapping[int, Sequence[int]], population: int | None = None):
        self.asked = {node: list(parts) for node, parts in asked.items()}
        self.population = population or sum(len(p) for p in self.asked.values())

    def sample(self, fraction, seed, server_round, purpose, poisson=False):  # noqa: ARG002
        return dict(self.asked)

    def live(self) -> list[tuple[int, int]]:
        return [(pid, node) for node, parts in self.asked.items() for pid in parts]


def strategy_for(config: Mapping, nodes: FixedNodes) -> MetaStrategy:
    return MetaStrategy(SamplingConfig.from_settings(parse_settings(dict(config))), nodes)  # type: ignore[arg-type]


def round_on_replies(
    config: Mapping, nodes: FixedNodes, replies: Sequence[Message], theta: Mapping[str, np.ndarray],
    optimizer: tuple = ("sgd", 1.0), *, privacy: PrivacyState | None = None,
    optimizer_state: OptimizerState | None = None, server_round: int = 1,
) -> RoundOutcome:  # fmt: skip
    """The outcome of a round whose nodes sent ``replies``."""
    settings = parse_settings(dict(config))
    strategy = MetaStrategy(SamplingConfig.from_settings(settings), nodes)  # type: ignore[arg-type]
    pipeline = pipeline_for(settings, strategy, OptimizerConfig(*optimizer))
    state = ServerState(dict(theta), optimizer_state or OptimizerState(), privacy)
    cohort = pipeline.sample(server_round, state)  # type: ignore[union-attr]
    return pipeline.after_replies(server_round, state, cohort, replies)  # type: ignore[union-attr]
