"""Federated training does what it is for: with a fixed seed, the loss before adapting
falls by a clear margin over the rounds (and accuracy rises), on the in-process loop.

The federation tests elsewhere compare the code with itself (2 nodes = 10 nodes, a cohort
= clients alone); these pin an outcome, so a flipped client update, a flipped server step
or a metric computed the wrong way round fails here. Synthetic data (10 classes, pFedMe's
generator), logistic regression, 4 clients all training every round: about 4 s each.
"""

from __future__ import annotations

import json
import math

import pytest

from simulations.loop import run_in_loop

ROUNDS = 10


def _history(tmp_path, algorithm: str) -> list[dict]:
    config = {
        "algorithm": algorithm, "dataset": "synthetic", "model": "logreg", "seed": 0,
        "num-rounds": ROUNDS, "fraction-train": 1.0, "fraction-evaluate": 1.0,
        "local-steps": 5, "batch-size": 10, "outer-lr": 0.05, "inner-lr": 0.05,
        "server-optimizer": "sgd", "server-lr": 1.0, "run-dir": str(tmp_path / algorithm),
    }  # fmt: skip
    run_in_loop(config, 4)
    lines = (tmp_path / algorithm / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["eval"] for line in lines]


def test_fedavg_lowers_the_loss_and_raises_the_accuracy_of_the_shared_model(tmp_path):
    rows = _history(tmp_path, "fedavg")
    first, last = rows[0], rows[-1]
    # logreg starts at zero: every client's loss is ln(10) before round 1
    assert first["loss-before-mean"] < math.log(10)
    assert last["loss-before-mean"] < 0.2 * first["loss-before-mean"]  # measured: 1.65 -> 0.11
    assert last["acc-before-mean"] > 0.9 > first["acc-before-mean"] + 0.3  # 0.40 -> 0.99
    assert last["acc-after-mean"] == pytest.approx(last["acc-before-mean"])  # no adaptation


def test_maml_lowers_the_loss_before_adapting_and_adaptation_lowers_it_further(tmp_path):
    rows = _history(tmp_path, "maml")
    first, last = rows[0], rows[-1]
    assert last["loss-before-mean"] < 0.75 * first["loss-before-mean"]  # measured: 2.49 -> 1.47
    assert last["acc-before-mean"] > first["acc-before-mean"] + 0.1  # 0.00 -> 0.24
    for row in rows:  # k steps on the train split help on the held-out test split
        assert row["loss-after-mean"] < 0.5 * row["loss-before-mean"]
        assert row["acc-after-mean"] > 0.9  # measured 0.99 every round
