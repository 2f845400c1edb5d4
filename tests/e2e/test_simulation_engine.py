"""End to end through Flower's real Simulation Engine (SuperLink + `flwr run`)."""

from __future__ import annotations

import json

import pytest
import torch

from simulations.engine import SimulationError, simulation_superlink

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def superlink(tmp_path_factory):
    with simulation_superlink(tmp_path_factory.mktemp("flwr-home")) as link:
        yield link
    assert link.process.poll() is not None, "the SuperLink must be stopped"


def test_two_rounds_write_metrics_summary_and_model(superlink, tmp_path):
    run_dir = tmp_path / "run"
    config = {
        "algorithm": "maml",
        "num-rounds": 2,
        "local-steps": 2,
        "fraction-train": 0.5,
        "new-clients": 5,
        "run-dir": str(run_dir),
    }
    log = superlink.run(config, num_supernodes=4, timeout=300)
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["accepted"] == 2 and rows[1]["eval"]["clients"] == 4
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {"mse-after-mean", "mse-after-worst10", "new-mse-k1-mean", "new-mse-k10-mean"} <= set(
        summary
    )
    saved = torch.load(run_dir / "model.pt", weights_only=True)
    assert set(saved["theta"]) == {
        "net.1.weight",
        "net.1.bias",
        "net.3.weight",
        "net.3.bias",
        "net.5.weight",
        "net.5.bias",
    }
    assert "round 2/2 [maml]" in log


def test_two_nodes_hosting_ten_clients_train_like_ten_nodes(superlink, tmp_path):
    """The cohort layout on the Simulation Engine: the same clients, rounds and theta."""
    base = {"algorithm": "maml", "num-rounds": 2, "local-steps": 2, "fraction-train": 0.4}
    superlink.run(base | {"run-dir": str(tmp_path / "alone")}, num_supernodes=10, timeout=300)
    superlink.run(
        base | {"run-dir": str(tmp_path / "cohort"), "clients-per-node": 5},
        num_supernodes=2,
        timeout=300,
    )

    def clients(name: str) -> list[list[int]]:
        lines = (tmp_path / name / "clients.jsonl").read_text().splitlines()
        return [[c["partition-id"] for c in json.loads(x)["clients"]] for x in lines]

    assert clients("cohort") == clients("alone") and len(clients("cohort")[-1]) == 10
    rows = [json.loads(x) for x in (tmp_path / "cohort" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["accepted"] == 4 and not r["dropped"] for r in rows)
    alone = torch.load(tmp_path / "alone" / "model.pt", weights_only=True)["theta"]
    cohort = torch.load(tmp_path / "cohort" / "model.pt", weights_only=True)["theta"]
    for name, value in alone.items():
        torch.testing.assert_close(cohort[name], value, rtol=1e-4, atol=1e-5)


def test_bad_config_stops_the_run_before_round_one_with_a_named_error(superlink, tmp_path):
    with pytest.raises(SimulationError):
        superlink.run(
            {"inner-lr": -1.0, "run-dir": str(tmp_path / "bad")},
            2,
            log_file=tmp_path / "log.txt",
            timeout=300,
        )
    assert "config key 'inner-lr' has value -1.0" in (tmp_path / "log.txt").read_text()
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()


def test_missing_data_path_is_named(superlink, tmp_path):
    missing = tmp_path / "no-such-femnist.npz"
    with pytest.raises(SimulationError):
        superlink.run(
            {
                "dataset": "femnist",
                "data-path": str(missing),
                "model": "logreg",
                "run-dir": str(tmp_path / "r"),
            },
            2,
            log_file=tmp_path / "log.txt",
            timeout=300,
        )
    assert str(missing) in (tmp_path / "log.txt").read_text()


def _engine_experiment(tmp_path, extra: str) -> str:
    path = tmp_path / "engine.yaml"
    path.write_text(
        "engine: simulation\nnum-supernodes: 2\nseeds: [0]\n"
        f"base: {{num-rounds: 1, local-steps: 1, hidden-sizes: '8'{extra}}}\n"
        "algorithms: {maml: {}}\n"
    )
    return str(path)


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # every client skipped (too little data): the ServerApp raises TrainingFailed
        (", sinusoid-train-points: 3, batch-size: 5", "no client update was accepted"),
        # a damaged file: DataError from the start-up check, before round 1
        (", dataset: femnist, model: logreg, data-path: '{data}'", "cut short or corrupt"),
    ],
    ids=["nothing-trained", "corrupt-data"],
)
def test_the_engine_runner_reports_a_failed_run_in_one_line(tmp_path, capfd, extra, expected):
    from simulations.run import main

    data = tmp_path / "femnist.npz"
    data.write_bytes(b"PK\x03\x04 half an npz")
    out = tmp_path / "out"
    assert main([_engine_experiment(tmp_path, extra.format(data=data)), "--out", str(out)]) == 1
    stdout, stderr = capfd.readouterr()
    assert "Traceback" not in stdout + stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expected in errors[0], stderr
    assert not (out / "maml" / "seed0" / "summary.json").exists()
    if "no client update" in expected:  # rounds ran: their lines are echoed as they come
        assert "[maml s0] round 1/1" in stdout
