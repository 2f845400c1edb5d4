"""Shakespeare by role end to end, on a tiny generated play: the ServerApp's round loop and
the ClientApp's handlers in one process (fast), and through Flower's Simulation Engine
(slow), with the char-LSTM trained by second-order MAML in cohorts."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from simulations.loop import run_in_loop

WORDS = ["thou", "art", "my", "lord", "and", "lady", "the", "king", "doth", "speak", "of",
         "love", "death", "in", "fair", "verona"]  # fmt: skip


def write_play(path: Path, roles: int = 6, speeches: int = 8) -> Path:
    """A play in tinyshakespeare's layout: 'NAME:' speeches separated by blank lines."""
    rng = np.random.default_rng(0)
    blocks = []
    for _ in range(speeches):
        for r in range(roles):
            lines = [" ".join(rng.choice(WORDS, 6)).capitalize() + "," for _ in range(2)]
            blocks.append(f"ROLE{r}:\n" + "\n".join(lines))
        blocks.append("NAME LEFT OUT:\nAy.")  # too short to be a client
    path.write_text("\n\n".join(blocks) + "\n")
    return path


def _config(play: Path, run_dir: Path) -> dict:
    return {
        "dataset": "shakespeare",
        "model": "lstm",
        "data-path": str(play),
        "shakespeare-seq-len": 10,
        "shakespeare-stride": 4,
        "shakespeare-min-chars": 200,
        "hidden-sizes": "8",
        "algorithm": "maml",
        "num-rounds": 2,
        "local-steps": 2,
        "batch-size": 4,
        "inner-lr": 0.1,
        "eval-steps": 2,
        "fraction-train": 0.5,
        "fraction-evaluate": 0.5,
        "new-clients": 2,
        "new-client-steps": "1,2",
        "run-dir": str(run_dir),
    }


def _check_run(run_dir: Path) -> None:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["accepted"] == 2 and not r["dropped"] for r in rows)
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("acc-after-mean", "acc-before-mean", "new-acc-k1-mean", "new-acc-k2-mean"):
        assert 0.0 <= summary[key] <= 1.0
    assert np.isfinite(summary["new-loss-k2-mean"])
    theta = torch.load(run_dir / "model.pt", weights_only=True)["theta"]
    assert theta["embedding.weight"].shape == (81, 8)  # LEAF's alphabet + unknown, width 8
    assert theta["layers.0.hidden_gates.weight"].shape == (32, 8)
    assert all(torch.isfinite(v).all() for v in theta.values())


def test_shakespeare_roles_train_and_score_in_the_loop_engine(tmp_path, caplog):
    play = write_play(tmp_path / "play.txt")
    config = _config(play, tmp_path / "run") | {"clients-per-node": 2, "min-available-nodes": 2}
    with caplog.at_level(logging.INFO, logger="flwr"):
        run_in_loop(config, num_nodes=2)
    _check_run(tmp_path / "run")
    assert "6 roles with >= 200 characters" in caplog.text and "1 roles left out" in caplog.text


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    from simulations.engine import simulation_superlink

    with simulation_superlink(tmp_path_factory.mktemp("flwr-home")) as link:
        yield link
    assert link.process.poll() is not None, "the SuperLink must be stopped"


@pytest.mark.slow
def test_shakespeare_roles_through_the_simulation_engine(superlink, tmp_path):
    play = write_play(tmp_path / "play.txt")
    config = _config(play, tmp_path / "run") | {"clients-per-node": 2}
    log = superlink.run(config, num_supernodes=2, timeout=300)
    _check_run(tmp_path / "run")
    assert "round 2/2 [maml]" in log
