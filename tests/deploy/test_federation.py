"""A real federation: one SuperLink and 3 SuperNodes as processes on loopback, with TLS and
SuperNode authentication, running the real app on real data (scikit-learn's digits).

Each SuperNode runs as ``python -m deploy.node`` (deploy.federation's default): one process
holds the SuperNode and a ClientApp that serves every message. Costs 1.5-3 minutes on 2
shared cores, most of it the SuperLink's wait for the killed node's missed heartbeats:
Flower 1.42 declares a node unavailable 60 s after its last heartbeat (sent every
17.5-22.5 s), with no flag to shorten that.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from client.model_store import INFO_FILE, STATE_FILE
from common.config import parse_settings
from common.models import model_for
from deploy.federation import FLOOR_APP, Federation, run_outcome
from deploy.make_certs import write_node_key
from deploy.managed_process import descendants

pytestmark = pytest.mark.slow

NUM_NODES = 3
VICTIM = 2
RUN = {
    "dataset": "digits",
    "partition": "dirichlet",
    "model": "mlp",
    "hidden-sizes": "32",
    "local-steps": 2,
    "eval-steps": 5,
    "num-rounds": 2,
    "fraction-train": 1.0,  # every node trains in round 1, so the victim dies mid-round
    "fraction-evaluate": 1.0,
    "min-available-nodes": 2,
    "node-wait-timeout": 60.0,
    "round-timeout": 300.0,
}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    """Started once for the module; every process it started is stopped, also on failure."""
    fed = Federation(tmp_path_factory.mktemp("federation"), NUM_NODES)  # FLWR_HOMEs inside
    helpers = []
    try:
        fed.start()
        yield fed
    finally:
        for proc in fed.processes:
            if proc.alive():
                helpers += descendants(proc.pid)
        fed.stop()
    assert fed.processes, "the federation started nothing"
    assert not [p.name for p in fed.processes if p.alive()], "processes left running"
    assert not [h.pid for h in helpers if h.alive()], "helper processes left running"


class RunLog:
    """The streamed log of a `flwr run`, collected by a thread so a test can wait on it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def wait(self, timeout: float) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"run did not finish in {timeout} s:\n{self.text}") from None
        self._thread.join(timeout=10)
        return code, self.text

    @property
    def text(self) -> str:
        return "".join(self.lines)


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


def test_nodes_with_registered_keys_are_online(federation: Federation):
    assert set(federation.node_ids.values()) <= federation.online_node_ids()
    assert len(federation.node_ids) == NUM_NODES


def test_an_unregistered_node_is_refused(federation: Federation, tmp_path: Path):
    stranger = federation.start_supernode(0, private_key=write_node_key(tmp_path / "stranger"))
    stranger.popen.wait(timeout=90)
    assert stranger.popen.returncode != 0
    assert "Failed to activate SuperNode" in stranger.log_text()
    assert federation.online_node_ids() == set(federation.node_ids.values())


def test_run_goes_on_when_a_node_dies_mid_round(federation: Federation, tmp_path: Path):
    run_dir = tmp_path / "run"
    victim_log = federation.nodes[VICTIM]
    run = RunLog(federation.start_run(RUN | {"run-dir": str(run_dir)}))
    # The victim has its round-1 train message: its ClientApp is starting or training.
    _wait_for(
        lambda: "Receiving: train message" in victim_log.log_text() or run.proc.poll() is not None,
        timeout=180,
        what="the victim's train message",
    )
    assert run.proc.poll() is None, f"the run ended before the kill:\n{run.text}"
    federation.crash_node(VICTIM)

    _, log = run.wait(timeout=300)
    outcome = run_outcome(federation.layout, log)
    assert outcome.completed, f"{outcome}\n{log}"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    # Round 1: the victim's reply became Flower's "node unavailable" error and was dropped.
    assert rows[0]["accepted"] == NUM_NODES - 1
    assert any("Node Unavailable" in reason for reason in rows[0]["dropped"]), rows[0]["dropped"]
    # Round 2 trained and scored the survivors only.
    assert rows[1]["accepted"] == NUM_NODES - 1 and not rows[1]["dropped"]
    assert rows[1]["eval"]["clients"] == NUM_NODES - 1
    assert "round 2/2" in log
    _check_personalized_models(federation, run_dir)
    _check_one_clientapp_process_per_node(federation)


SERVED = re.compile(r"\[fedmeta\] pid (\d+) served a (\w+) message .*apps loaded: (\d+)\)")


def _check_one_clientapp_process_per_node(federation: Federation) -> None:
    """Every message a survivor got was served by one process, the node's own, app loaded once.

    A survivor got the partition query, then train and evaluate in rounds 1 and 2.
    """
    for index in range(NUM_NODES):
        if index == VICTIM:
            continue
        served = SERVED.findall(federation.nodes[index].log_text())
        kinds = [kind for _, kind, _ in served]
        assert kinds.count("train") >= 2 and kinds.count("evaluate") >= 2, served
        assert {int(pid) for pid, _, _ in served} == {federation.nodes[index].pid}, served
        assert {loads for _, _, loads in served} == {"1"}, served


def _check_personalized_models(federation: Federation, run_dir: Path) -> None:
    """Survivors keep round 2's personalised model, loadable into the configured model."""
    settings = parse_settings(json.loads((run_dir / "config.json").read_text()))
    for index in range(NUM_NODES):
        folder = federation.layout.model_dir(index)
        if index == VICTIM:  # died in round 1 before any evaluation
            assert not (folder / STATE_FILE).exists()
            continue
        info = json.loads((folder / INFO_FILE).read_text())
        assert info["round"] == 2 and info["partition-id"] == index
        assert info["scores"]["acc-after"] >= 0
        model = model_for(settings)
        model.load_state_dict(torch.load(folder / STATE_FILE, weights_only=True))


def test_too_few_nodes_fail_the_run_after_node_wait_timeout(federation: Federation, tmp_path):
    config = RUN | {
        "min-available-nodes": NUM_NODES + 1,  # more than will ever be connected
        "node-wait-timeout": 3.0,
        "run-dir": str(tmp_path / "run"),
    }
    started = time.monotonic()
    _, log = RunLog(federation.start_run(config)).wait(timeout=180)
    outcome = run_outcome(federation.layout, log)
    assert outcome.status == "finished:failed", f"{outcome}\n{log}"
    # The ServerApp's NodesUnavailable says what was missing and how to fix it.
    assert f"min-available-nodes={NUM_NODES + 1}" in outcome.details
    assert "node-wait-timeout" in outcome.details
    assert time.monotonic() - started < 120
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_floor_app_runs_through_the_same_nodes(federation: Federation, tmp_path: Path):
    """Flower's floor (a no-op ClientApp): a second FAB, served by the same node processes."""
    survivors = [i for i in range(NUM_NODES) if federation.nodes[i].alive()]
    out = tmp_path / "floor.json"
    config = {"num-rounds": 2, "min-available-nodes": len(survivors), "out": str(out)}
    _, log = RunLog(federation.start_run(config, FLOOR_APP)).wait(timeout=180)
    assert run_outcome(federation.layout, log).completed, log
    seconds = json.loads(out.read_text())["round-seconds"]
    assert len(seconds) == 2 and all(0 < s < 60 for s in seconds)
    for index in survivors:  # the node swapped apps in place: same pid, one more app loaded
        served = SERVED.findall(federation.nodes[index].log_text())
        assert {int(pid) for pid, _, _ in served} == {federation.nodes[index].pid}
        assert int(served[-1][2]) >= 2, served[-3:]
