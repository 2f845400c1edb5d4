"""CI's .ci/reap.py stops, by pid, what the command left behind, and nothing else."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

REAP = Path(__file__).resolve().parents[2] / ".ci" / "reap.py"
pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")

# Starts a stray in a session of its own (as Flower's SuperExec starts its apps), writes its
# pid, and exits at once: the stray is orphaned while the command "succeeded".
LEAVE_A_STRAY = """
import subprocess, sys
stray = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"],
                         start_new_session=True)
open(sys.argv[1], "w").write(str(stray.pid))
sys.exit(3)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_stray_is_stopped_and_the_exit_status_kept(tmp_path: Path):
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        pid_file = tmp_path / "stray.pid"
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, str(REAP), sys.executable, "-c", LEAVE_A_STRAY, str(pid_file)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        stray = int(pid_file.read_text())
        assert done.returncode == 3
        assert not _alive(stray), "the stray outlived reap.py"
        assert f"{stray} (" in done.stderr and "time.sleep(300)" in done.stderr
        assert time.monotonic() - started < 30
        assert _alive(bystander.pid), "reap.py stopped a process it did not start"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_clean_command_leaves_nothing_to_say():
    done = subprocess.run(
        [sys.executable, str(REAP), sys.executable, "-c", "pass"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stderr == ""
