"""The runner's records cannot be lost or falsified, and every failure a user can cause
ends in one `error:` line: a folder of the user's, a second sweep, a full disk, no
permission, Ctrl-C, --only."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import flwr.common.logger  # noqa: F401  (see below)
import pytest

from common.folders import LOCK, claim
from simulations.run import main
from tests.simulations.test_experiments import _only_error_line, _tiny

# Flower's log handler writes to the sys.stderr of the moment it is imported. Imported
# here, that is pytest's own stream, not the stream of one capfd test closed after it.


def _rounds(tmp_path: Path, rounds: int, extra: str = "") -> Path:
    """_tiny's experiment with ``rounds`` rounds."""
    path = _tiny(tmp_path, extra=extra)
    path.write_text(path.read_text().replace("num-rounds: 1,", f"num-rounds: {rounds},"))
    return path


def test_an_out_folder_of_the_users_is_refused_and_untouched(tmp_path, capfd):
    out = tmp_path / "mine"
    out.mkdir()
    for name, text in {"summary.md": "my table", "summary.json": "{}", "model.pt": "x"}.items():
        (out / name).write_text(text)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main([str(_tiny(tmp_path)), "--out", str(out)]) == 1
    line = _only_error_line(capfd)
    assert str(out) in line and "not empty and holds no records of this project" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


@pytest.mark.parametrize(
    ("below", "problem"), [("", "is a file, not a folder"), ("sub", "a file stands where")]
)
def test_an_out_that_is_a_file_or_below_one_is_one_error_line(tmp_path, capfd, below, problem):
    blocker = tmp_path / "results"
    blocker.write_text("a file")
    assert main([str(_tiny(tmp_path)), "--out", str(blocker / below)]) == 1
    assert problem in _only_error_line(capfd)
    assert blocker.read_text() == "a file"


def test_a_second_sweep_on_one_out_is_refused_with_the_first_ones_pid(tmp_path, capfd):
    out = tmp_path / "out"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # the first sweep: a live process whose PID the lock holds
        claim(out, "experiment")
        host = os.uname().nodename
        (out / LOCK).write_text(json.dumps({"pid": sleeper.pid, "host": host, "started": None}))
        assert main([str(_tiny(tmp_path)), "--out", str(out)]) == 1
        assert f"in use by process {sleeper.pid} " in _only_error_line(capfd)
        assert not (out / "maml").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main([str(_tiny(tmp_path)), "--out", str(out)]) == 0  # dead: taken over
    assert (out / "maml/seed0/summary.json").exists() and not (out / LOCK).exists()


def test_a_cell_whose_run_dir_is_in_use_is_refused(tmp_path, capfd):
    out = tmp_path / "out"
    assert main([str(_tiny(tmp_path)), "--out", str(out)]) == 0
    run_dir = out / "maml/seed0"
    (run_dir / "summary.json").unlink()  # interrupted: it will resume
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder = {"pid": sleeper.pid, "host": os.uname().nodename, "started": None}
        (run_dir / LOCK).write_text(json.dumps(holder))
        capfd.readouterr()
        assert main([str(_tiny(tmp_path)), "--out", str(out)]) == 1
        assert f"{run_dir} is in use by process {sleeper.pid}" in _only_error_line(capfd)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_full_disk_is_one_error_line_and_the_rerun_resumes(tmp_path, capfd, monkeypatch):
    import numpy as np

    savez, calls = np.savez, []

    def disk_fills_in_round_two(file, *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:  # half the file is written, then the disk is full
            file.write(b"PK\x03\x04 partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), file.name)
        return savez(file, *args, **kwargs)

    experiment, out = _rounds(tmp_path, 3), tmp_path / "out"
    monkeypatch.setattr(np, "savez", disk_fills_in_round_two)
    assert main([str(experiment), "--out", str(out)]) == 1
    line = _only_error_line(capfd)
    assert line.startswith("error: No space left on device: ") and "rerun the same" in line
    run_dir = out / "maml/seed0"
    assert not list(run_dir.glob("*.tmp"))  # the partial file was removed
    monkeypatch.setattr(np, "savez", savez)  # space freed
    assert main([str(experiment), "--out", str(out)]) == 0
    assert "(resume)" in capfd.readouterr().out
    rounds = [json.loads(r)["round"] for r in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3]  # round 2, not checkpointed, was run again once


def test_permission_denied_is_one_error_line(tmp_path, capfd, monkeypatch):
    out = tmp_path / "locked" / "out"

    def denied(path, kind):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr("common.folders.claim", denied)
    assert main([str(_tiny(tmp_path)), "--out", str(out)]) == 1
    line = _only_error_line(capfd)
    assert f"Permission denied: {out}" in line and "a folder you can write to" in line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_parent_is_one_error_line(tmp_path, capfd):
    parent = tmp_path / "ro"
    parent.mkdir(mode=0o500)
    try:
        assert main([str(_tiny(tmp_path)), "--out", str(parent / "out")]) == 1
        assert "Permission denied" in _only_error_line(capfd)
    finally:
        parent.chmod(0o700)


def test_only_updates_its_rows_and_keeps_the_others(tmp_path):
    path = tmp_path / "three.yaml"
    path.write_text(
        "engine: loop\nnum-supernodes: 2\nseeds: [0]\n"
        "base: {num-rounds: 1, local-steps: 1, hidden-sizes: '4', min-available-nodes: 1}\n"
        "algorithms: {maml: {}, fedavg: {}, perfedavg-fo: {}}\n"
    )
    out = tmp_path / "out"

    def rows() -> dict[str, str]:
        lines = (out / "summary.md").read_text().splitlines()
        return {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ")}

    assert main([str(path), "--out", str(out), "--only", "maml,fedavg"]) == 0
    first = rows()
    assert main([str(path), "--out", str(out), "--only", "perfedavg-fo"]) == 0
    assert set(rows()) == {"algorithm", "maml", "fedavg", "perfedavg-fo"}
    assert rows()["maml"] == first["maml"] and rows()["fedavg"] == first["fedavg"]
    # A row that finished under other settings is not this table's row.
    out = tmp_path / "other"
    assert main([str(path), "--out", str(out), "--only", "maml"]) == 0
    assert main([str(path), "--out", str(out), "--only", "fedavg", "--set", "eval-steps=2"]) == 0
    assert set(rows()) == {"algorithm", "fedavg"}


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.slow  # two runner processes: 30-60 s on a shared 2-core machine
def test_sigint_says_where_to_resume_exits_130_and_the_rerun_resumes(tmp_path):
    experiment = _rounds(tmp_path, 150, ", evaluate-every: 1000")
    out = tmp_path / "out"
    command = [sys.executable, "-m", "simulations.run", str(experiment), "--out", str(out)]
    env = os.environ | {"PYTHONPATH": os.getcwd()}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    checkpoint = out / "maml/seed0/checkpoint.npz"
    try:
        _wait_for(checkpoint.exists)  # round 1 is on disk
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 130, stderr.decode()[-2000:]
    lines = stderr.decode().splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr.decode(), stderr.decode()[-2000:]
    assert "interrupted after round " in errors[0]
    assert errors[0].endswith("rerun the same command to resume")
    done = int(errors[0].split("interrupted after round ")[1].split()[0])
    assert 1 <= done < 150
    assert not (out / LOCK).exists() and not (out / "maml/seed0" / LOCK).exists()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "(resume)" in rerun.stdout and f"resuming from {out / 'maml/seed0'} at round " in (
        rerun.stdout + rerun.stderr
    )
    assert Path(out / "maml/seed0/summary.json").exists()


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (root only, where mounting is allowed), unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root and the permission to mount")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_real_full_disk_is_one_error_line_and_the_rerun_finishes(tiny_disk, tmp_path, capfd):
    experiment, out = _rounds(tmp_path, 40), tiny_disk / "out"
    assert main([str(experiment), "--out", str(out)]) == 1
    line = _only_error_line(capfd)
    assert line.startswith("error: No space left on device: ") and "rerun the same" in line
    assert not list(out.rglob("*.tmp"))
    subprocess.run(["mount", "-o", "remount,size=1m", str(tiny_disk)], check=True)
    assert main([str(experiment), "--out", str(out)]) == 0
    summary = json.loads((out / "maml/seed0/summary.json").read_text())
    assert summary["mse-after-mean"] > 0  # scored, whichever file the disk filled up on
