"""The server's run: it stops before round 1 on bad inputs, fails when nothing was trained,
and resumes only the run it recorded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.config import ConfigError, parse_settings, settings_to_run_config
from common.data.types import DataError
from server.app import TrainingFailed, initial_state, resume_point, run_federation
from server.optimizer import OptimizerState
from server.run_folder import Checkpoint, RunFolder, RunFolderError
from simulations.loop import run_in_loop

TINY = {"num-rounds": 1, "local-steps": 1, "hidden-sizes": "8", "fraction-train": 0.5}


def test_corrupt_data_stops_the_run_before_round_one_and_writes_nothing(tmp_path):
    data = tmp_path / "femnist.npz"
    data.write_bytes(b"PK\x03\x04 half an npz")
    run_dir = tmp_path / "run"
    settings = parse_settings(
        {"dataset": "femnist", "data-path": str(data), "model": "logreg", "run-dir": str(run_dir)}
    )
    with pytest.raises(DataError, match=str(data)):
        run_federation(settings, grid=None)  # type: ignore[arg-type]  (never reached)
    assert not run_dir.exists()


def test_every_client_failing_stops_round_one_as_a_failed_run(tmp_path, monkeypatch):
    def broken(settings, partition_id, num_partitions):
        raise DataError(f"shard of client {partition_id} is corrupt")

    monkeypatch.setattr("client.runtime.load_client_data", broken)
    with pytest.raises(TrainingFailed, match=r"round 1: every client failed.*is corrupt"):
        run_in_loop(TINY | {"num-rounds": 5, "run-dir": str(tmp_path)}, num_nodes=4)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1] and rows[0]["accepted"] == 0
    for name in ("checkpoint.npz", "model.pt", "summary.json"):
        assert not (tmp_path / name).exists(), name


def test_resume_with_another_algorithm_is_refused_and_config_json_unchanged(tmp_path):
    run_in_loop(TINY | {"algorithm": "maml", "run-dir": str(tmp_path)}, num_nodes=4)
    recorded = (tmp_path / "config.json").read_bytes()
    checkpoint = (tmp_path / "checkpoint.npz").read_bytes()
    changed = TINY | {"algorithm": "fedavg", "hidden-sizes": "16", "num-rounds": 2}
    with pytest.raises(ConfigError) as err:
        run_in_loop(changed | {"run-dir": str(tmp_path), "resume": True}, num_nodes=4)
    message = str(err.value)
    assert "config key 'algorithm' has value 'fedavg'" in message and "'maml'" in message
    assert "hidden-sizes '8' -> '16'" in message and "num-rounds" not in message
    assert str(tmp_path / "config.json") in message
    assert (tmp_path / "config.json").read_bytes() == recorded
    assert (tmp_path / "checkpoint.npz").read_bytes() == checkpoint


def test_resume_may_change_what_does_not_touch_theta(tmp_path):
    folder = RunFolder(tmp_path)
    settings = parse_settings(TINY)
    folder.write_json("config.json", settings_to_run_config(settings))
    now = settings_to_run_config(parse_settings(TINY | {"num-rounds": 9, "eval-steps": 3}))
    changes = folder.check_resumable(now, defaults={})
    assert changes == {"num-rounds": (1, 9), "eval-steps": (10, 3)}


def test_a_key_recorded_before_it_existed_counts_as_its_default(tmp_path):
    folder = RunFolder(tmp_path)
    settings = settings_to_run_config(parse_settings(TINY))
    folder.write_json("config.json", {k: v for k, v in settings.items() if k != "activation"})
    assert folder.check_resumable(settings, defaults={"activation": "relu"}) == {}
    with pytest.raises(ConfigError, match="'activation' has value 'elu'; allowed: 'relu'"):
        folder.check_resumable(settings | {"activation": "elu"}, defaults={"activation": "relu"})


def test_a_truncated_checkpoint_names_the_file_and_the_way_out(tmp_path):
    settings = parse_settings(TINY | {"run-dir": str(tmp_path), "resume": True})
    folder = RunFolder(tmp_path)
    folder.save_checkpoint(Checkpoint(3, initial_state(settings), OptimizerState(step=3)))
    path = folder.file("checkpoint.npz")
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(RunFolderError) as err:
        run_federation(settings, grid=None)  # type: ignore[arg-type]
    message = str(err.value)
    assert str(path) in message and "Delete it" in message and "resume=false" in message


def test_a_checkpoint_without_a_server_step_is_started_over(tmp_path):
    """Left by a run that never accepted an update: it holds the seeded initial theta."""
    settings = parse_settings(TINY | {"run-dir": str(tmp_path), "resume": True})
    folder = RunFolder(tmp_path)
    folder.record_config(settings_to_run_config(settings))
    state = initial_state(settings)
    folder.save_checkpoint(Checkpoint(1, state, OptimizerState()))
    assert resume_point(settings, folder, state) is None
    folder.save_checkpoint(Checkpoint(1, state, OptimizerState(step=1)))
    resumed = resume_point(settings, folder, state)
    assert resumed is not None and resumed.server_round == 1
    np.testing.assert_array_equal(resumed.state["net.1.weight"], state["net.1.weight"])


def test_a_long_run_logs_about_twenty_progress_lines_and_every_round_that_dropped():
    from server.progress import says_progress

    s = parse_settings({"num-rounds": 3000})
    said = [r for r in range(1, 3001) if says_progress(s, {"round": r, "dropped": []})]
    assert said[0] == 1 and said[-1] == 3000 and 20 <= len(said) <= 22
    assert says_progress(s, {"round": 7, "dropped": ["partition 3: error reply"]})
    short = parse_settings({"num-rounds": 5})
    assert all(says_progress(short, {"round": r, "dropped": []}) for r in range(1, 6))
