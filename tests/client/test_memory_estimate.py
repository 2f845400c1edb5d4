"""clients-per-node is checked against memory before anything is allocated: a federation
that cannot fit is one error naming the key and the estimate, not a MemoryError reported
after the server's 120 s wait as "start more SuperNodes"."""

from __future__ import annotations

import time

import pytest

from client import runtime
from client.runtime import (
    NODE_BYTES_PER_SCORED_CLIENT,
    SERVER_BYTES_PER_CLIENT,
    SERVER_BYTES_PER_SCORED_CLIENT,
    federation_bytes,
)
from common.config import parse_settings
from server.nodes import NodesUnavailable
from simulations.loop import run_in_loop
from simulations.run import main

TINY = {"num-rounds": 1, "local-steps": 1, "hidden-sizes": "8"}


def test_the_estimate_grows_with_the_scored_clients_and_the_sampled_updates():
    settings = parse_settings(TINY | {"fraction-train": 0.5})
    model_bytes = sum(p.numel() * 4 for p in runtime._skeleton(settings).parameters())
    node = federation_bytes(settings, 1000, 100, server_here=False)
    assert node == 100 * NODE_BYTES_PER_SCORED_CLIENT + 50 * model_bytes * 2  # its half sampled
    both = federation_bytes(settings, 1000, 1000, server_here=True)
    scored = NODE_BYTES_PER_SCORED_CLIENT + SERVER_BYTES_PER_SCORED_CLIENT
    assert both == 1000 * (scored + SERVER_BYTES_PER_CLIENT) + 500 * model_bytes * 3
    metasgd = parse_settings(TINY | {"fraction-train": 0.5, "algorithm": "metasgd"})
    assert federation_bytes(metasgd, 1000, 100, False) > node  # alpha doubles each update
    sampled = parse_settings(TINY | {"fraction-train": 0.5, "final-fraction-evaluate": 0.1})
    assert federation_bytes(sampled, 1000, 100, False) == node - 90 * NODE_BYTES_PER_SCORED_CLIENT


def test_the_runner_refuses_too_many_clients_at_once(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(runtime, "available_memory", lambda: 128 * 2**30)  # the GPU machine
    path = tmp_path / "big.yaml"
    path.write_text(
        "engine: loop\nnum-supernodes: 10\nbase: {clients-per-node: 100000000}\n"
        "algorithms: {maml: {}}\n"
    )
    t0 = time.monotonic()
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert time.monotonic() - t0 < 30  # nothing was allocated, nothing waited for
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "key 'base.clients-per-node'" in err
    assert "1,000,000,000 clients on this machine" in err and "the 128.0 GiB available" in err
    assert "Start more SuperNodes" not in err and not (tmp_path / "out").exists()


def test_a_node_refuses_its_share_and_the_server_stops_without_waiting(tmp_path, monkeypatch):
    """On SuperNodes the server's machine cannot check the nodes' memory: each node checks
    its own share before its reply lists its clients, and the server stops at once."""
    monkeypatch.setattr(runtime, "available_memory", lambda: 10 * 2**20)  # a 10 MiB node
    config = TINY | {"clients-per-node": 1_000_000, "run-dir": str(tmp_path)}
    config |= {"node-wait-timeout": 120.0}
    t0 = time.monotonic()
    with pytest.raises(NodesUnavailable) as err:
        run_in_loop(config, num_nodes=2)
    assert time.monotonic() - t0 < 30  # not after node-wait-timeout
    message = str(err.value)
    assert "every connected node (2) failed to say which clients it hosts" in message
    assert "'clients-per-node' has value 1000000: 1,000,000 clients on this node" in message
    assert "(the final round's scores" in message and "than the 10.0 MiB available" in message
