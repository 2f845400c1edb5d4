"""Devices that hold their own data: a TLS + node-auth SuperLink, SuperNodes each with its own CSV.

Two SuperNodes each read their own CSV (node config ``data-path``, no ``partition-id``) and
host every user in it; the model is a factory in a module written to a temporary folder
outside the project and reached through ``PYTHONPATH``, as a user's module would be. A
third node's CSV has a NaN feature: its own start-up check names the file, column and
client, the server logs that line from the node's error reply, and the run goes on with
the two good nodes. The server is given no data-path: it reads no node data. Costs about
1.5-3 minutes on 2 shared cores.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from client.model_store import INFO_FILE
from deploy.federation import PROJECT_ROOT, Federation, run_outcome
from deploy.managed_process import descendants
from tests.deploy.test_federation import RunLog
from tests.user_code import write_user_module

pytestmark = pytest.mark.slow

USERS_PER_NODE = 4
FEATURES = ("f0", "f1", "f2", "f3")


def write_device_csv(path: Path, prefix: str, seed: int, nan_at: int | None = None) -> Path:
    """A device's sensor table: a user column, 4 features, an activity label in 0..2."""
    rng = np.random.default_rng(seed)
    weights = np.random.default_rng(99).normal(size=(len(FEATURES), 3))
    lines = ["user," + ",".join(FEATURES) + ",activity"]
    for u in range(USERS_PER_NODE):
        shift = rng.normal(size=len(FEATURES))
        for _ in range(30):
            x = rng.normal(size=len(FEATURES)) + shift
            cells = [f"{v:.4f}" for v in x]
            if nan_at is not None and len(lines) == nan_at:
                cells[1] = ""
            lines.append(f"{prefix}{u}," + ",".join(cells) + f",{int(np.argmax(x @ weights))}")
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def user_setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("own-data")
    code = root / "user_code"
    code.mkdir()
    module = write_user_module(code)
    csvs = [
        write_device_csv(root / "phone-a.csv", "alice-", 1),
        write_device_csv(root / "phone-b.csv", "bob-", 2),
        write_device_csv(root / "phone-c.csv", "carol-", 3, nan_at=5),  # line 6 of its file
    ]
    return root, code, module, csvs


def test_nodes_train_a_user_model_on_their_own_csvs(user_setup, monkeypatch):
    root, code, module, csvs = user_setup
    # The user's module is importable only through PYTHONPATH, in every process.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(code), str(PROJECT_ROOT)]))
    run_dir = root / "run"
    config = {
        "dataset": "table", "client-column": "user", "label-column": "activity",
        "feature-columns": ",".join(FEATURES), "num-classes": 3,
        "model": f"{module}:small_mlp", "model-args": json.dumps({"hidden": 8}),
        "algorithm": "maml", "num-rounds": 2, "fraction-train": 1.0, "fraction-evaluate": 1.0,
        "local-steps": 2, "eval-steps": 3, "batch-size": 5, "min-available-nodes": 2,
        "node-wait-timeout": 90.0, "round-timeout": 300.0, "run-dir": str(run_dir),
    }  # fmt: skip
    fed = Federation(root / "federation", 3, node_data=[str(p) for p in csvs])
    helpers = []
    try:
        fed.start()
        _, log = RunLog(fed.start_run(config)).wait(timeout=420)
        outcome = run_outcome(fed.layout, log)  # asked of the SuperLink, while it is up
        for proc in fed.processes:
            if proc.alive():
                helpers += descendants(proc.pid)
    finally:
        fed.stop()
    assert not [p.name for p in fed.processes if p.alive()], "processes left running"
    assert not [h.pid for h in helpers if h.alive()], "helper processes left running"

    assert outcome.completed, f"{outcome}\n{log}"
    # The bad node's own check, logged by the server by name: file, line, column, client.
    bad = [line for line in log.splitlines() if "did not say its partition" in line]
    assert bad, log
    assert all(
        part in bad[0]
        for part in ("phone-c.csv, line 6", "feature column 'f1'", "client 'carol-0'")
    ), bad[0]
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[-1]["eval"]["clients"] == 2 * USERS_PER_NODE  # every user of the good nodes
    assert rows[-1]["accepted"] == 2 * USERS_PER_NODE
    # Each good node kept one personalised model per user of its own file.
    for index in (0, 1):
        kept = sorted((fed.layout.model_dir(index)).glob(f"partition-*/{INFO_FILE}"))
        assert len(kept) == USERS_PER_NODE, kept
    assert not fed.layout.model_dir(2).exists() or not any(fed.layout.model_dir(2).iterdir())
