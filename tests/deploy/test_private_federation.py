"""SecAgg+ with DP through a real federation: a SuperLink and 3 SuperNodes as processes on
loopback, with TLS and SuperNode authentication (deploy/federation.py), 2 rounds.

Each SecAgg+ round is four message trips per node (setup, share keys, masked vectors,
unmask), and Flower starts the ClientApp afresh for each message: about 2-4 minutes here.
"""

from __future__ import annotations

import json
import math
import subprocess
import threading
import time

import pytest

from deploy.federation import local_federation, run_outcome
from server.privacy import PrivacyLedger

pytestmark = pytest.mark.slow

NUM_NODES = 3
RUN = {
    "algorithm": "maml",
    "hidden-sizes": "16",
    "clients-per-node": 2,
    "num-rounds": 2,
    "local-steps": 2,
    "eval-steps": 2,
    "fraction-train": 1.0,
    "fraction-evaluate": 1.0,
    "min-available-nodes": NUM_NODES,
    "node-wait-timeout": 120.0,
    "round-timeout": 300.0,
    "weighting": "uniform",
    "secagg": True,
    "dp": True,
    "dp-clip": 0.05,
    "dp-noise-multiplier": 1.0,
    "dp-adaptive": True,
    "dp-clipped-count-stddev": 1.0,
}


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory):
    """Started once; every process it started is stopped by id on exit, also on failure."""
    with local_federation(tmp_path_factory.mktemp("private-federation"), NUM_NODES) as fed:
        yield fed
    assert not [p.name for p in fed.processes if p.alive()], "processes left running"


def _collect(proc: subprocess.Popen, lines: list[str]) -> threading.Thread:
    def read() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_two_rounds_of_secagg_plus_with_dp_over_tls_with_node_auth(federation, tmp_path):
    assert federation.certs is not None  # TLS certificates and the nodes' registered keys
    run_dir = tmp_path / "run"
    proc = federation.start_run(RUN | {"run-dir": str(run_dir)})
    lines: list[str] = []
    reader = _collect(proc, lines)
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the run did not finish in 600 s:\n" + "".join(lines)) from None
    reader.join(timeout=10)
    log = "".join(lines)
    outcome = run_outcome(federation.layout, log)
    assert outcome.completed, f"{outcome}\n{log}"
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    for row in rows:
        assert row["privacy"]["secagg"]["nodes"] == NUM_NODES
        assert row["accepted"] == row["privacy"]["secagg"]["clients"] > 0
        assert not row["dropped"]
    assert 0 < rows[0]["privacy"]["epsilon"] < rows[1]["privacy"]["epsilon"]
    assert rows[1]["privacy"]["clip"] != RUN["dp-clip"]  # adaptive clipping moved it
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epsilon"] == pytest.approx(rows[1]["privacy"]["epsilon"])
    assert summary["clients"] == NUM_NODES * RUN["clients-per-node"]


DISTRIBUTED = {
    k: v for k, v in RUN.items() if k not in ("dp-adaptive", "dp-clipped-count-stddev")
} | {"dp-mechanism": "distributed", "min-available-nodes": 2}  # the survivors go on
VICTIM = 2


def test_distributed_dp_accounts_the_noise_that_survived_a_node_dying_mid_round(
    federation, tmp_path
):
    """Node VICTIM gets SecAgg+'s third message of round 1 ('collect masked vectors': the
    keys are shared, its noised sum not yet sent) and is killed; round 1 sums the other two
    nodes' shares, and epsilon counts only those; round 2 runs on the two survivors."""
    run_dir = tmp_path / "run"
    victim = federation.nodes[VICTIM]
    seen = victim.log_text().count("Receiving: train message")  # the earlier test's
    proc = federation.start_run(DISTRIBUTED | {"run-dir": str(run_dir)})
    lines: list[str] = []
    reader = _collect(proc, lines)
    deadline = time.monotonic() + 300
    while victim.log_text().count("Receiving: train message") < seen + 3:
        assert proc.poll() is None, "the run ended before the kill:\n" + "".join(lines)
        assert time.monotonic() < deadline, "the victim never got its masked-vector message"
        time.sleep(0.1)
    federation.crash_node(VICTIM)
    try:
        proc.wait(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("the run did not finish in 600 s:\n" + "".join(lines)) from None
    reader.join(timeout=10)
    log = "".join(lines)
    assert run_outcome(federation.layout, log).completed, log
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    first, second = rows[0]["privacy"], rows[1]["privacy"]
    assert first["mechanism"] == "distributed" and rows[0]["accepted"] is None
    assert (first["nodes"], first["nodes-summed"]) == (NUM_NODES, NUM_NODES - 1)
    z = RUN["dp-noise-multiplier"]
    assert first["effective-noise-multiplier"] == pytest.approx(z * math.sqrt(2 / 3))
    assert any("noise share is missing" in d for d in rows[0]["dropped"]), rows[0]["dropped"]
    assert (second["nodes"], second["nodes-summed"]) == (NUM_NODES - 1, NUM_NODES - 1)
    assert second["effective-noise-multiplier"] == pytest.approx(z)
    ledger = PrivacyLedger().add(first["q"], first["effective-noise-multiplier"])
    ledger = ledger.add(second["q"], second["effective-noise-multiplier"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epsilon"] == pytest.approx(ledger.epsilon(RUN.get("dp-delta", 1e-5)))
    assert summary["epsilon"] > PrivacyLedger().add(1.0, z, 2).epsilon(1e-5)  # the drop cost
