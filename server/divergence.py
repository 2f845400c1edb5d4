"""Divergence is an outcome of a run, not a result: how the round loop tells it, and what
it does then.

A run has diverged in round r when
  * theta (or Meta-SGD's alpha) holds a NaN or an infinite value after round r's server
    step: no client can train on it, and every later update would be dropped; or
  * it had trained and then accepted no update for ``max-stalled-rounds`` rounds in a row;
    r is the last round that accepted one: its step left a theta that no client could
    train on. A finite but absurd theta does this (every client's update from it is
    non-finite and dropped), and without the guard the run "finished" on a frozen,
    blown-up theta. The run stops at the end of the stall (``stopped-at-round``); or
  * an evaluation round's mean loss before adapting (the shared model's, on the clients
    it scored) is finite and above ``DIVERGED_LOSS_FACTOR`` (10) times the run's first
    evaluated value: theta blew up while staying finite, and norm-bounded updates keep it
    going, so neither rule above sees it (the quickstart's perfedavg-hf at server-lr
    0.01: 2.6 -> 105).

``on-divergence = "stop"`` (default) ends the run there: summary.json records
``diverged-at-round`` and why, no model.pt is written, and the run raises
:class:`RunDiverged`. ``"rollback"`` instead restores the state from before the step
that caused it (the last step for a stall, this round's for a non-finite theta), scales
the server step size by ``rollback-lr-factor`` and carries on from there, at most
``max-rollbacks`` times; each rollback is logged and kept in ``rollback.json`` so a
resumed run keeps the reduced step size. DP's privacy ledger is never rolled back: the
rounds that were undone still used the clients' data.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from flwr.app import Message

from common.arrays import NamedArrays
from server.optimizer import OptimizerConfig, OptimizerState

ROLLBACK_FILE = "rollback.json"

# A client's personalisation diverged when its loss after adapting is not finite or above
# this many times its loss before adapting. Adapting on a client's own data may overfit,
# but a healthy step never multiplies the held-out loss tenfold (the plots' EXPLODED rule);
# the 1e31 means this guards against came from a few clients at 1e30+.
DIVERGED_LOSS_FACTOR = 10.0


class RunDiverged(RuntimeError):
    """The run diverged in ``server_round``; summary.json records it (not a trained model)."""

    def __init__(self, server_round: int, reason: str, where: str) -> None:
        super().__init__(f"diverged at round {server_round}: {reason}; record: {where}")
        self.server_round = server_round
        self.reason = reason


def nonfinite_key(state: Mapping[str, np.ndarray]) -> str | None:
    """The first key of ``state`` that holds a NaN or an infinite value, if any."""
    return next((k for k, v in state.items() if not np.isfinite(v).all()), None)


@dataclass(frozen=True)
class Snapshot:
    """The server's state at the end of ``server_round``: what a rollback restores."""

    server_round: int
    theta: NamedArrays
    optimizer: OptimizerState


def federation_failed(replies: Sequence[Message], asked: int) -> bool:
    """Whether clients were asked and no node answered, or every node answered with an
    error (a dead actor or node, a run being stopped). Such a round says nothing about
    theta: it is a failure of the federation, logged with its reasons, and it neither counts
    towards a stall nor resets one (a Ctrl-C that kills the workers first is no divergence)."""
    return asked > 0 and all(m.has_error() for m in replies)


@dataclass(frozen=True)
class StallCounter:
    """Rounds in a row without an accepted update, counted once the run has trained."""

    limit: int
    count: int = 0

    def after(self, accepted: int | None, trained: bool, asked: int = 1) -> StallCounter:
        """The count after a round that asked ``asked`` clients and accepted ``accepted``.
        A round that asked no one (DP's Poisson sample can be empty), or whose count the
        server does not see (distributed DP: None), neither counts nor resets."""
        if accepted is None:
            return self
        if accepted or not trained:
            return dataclasses.replace(self, count=0)
        return dataclasses.replace(self, count=self.count + (1 if asked else 0))

    def divergence(self, server_round: int, first_drop: str) -> Divergence | None:
        """The divergence this stall amounts to at the end of ``server_round``, if any."""
        if self.count < self.limit:
            return None
        last_step = server_round - self.count
        reason = (
            f"round {last_step}'s step left a theta on which no client update was accepted "
            f"in rounds {last_step + 1}..{server_round} (max-stalled-rounds = {self.limit}; "
            f"{first_drop})"
        )
        return Divergence(last_step, server_round, reason)


LOSS_BEFORE_MEANS = ("mse-before-mean", "loss-before-mean")  # regression, classification


@dataclass(frozen=True)
class LossWatch:
    """The shared model's mean loss before adapting, against its first evaluated value."""

    reference: float | None = None

    def after(self, server_round: int, evaluation: Mapping) -> tuple[LossWatch, Divergence | None]:
        """The watch after this evaluation, and the divergence it shows, if any. A
        non-finite mean (one client's NaN test data makes it so) says nothing either way."""
        loss = next((evaluation[k] for k in LOSS_BEFORE_MEANS if k in evaluation), None)
        if loss is None or not math.isfinite(loss):
            return self, None
        if self.reference is None:
            return LossWatch(float(loss)), None
        if loss <= DIVERGED_LOSS_FACTOR * max(self.reference, 1e-12):
            return self, None
        reason = (
            f"the scored clients' mean loss before adapting is {loss:.4g}, over "
            f"{DIVERGED_LOSS_FACTOR:g} x its first evaluated value {self.reference:.4g}"
        )
        return self, Divergence(server_round, server_round, reason)

    @classmethod
    def from_rows(cls, rows: list[dict]) -> LossWatch:
        """The watch of a resumed run: its first evaluated value from metrics.jsonl."""
        for row in rows:
            watch, _ = cls().after(0, row.get("eval") or {})
            if watch.reference is not None:
                return watch
        return cls()


@dataclass(frozen=True)
class Divergence:
    """Round ``server_round`` diverged; the run noticed at the end of ``stopped_at``."""

    server_round: int
    stopped_at: int
    reason: str


@dataclass(frozen=True)
class Rollbacks:
    """How many rollbacks a run has made and the server step size they left it with."""

    done: int = 0
    lr_scale: float = 1.0

    def optimizer(self, base: OptimizerConfig) -> OptimizerConfig:
        return dataclasses.replace(base, lr=base.lr * self.lr_scale)

    def next(self, factor: float) -> Rollbacks:
        return Rollbacks(self.done + 1, self.lr_scale * factor)

    def to_json(self) -> dict[str, float]:
        return {"rollbacks": self.done, "lr-scale": self.lr_scale}

    @classmethod
    def from_json(cls, raw: Mapping[str, float]) -> Rollbacks:
        return cls(int(raw.get("rollbacks", 0)), float(raw.get("lr-scale", 1.0)))
