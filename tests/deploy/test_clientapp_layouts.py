"""The other two ClientApp layouts of deploy.federation still serve a run: a long-lived
ClientApp process beside `flower-supernode --isolation process`, and Flower's default of a
process per message. One node, TLS and node authentication, the no-op floor app."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deploy.federation import FLOOR_APP, Federation, run_outcome
from deploy.managed_process import descendants
from tests.deploy.test_federation import RunLog

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("layout", ["process", "per-message"])
def test_a_run_completes_in_the_layout(layout: str, tmp_path: Path):
    federation = Federation(tmp_path / "fed", 1, clientapp=layout)
    helpers = []
    try:
        federation.start()
        out = tmp_path / "floor.json"
        config = {"num-rounds": 2, "min-available-nodes": 1, "out": str(out)}
        _, log = RunLog(federation.start_run(config, FLOOR_APP)).wait(timeout=240)
        assert run_outcome(federation.layout, log).completed, log
        assert len(json.loads(out.read_text())["round-seconds"]) == 2
        if layout == "process":  # every message served by the one ClientApp process
            served = re.findall(
                r"\[fedmeta\] pid (\d+) served", federation.clientapps[0].log_text()
            )
            assert len(served) == 4 and set(served) == {str(federation.clientapps[0].pid)}
        else:
            assert not federation.clientapps
        for proc in federation.processes:
            if proc.alive():
                helpers += descendants(proc.pid)
    finally:
        federation.stop()
    assert not [p.name for p in federation.processes if p.alive()], "processes left running"
    assert not [h.pid for h in helpers if h.alive()], "helper processes left running"
