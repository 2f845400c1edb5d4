"""Ctrl-C during a run on the Simulation Engine: one line saying where to resume, exit 130,
every process the runner started stopped, and the rerun resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow


def test_sigint_on_the_engine_stops_everything_and_the_rerun_resumes(tmp_path: Path):
    experiment = tmp_path / "tiny.yaml"
    experiment.write_text(
        "engine: simulation\nnum-supernodes: 2\nseeds: [0]\n"
        "base: {num-rounds: 60, local-steps: 1, hidden-sizes: '8', evaluate-every: 1000}\n"
        "algorithms: {maml: {}}\n"
    )
    out = tmp_path / "out"
    command = [sys.executable, "-m", "simulations.run", str(experiment), "--out", str(out)]
    env = os.environ | {
        "PYTHONPATH": os.getcwd(), "RAY_ADDRESS": "local",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
    }  # fmt: skip
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = out / "maml/seed0/checkpoint.npz"
    started: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 400
        while not checkpoint.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no round finished"
            time.sleep(0.2)
        started = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    text = stderr.decode()
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert proc.returncode == 130, text[-3000:]
    assert len(errors) == 1 and "interrupted after round " in errors[0], text[-3000:]
    assert errors[0].endswith("rerun the same command to resume")
    assert "Traceback" not in text
    alive = [p for p in started if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    for p in alive:  # stop what was left, by pid, before failing
        p.kill()
    assert not alive, [p.pid for p in alive]

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "(resume)" in rerun.stdout and (out / "maml/seed0/summary.json").exists()
