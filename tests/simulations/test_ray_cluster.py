"""Which Ray the runner uses, and what it asks Flower for (issue 20); no Ray is started."""

from __future__ import annotations

import socket
import time

import pytest

import server.app  # noqa: F401  flwr's log handler keeps the stderr of its import: not a capture's
from simulations.experiment import ExperimentError, load_experiment
from simulations.ray_cluster import (
    PRIVATE_RAY,
    ClientResources,
    RayClusterError,
    RayTarget,
    choose_ray,
    federation_config,
    resolve_ray,
)

CLUSTER = RayTarget("10.0.0.1:6379", "ray-address=10.0.0.1:6379", nodes=2, cpus=8, gpus=2)


def test_whole_cpus_and_fractional_gpus_pass_straight_to_flower():
    config = federation_config(4, ClientResources(2, 0.5), CLUSTER)
    assert config == {
        "num-supernodes": 4,
        "client-resources-num-cpus": 2,
        "client-resources-num-gpus": 0.5,
    }


@pytest.mark.parametrize(
    ("cpus", "per_worker", "ray_cpus"), [(0.5, 1, 4), (0.25, 1, 8), (1.5, 3, 4)]
)
def test_fractional_cpus_on_a_private_ray_keep_the_ratio_in_whole_numbers(
    cpus, per_worker, ray_cpus
):
    """Flower's field is a uint32: 0.5 CPU of 2 cores is 1 CPU of a Ray told it has 4."""
    config = federation_config(3, ClientResources(cpus), PRIVATE_RAY, machine_cpus=2)
    assert config["client-resources-num-cpus"] == per_worker
    assert config["init-args-num-cpus"] == ray_cpus
    assert ray_cpus / per_worker == 2 / cpus  # as many workers as the fraction promises


def test_fractional_cpus_on_a_cluster_are_refused_with_the_fix():
    with pytest.raises(RayClusterError, match=r"ray start --num-cpus=2x its cores"):
        federation_config(3, ClientResources(0.5), CLUSTER)


def test_gpu_workers_where_the_cluster_has_no_gpu_are_refused():
    no_gpu = RayTarget("10.0.0.1:6379", "x", nodes=2, cpus=8, gpus=0)
    with pytest.raises(RayClusterError, match="lists 0 GPU"):
        federation_config(2, ClientResources(1, 1), no_gpu)


def test_the_address_option_beats_the_environment_and_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("127.0.0.1:6390")
    assert choose_ray("local", {"RAY_ADDRESS": "1.2.3.4:1"})[0] == "local"
    assert choose_ray("", {"RAY_ADDRESS": "1.2.3.4:1"}) == ("1.2.3.4:1", "RAY_ADDRESS=1.2.3.4:1")
    address, source = choose_ray("", {})
    assert address == "127.0.0.1:6390" and str(tmp_path / "ray" / "ray_current_cluster") in source
    assert choose_ray("auto", {"RAY_ADDRESS": "1.2.3.4:1"})[0] == "127.0.0.1:6390"


def test_no_cluster_anywhere_means_a_private_ray_and_auto_says_so(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    assert resolve_ray("", environ={}).private
    with pytest.raises(RayClusterError, match="ray start --head"):
        choose_ray("auto", {})
    with pytest.raises(RayClusterError, match="is not 'local', 'auto' or HOST:PORT"):
        choose_ray("ray://head:10001", {})


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed on return: nothing listens there


def test_a_stale_address_file_is_named_with_the_fix_within_seconds(monkeypatch, tmp_path):
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    (tmp_path / "ray").mkdir()
    stale = tmp_path / "ray" / "ray_current_cluster"
    stale.write_text(f"127.0.0.1:{_dead_port()}")
    t0 = time.monotonic()
    with pytest.raises(RayClusterError) as err:
        resolve_ray("", environ={})
    assert time.monotonic() - t0 < 10
    message = str(err.value)
    assert f"stale Ray address file {stale}" in message and "ray stop" in message
    assert "--ray-address local" in message


def test_the_runner_refuses_a_stale_file_in_one_error_line(monkeypatch, tmp_path, capfd):
    from simulations.run import main

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{_dead_port()}")
    yaml = tmp_path / "e.yaml"
    yaml.write_text("engine: simulation\nnum-supernodes: 2\nalgorithms: {maml: {}}\n")
    t0 = time.monotonic()
    assert main([str(yaml), "--out", str(tmp_path / "out")]) == 1
    assert time.monotonic() - t0 < 10
    errors = [x for x in capfd.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "stale Ray address file" in errors[0]
    assert not list((tmp_path / "out").rglob("federation.json"))  # refused before any run


def test_the_yaml_takes_the_ray_keys_and_names_a_bad_one(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(
        "engine: simulation\ncpus-per-client: 0.5\ngpus-per-client: 0.25\n"
        "ray-address: 127.0.0.1:6379\nray-nodes: 2\nray-wait: 30\nalgorithms: {maml: {}}\n"
    )
    exp = load_experiment(path)
    assert (exp.cpus_per_client, exp.gpus_per_client) == (0.5, 0.25)
    assert (exp.ray_address, exp.ray_nodes, exp.ray_wait) == ("127.0.0.1:6379", 2, 30.0)
    path.write_text("ray-address: head\nalgorithms: {maml: {}}\n")
    with pytest.raises(ExperimentError, match="key 'ray-address'.*HOST:PORT"):
        load_experiment(path)
    path.write_text("cpus-per-client: 0\nalgorithms: {maml: {}}\n")
    with pytest.raises(ExperimentError, match="key 'cpus-per-client': must be > 0"):
        load_experiment(path)


def test_a_run_waits_for_the_nodes_it_expects_then_names_the_shortfall(monkeypatch):
    import simulations.ray_cluster as rc

    joined = iter([[{"CPU": 4.0}], [{"CPU": 4.0}], [{"CPU": 4.0}, {"CPU": 4.0, "GPU": 2.0}]])
    monkeypatch.setattr(rc, "live_nodes", lambda address: next(joined))
    monkeypatch.setattr(rc.time, "sleep", lambda s: None)
    target = rc.wait_for_nodes(RayTarget("10.0.0.1:6379", "x"), expect_nodes=2, wait=60)
    assert (target.nodes, target.cpus, target.gpus) == (2, 8.0, 2.0)  # the late node counted

    monkeypatch.setattr(rc, "live_nodes", lambda address: [{"CPU": 4.0}])
    t0 = time.monotonic()
    with pytest.raises(RayClusterError, match=r"only 1 of 2 Ray node\(s\) .* within 0.3 s"):
        rc.wait_for_nodes(RayTarget("10.0.0.1:6379", "x"), expect_nodes=2, wait=0.3)
    assert time.monotonic() - t0 < 5


def test_gpu_workers_on_a_machine_without_gpus_stop_before_any_run(tmp_path, capfd):
    """Flower would start, find no GPU and end with "ActorPool is empty" (and exit 0)."""
    import torch

    from simulations.run import main

    if torch.cuda.device_count():
        pytest.skip("this machine has a GPU")
    yaml = tmp_path / "e.yaml"
    yaml.write_text("engine: simulation\nnum-supernodes: 2\nalgorithms: {maml: {}}\n")
    assert main([str(yaml), "--out", str(tmp_path / "out"), "--gpus-per-client", "1"]) == 1
    errors = [x for x in capfd.readouterr().err.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and "gpus-per-client=1, but this machine shows 0 GPU(s)" in errors[0]
