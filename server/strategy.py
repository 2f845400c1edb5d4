"""Who takes part in a round, and what they are sent.

:class:`MetaStrategy` samples clients reproducibly and builds the train and evaluate
messages, like the ``configure_*`` half of a Flower strategy. What comes back is not its
business: a training round's replies go through the pipeline in server/round.py
(collect -> combine -> step), an evaluation round's through server/evaluation.py. It holds
no state between calls; the ServerApp (server/app.py) owns theta, the optimizer's and DP's
state, and passes them in.

It does not inherit Flower's ``Strategy``: that base class is a contract for Flower's own
round loop (``start``), which this ServerApp replaces with one that checkpoints, guards
against divergence and runs SecAgg+ (server/app.py says why). Nothing of FedAvg's was used.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType

from common.config import Settings
from common.messages import write_instruction
from common.streams import SAMPLE_EVALUATE_PURPOSE, SAMPLE_TRAIN_PURPOSE
from server.nodes import NodeDirectory, cohort_size


@dataclass(frozen=True)
class Cohort:
    """The clients a round asks: node id -> partitions, and the population drawn from."""

    asked: dict[int, list[int]]
    population: int  # clients on live nodes when the sample was drawn

    @property
    def size(self) -> int:
        return sum(len(p) for p in self.asked.values())

    def expected(self, fraction: float) -> int:
        """k: the cohort a sample of ``fraction`` draws on average (DP's denominator)."""
        return cohort_size(self.population, fraction)


@dataclass(frozen=True)
class SamplingConfig:
    seed: int
    fraction_train: float
    fraction_evaluate: float
    final_fraction_evaluate: float  # the final round scores every client by default

    @classmethod
    def from_settings(cls, s: Settings) -> SamplingConfig:
        return cls(s.seed, s.fraction_train, s.fraction_evaluate, s.final_fraction_evaluate)


class MetaStrategy:
    def __init__(self, cfg: SamplingConfig, nodes: NodeDirectory) -> None:
        self.cfg, self.nodes = cfg, nodes

    def sample_train(
        self, server_round: int, key: int | None = None, *, poisson: bool = False,
        everyone: bool = False, every_node: bool = False,
    ) -> Cohort:  # fmt: skip
        """The round's training clients. DP draws a Poisson sample (the accountant's
        assumption) from its secret ``key``, not the seed: who took part must be as
        unpredictable as the noise. Distributed DP asks ``everyone`` (each node samples its
        own). SecAgg+ needs ``every_node`` live: those without a sampled client send zeros,
        so that each round has the two or more nodes the protocol needs."""
        fraction = 1.0 if everyone else self.cfg.fraction_train
        seed = self.cfg.seed if key is None else key
        asked = self.nodes.sample(fraction, seed, server_round, SAMPLE_TRAIN_PURPOSE, poisson)
        cohort = Cohort(asked, self.nodes.population)
        if every_node:
            live = sorted({node for _, node in self.nodes.live()})
            cohort = Cohort({node: asked.get(node, []) for node in live}, cohort.population)
        return cohort

    def sample_evaluate(self, server_round: int, final: bool) -> Cohort:
        fraction = self.cfg.final_fraction_evaluate if final else self.cfg.fraction_evaluate
        asked = self.nodes.sample(fraction, self.cfg.seed, server_round, SAMPLE_EVALUATE_PURPOSE)
        return Cohort(asked, self.nodes.population)

    def train_messages(
        self, server_round: int, arrays: ArrayRecord, cohort: Cohort, clip: float = 0.0
    ) -> list[Message]:
        """One message per node: theta, the round, its clients and C (0: no clipping)."""
        return _messages(server_round, arrays, cohort, MessageType.TRAIN, clip, ConfigRecord())

    def evaluate_messages(
        self, server_round: int, arrays: ArrayRecord, cohort: Cohort, config: ConfigRecord
    ) -> list[Message]:
        return _messages(server_round, arrays, cohort, MessageType.EVALUATE, 0.0, config)


def _messages(
    server_round: int, arrays: ArrayRecord, cohort: Cohort, kind: str, clip: float,
    config: ConfigRecord,
) -> list[Message]:  # fmt: skip
    return [
        Message(
            content=write_instruction(arrays, server_round, parts, clip=clip, config=config),
            dst_node_id=node,
            message_type=kind,
        )
        for node, parts in cohort.asked.items()
    ]
