"""The real ClientApp and server loop, run in-process (simulations/loop.py), per algorithm."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from simulations.loop import run_in_loop

FAST = {
    "num-rounds": 2,
    "local-steps": 2,
    "hidden-sizes": "16",
    "fraction-train": 0.5,
    "fraction-evaluate": 0.5,
}


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "algorithm", ["maml", "perfedavg-fo", "perfedavg-hf", "metasgd", "fedavg", "fedavg-ft", "local"]
)
def test_every_algorithm_runs_and_logs_every_round(tmp_path, algorithm):
    summary = run_in_loop(FAST | {"algorithm": algorithm, "run-dir": str(tmp_path)}, num_nodes=6)
    rows = _rows(tmp_path)
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["accepted"] == 3 and not r["dropped"] for r in rows)
    assert summary["clients"] == 6  # the final round scores every client
    for key in ("mse-after-mean", "mse-after-std", "mse-after-worst10", "mse-before-mean"):
        assert np.isfinite(summary[key])
    if algorithm in ("fedavg", "local"):  # scored as they are, no adaptation at evaluation
        assert summary["mse-after-mean"] == summary["mse-before-mean"]
    else:
        assert summary["mse-after-mean"] != summary["mse-before-mean"]


def test_metasgd_alpha_is_learned_and_saved(tmp_path):
    run_in_loop(FAST | {"algorithm": "metasgd", "run-dir": str(tmp_path), "inner-lr": 0.05}, 6)
    model = torch.load(tmp_path / "model.pt", weights_only=True)
    alpha = torch.cat([a.reshape(-1) for a in model["alpha"].values()])
    assert not torch.allclose(alpha, torch.full_like(alpha, 0.05))


def test_local_shares_nothing_but_trains_personal_models(tmp_path):
    from common.config import parse_settings
    from server.app import initial_state

    config = FAST | {"algorithm": "local", "run-dir": str(tmp_path)}
    run_in_loop(config, 6)
    theta = torch.load(tmp_path / "model.pt", weights_only=True)["theta"]
    init = initial_state(parse_settings({k: v for k, v in config.items()}))
    for k, v in theta.items():
        np.testing.assert_array_equal(v.numpy(), init[k])


def test_clients_with_too_little_data_are_reported_and_skipped(tmp_path):
    from server.app import TrainingFailed

    config = FAST | {"run-dir": str(tmp_path), "sinusoid-train-points": 3, "batch-size": 5}
    with pytest.raises(TrainingFailed, match="no client update was accepted in rounds 1..2"):
        run_in_loop(config, 4)  # every client skipped: nothing trained, a failed run
    rows = _rows(tmp_path)
    assert [r["round"] for r in rows] == [1, 2] and all(r["accepted"] == 0 for r in rows)
    assert "3 training examples, fewer than batch-size=5" in rows[0]["dropped"][0]
    assert not (tmp_path / "summary.json").exists() and not (tmp_path / "model.pt").exists()


def test_same_seed_same_numbers_and_resume_continues(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run_in_loop(FAST | {"run-dir": str(a), "num-rounds": 3}, 6)
    run_in_loop(FAST | {"run-dir": str(b), "num-rounds": 2}, 6)
    run_in_loop(FAST | {"run-dir": str(b), "num-rounds": 3, "resume": True}, 6)
    ta = torch.load(a / "model.pt", weights_only=True)["theta"]
    tb = torch.load(b / "model.pt", weights_only=True)["theta"]
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=0, atol=0)
    assert [r["round"] for r in _rows(b)] == [1, 2, 3]
