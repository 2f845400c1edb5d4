"""The round's stages are chosen once from the settings (server/round.py), and what a run
shows while it trains (server/progress.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from common.config import parse_settings
from server import round as stages
from server.optimizer import OptimizerConfig, OptimizerState
from server.progress import Progress, latest_metric
from server.robust import RobustConfig
from tests.server.rounds import FixedNodes, strategy_for

SGD = OptimizerConfig("sgd", 1.0)


def _pipeline(**config):
    nodes = FixedNodes({1: [0, 1]})
    return stages.pipeline_for(parse_settings(config), strategy_for(config, nodes), SGD)


def test_plain_runs_combine_rows_with_the_configured_rule():
    pipeline = _pipeline(aggregation="multi-krum", **{"krum-byzantine": 1})
    assert isinstance(pipeline, stages.ReplyRound) and pipeline.dp is None
    assert pipeline.robust == RobustConfig.from_settings(
        parse_settings({"aggregation": "multi-krum", "krum-byzantine": 1})
    )


def test_dp_combines_rows_privately_and_secagg_sums_without_any_robust_rule():
    central = _pipeline(dp=True, **{"dp-clip": 1.0})
    assert isinstance(central, stages.ReplyRound) and central.robust is None and central.dp
    secure = _pipeline(secagg=True, weighting="uniform", **{"dp-clip": 1.0})
    assert isinstance(secure, stages.SecureRound) and not secure.distributed
    # a robust rule cannot be put into a SecAgg+ round: it has no place for one
    assert "robust" not in {f.name for f in dataclasses.fields(stages.SecureRound)}
    with pytest.raises(TypeError):
        stages.SecureRound(
            robust=RobustConfig(), **{f.name: None for f in dataclasses.fields(secure)}
        )  # type: ignore[call-arg]


def test_an_outcome_without_a_step_keeps_theta_and_carries_the_rest():
    theta = {"w": np.ones(2, np.float32)}
    before = stages.ServerState(theta, OptimizerState(step=3))
    stepped = OptimizerState(step=4)
    kept = stages.RoundOutcome(None, before.optimizer, None, stages.RoundReport()).state(before)
    assert kept.theta is theta and kept.optimizer.step == 3
    new = {"w": np.zeros(2, np.float32)}
    moved = stages.RoundOutcome(new, stepped, None, stages.RoundReport(accepted=2)).state(before)
    assert moved.theta is new and moved.optimizer.step == 4


def _row(rnd: int, mse: float | None) -> dict:
    ev = {} if mse is None else {
        "mse-before-mean": 3.0, "mse-after-mean": mse, "mse-after-worst10": 2 * mse,
        "clients": 10,
    }  # fmt: skip
    return {"round": rnd, "eval": ev, "dropped": [], "accepted": 5, "seconds": 0.1}


def test_the_progress_bar_follows_the_rounds_and_shows_the_latest_evaluation():
    s = parse_settings({"num-rounds": 4, "evaluate-every": 2})
    with Progress(s, bar=True) as progress:
        assert progress.bar is not None
        for rnd, mse in ((1, None), (2, 0.5), (3, None)):
            progress.after(_row(rnd, mse))
        task = progress.bar.tasks[0]
        assert task.completed == 3 and task.total == 4
        assert task.fields["metric"] == "mse 0.5000"  # round 3 had no evaluation: kept
    assert latest_metric(s, {}) == ""
    with Progress(s, bar=False) as quiet:  # not a terminal: the progress lines alone
        quiet.after(_row(1, 0.25))
        assert quiet.bar is None
