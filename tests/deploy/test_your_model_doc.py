"""docs/your-model.md runs as written: every fenced bash block, in order, in one shell.

The walk-through's own sizes are small (36 users, 30 and 5 rounds), so the test runs the
commands unchanged in a temporary folder: simulate, tune, a TLS + node-auth federation of
3 SuperNodes on their own CSVs, personalizing on a device, and the ONNX export. Costs about
5-7 minutes on 2 shared cores.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from common.processes import stop_process_group
from deploy.federation import PROJECT_ROOT

pytestmark = pytest.mark.slow

DOC = PROJECT_ROOT / "docs" / "your-model.md"
FENCED_BASH = re.compile(r"^```bash\n(.*?)^```", re.DOTALL | re.MULTILINE)


def doc_commands(text: str) -> list[str]:
    return [block.strip() for block in FENCED_BASH.findall(text)]


def test_the_doc_has_every_step():
    blocks = doc_commands(DOC.read_text())
    script = "\n".join(blocks)
    for step in (
        "python make_data.py", "python -m simulations.run sensors.yaml",
        "run_experiment(experiment)", "python -m simulations.analysis.pick_best",
        "python -m deploy.federation demo --own-data", "python -m client.personalize",
        "--onnx", "onnxruntime",
    ):  # fmt: skip
        assert step in script, step


def test_every_command_of_the_doc_runs(tmp_path: Path):
    script = "set -euo pipefail\n" + "\n".join(doc_commands(DOC.read_text()))
    env = os.environ | {
        "PYTHONPATH": str(PROJECT_ROOT),  # what `pip install -e .` gives a user
        "FLWR_HOME": str(tmp_path / "flwr-home"),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "RAY_ADDRESS": "local",
    }
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=900)
    finally:
        stop_process_group(proc)  # and every process it started, also on a timeout
    assert proc.returncode == 0, out[-6000:]
    work = tmp_path / "my-project"
    assert (work / "results" / "sensors" / "summary.md").is_file()
    assert "maml" in (work / "results" / "sensors-tuning" / "summary.csv").read_text()
    assert re.search(r"maml, personalized accuracy: 0\.\d+", out), out[-2000:]
    assert "finished:completed" in out
    assert (work / "runs" / "sensors-federation" / "model.pt").is_file()
    assert (work / "phone-a-user0" / "personalized.onnx").is_file()
    assert re.search(r"activity of the first 5 readings: \[[0-2 ]+\]", out), out[-2000:]
