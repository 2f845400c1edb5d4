"""SecAgg+ with DP through a real federation: a SuperLink and 3 SuperNodes as processes on
loopback, with TLS and SuperNode authentication (deploy/federation.py), 2 rounds.

Each SecAgg+ round is four message trips per node (setup, share keys, masked vectors,
unmask), and Flower starts the ClientApp afresh for each message: about 2-4 minutes here.
"""

from __future__ import annotations

import json
import subprocess
import threading

import pytest

from deploy.federation import local_federation, run_outcome

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
