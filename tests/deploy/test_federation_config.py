"""The federation script's pieces that need no running Flower process."""

from __future__ import annotations

import json
import os

from flwr.common.config import parse_config_args

from deploy.federation import Federation, main, parse_run_config


def test_node_config_round_trips_through_flowers_parser_even_with_spaces(tmp_path):
    federation = Federation(tmp_path / "state with spaces", 3, data_path="/data/my femnist")
    parsed = parse_config_args([federation.node_config(2)])
    assert parsed == {
        "partition-id": 2,
        "num-partitions": 3,
        "model-dir": str(federation.layout.model_dir(2)),
        "data-path": "/data/my femnist",
    }
    assert federation.layout.model_dir(2).is_relative_to(tmp_path)


def test_run_config_text_is_read_as_flower_reads_it():
    config = parse_run_config('num-rounds=3 dataset="digits" resume=true inner-lr=0.05')
    assert config == {"num-rounds": 3, "dataset": "digits", "resume": True, "inner-lr": 0.05}
    assert parse_run_config("  ") == {}


def test_down_never_signals_a_process_that_is_not_a_federation(tmp_path, capsys):
    state = tmp_path / "federation.json"
    state.write_text(json.dumps({"pid": os.getpid()}))  # pytest itself: must survive
    assert main(["down", "--state-dir", str(tmp_path)]) == 0
    assert "stale" in capsys.readouterr().out and not state.exists()


def test_run_without_a_federation_says_how_to_start_one(tmp_path, capsys):
    assert main(["run", "--state-dir", str(tmp_path)]) == 1
    assert "python -m deploy.federation up" in capsys.readouterr().err


def test_the_demo_requires_every_node_unless_the_run_config_says_otherwise(tmp_path):
    from deploy.federation import demo_run_config

    config = demo_run_config(tmp_path, 1, 'dataset="digits"')
    assert config["min-available-nodes"] == 1 and config["dataset"] == "digits"
    assert config["run-dir"].startswith(str(tmp_path.resolve()))
    assert demo_run_config(tmp_path, 3, "min-available-nodes=2")["min-available-nodes"] == 2


def test_node_options_reach_the_node_config_and_bad_ones_are_named(tmp_path):
    import pytest

    from deploy.federation import FederationError

    federation = Federation(tmp_path, 2, torch_threads=2)
    assert parse_config_args([federation.node_config(0)])["torch-threads"] == 2
    assert "torch-threads" not in parse_config_args([Federation(tmp_path, 2).node_config(0)])
    with pytest.raises(FederationError, match="is not a ClientApp layout; use one of in-node"):
        Federation(tmp_path, 2, clientapp="thread")
    with pytest.raises(FederationError, match="torch-threads must be >= 1"):
        Federation(tmp_path, 2, torch_threads=0)
    with pytest.raises(FederationError, match="needs a positive number of seconds"):
        Federation(tmp_path, 2, clientapp="per-message", supernode_poll=0.2)
    assert main(["demo", "--nodes", "2", "--measure-node", "5", "--state-dir", str(tmp_path)]) == 1
