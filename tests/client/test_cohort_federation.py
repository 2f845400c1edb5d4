"""The cohort layout through the real server loop and ClientApp (simulations/loop.py): a node
hosting many clients gives the run that one node per client gives."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from simulations.loop import run_in_loop

FAST = {
    "num-rounds": 3,
    "local-steps": 2,
    "hidden-sizes": "16",
    "fraction-train": 0.4,
    "fraction-evaluate": 0.3,
    "new-clients": 4,
    "new-client-steps": "1,3",
}


def _rows(run_dir, name="metrics.jsonl"):
    return [json.loads(line) for line in (run_dir / name).read_text().splitlines()]


def _theta(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=True)["theta"]


@pytest.mark.parametrize("algorithm", ["maml", "metasgd", "perfedavg-hf", "fedavg-ft", "local"])
def test_ten_clients_on_two_nodes_equal_ten_clients_on_ten_nodes(tmp_path, algorithm):
    base = FAST | {"algorithm": algorithm}
    alone = run_in_loop(base | {"run-dir": str(tmp_path / "alone")}, num_nodes=10)
    cohort = run_in_loop(
        base | {"run-dir": str(tmp_path / "cohort"), "clients-per-node": 5}, num_nodes=2
    )
    for name in ("metrics.jsonl", "clients.jsonl"):
        a, c = _rows(tmp_path / "alone", name), _rows(tmp_path / "cohort", name)
        assert len(a) == len(c) == 3
    # the same clients were trained and scored in the same rounds
    for a, c in zip(
        _rows(tmp_path / "alone", "clients.jsonl"),
        _rows(tmp_path / "cohort", "clients.jsonl"),
        strict=True,
    ):
        assert [r["partition-id"] for r in a["clients"]] == [
            r["partition-id"] for r in c["clients"]
        ]
        for ra, rc in zip(a["clients"], c["clients"], strict=True):
            assert rc["loss-after"] == pytest.approx(ra["loss-after"], rel=1e-4)
    assert all(r["accepted"] == 4 and not r["dropped"] for r in _rows(tmp_path / "cohort"))
    for name, value in _theta(tmp_path / "alone").items():
        torch.testing.assert_close(_theta(tmp_path / "cohort")[name], value, rtol=1e-4, atol=1e-5)
    for key in ("mse-after-mean", "new-mse-k1-mean", "new-mse-k3-mean"):
        if key in alone or key in cohort:  # 'local' scores no new clients (untrained theta)
            assert cohort[key] == pytest.approx(alone[key], rel=1e-4)
    assert (algorithm == "local") == ("new-mse-k1-mean" not in alone)


def test_a_rerun_reproduces_theta_bit_for_bit(tmp_path):
    config = FAST | {"clients-per-node": 5, "algorithm": "maml"}
    run_in_loop(config | {"run-dir": str(tmp_path / "a")}, num_nodes=2)
    run_in_loop(config | {"run-dir": str(tmp_path / "b")}, num_nodes=2)
    for name, value in _theta(tmp_path / "a").items():
        assert torch.equal(_theta(tmp_path / "b")[name], value)


def test_a_too_small_client_inside_a_cohort_is_skipped_alone(tmp_path):
    """Synthetic users have a power-law number of samples: some have fewer than the batch."""
    config = {
        "dataset": "synthetic", "num-rounds": 1, "local-steps": 1, "batch-size": 60,
        "fraction-train": 1.0, "fraction-evaluate": 1.0, "clients-per-node": 10,
        "run-dir": str(tmp_path),
    }  # fmt: skip
    run_in_loop(config, num_nodes=3)
    row = _rows(tmp_path)[0]
    skipped = [d for d in row["dropped"] if "fewer than batch-size=60" in d]
    assert skipped and row["accepted"] > 0
    assert row["accepted"] + len({d.split(":")[0] for d in skipped}) == 30
    assert np.isfinite(row["eval"]["acc-after-mean"])


def test_evaluate_every_skips_evaluation_but_never_in_the_final_round(tmp_path):
    config = FAST | {"clients-per-node": 5, "evaluate-every": 2, "num-rounds": 3}
    run_in_loop(config | {"run-dir": str(tmp_path)}, num_nodes=2)
    rows = _rows(tmp_path)
    assert [bool(r["eval"]) for r in rows] == [False, True, True]
    assert rows[2]["eval"]["clients"] == 10  # the final round scores every client
    assert [len(r["clients"]) for r in _rows(tmp_path, "clients.jsonl")] == [0, 3, 10]


@pytest.mark.parametrize("algorithm", ["maml", "perfedavg-hf"])
def test_episodic_conv_clients_train_alike_alone_and_in_a_cohort(tmp_path, data_dir, algorithm):
    """Omniglot N-way K-shot episodes through MAML's conv net (BatchNorm on batch
    statistics) under vmap: 6 clients on 2 nodes equal 6 clients on 6 nodes."""
    if not (data_dir / "omniglot").exists():
        pytest.skip(f"no omniglot below {data_dir}")
    base = {
        "algorithm": algorithm, "dataset": "omniglot", "data-path": str(data_dir / "omniglot"),
        "test-fraction": 0.25, "n-way": 5, "k-shot": 1, "query-shots": 5, "eval-episodes": 3,
        "model": "cnn", "hidden-sizes": "8,8,8,8", "num-rounds": 2, "fraction-train": 0.5,
        "fraction-evaluate": 0.5, "local-steps": 2, "inner-lr": 0.4, "eval-steps": 2,
        "server-lr": 0.001, "new-clients": 2, "new-client-steps": "1,2",
    }  # fmt: skip
    alone = run_in_loop(base | {"run-dir": str(tmp_path / "alone")}, num_nodes=6)
    cohort = run_in_loop(
        base | {"run-dir": str(tmp_path / "cohort"), "clients-per-node": 3}, num_nodes=2
    )
    for key in ("acc-after-mean", "acc-before-mean", "loss-after-mean", "new-acc-k2-mean"):
        assert cohort[key] == pytest.approx(alone[key], rel=1e-4, abs=1e-6)
    # Conv biases feed BatchNorm, so their true gradient is 0 and Adam scales the float
    # rounding left in it up to steps of up to server-lr (1e-3): compare at that scale.
    for name, value in _theta(tmp_path / "alone").items():
        torch.testing.assert_close(_theta(tmp_path / "cohort")[name], value, rtol=1e-4, atol=2e-3)
