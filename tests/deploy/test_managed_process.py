"""Every process a federation starts is stopped, including helpers that left its group."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

from deploy.managed_process import descendants, process_id, start_process

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")

# A parent with one child in its group and one that escapes into a session of its own,
# as flower-superlink does with flower-superexec.
PARENT = """
import subprocess, sys, time
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
print("ready", flush=True)
time.sleep(300)
"""


def _started(tmp_path: Path):
    proc = start_process("parent", [sys.executable, "-c", PARENT], os.environ, tmp_path / "p.log")
    deadline = time.monotonic() + 30
    while "ready" not in proc.log_text() or len(descendants(proc.pid)) < 2:
        assert time.monotonic() < deadline, proc.log_text()
        time.sleep(0.05)
    return proc, descendants(proc.pid)


def test_stop_ends_the_process_its_group_and_escaped_helpers(tmp_path):
    proc, children = _started(tmp_path)
    escaped = [c for c in children if os.getpgid(c.pid) != proc.pid]
    assert len(escaped) == 1  # the setup really has a helper outside the group
    proc.stop(grace=5)
    assert not proc.alive()
    assert not [c.pid for c in children if c.alive()]


def test_crash_kills_the_group_at_once(tmp_path):
    proc, children = _started(tmp_path)
    in_group = [c for c in children if os.getpgid(c.pid) == proc.pid]
    started = time.monotonic()
    proc.crash()
    assert time.monotonic() - started < 5
    assert proc.popen.returncode == -9
    deadline = time.monotonic() + 5
    while any(c.alive() for c in in_group):
        assert time.monotonic() < deadline, "the group outlived SIGKILL"
        time.sleep(0.05)
    escaped = [c for c in children if os.getpgid(c.pid) != proc.pid]
    assert escaped and all(c.alive() for c in escaped)  # SIGKILL of the group missed it
    proc.stop(grace=5)  # the escaped one is still ours to clean up, though its parent died
    assert not [c.pid for c in escaped if c.alive()], "a helper outlived crash() + stop()"


def test_a_process_id_survives_pid_reuse_checks(tmp_path):
    proc = start_process("short", [sys.executable, "-c", "pass"], os.environ, tmp_path / "s.log")
    pid = process_id(proc.pid)
    proc.popen.wait()
    assert pid is not None and not pid.alive()
    assert process_id(os.getpid()) is not None and process_id(os.getpid()).alive()
