"""Run a command, then stop every process it left behind, by pid: CI never hangs on a stray.

    python .ci/reap.py python -m pytest

Tests stop each Flower process they start. Should one escape anyway (a test killed
mid-way, a SuperExec's app in a session of its own, Ray's daemons), it must not outlive CI
holding its output open, and it must not be found by name either (``pkill -f`` would also
stop other people's SuperLinks on a shared machine). This process makes itself a *child
subreaper* (Linux ``prctl(PR_SET_CHILD_SUBREAPER)``): a descendant whose parent dies is
re-parented to it instead of to init, so when the command ends, every process still below
this one is exactly what the command left behind. Those are sent SIGTERM, then SIGKILL
after a grace period, each by pid and start time (a reused pid is never signalled), and
reaped. The command's exit status is this script's. Standard library only.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 10.0


def become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the state on (field 3), or None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def descendants(root: int) -> dict[int, str]:
    """Every live descendant of ``root``: pid -> start time (clock ticks since boot)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        fields = _stat(int(entry.name))
        if fields is not None and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if (fields := _stat(pid)) is not None:
            found[pid] = fields[19]
        todo.extend(children.get(pid, []))
    return found


def _cmdline(pid: int, width: int = 160) -> str:
    """The process's command line, for the report (what was left behind, by name)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:width] or "?"


def _same(pid: int, start: str) -> bool:
    fields = _stat(pid)
    return fields is not None and fields[0] != "Z" and fields[19] == start


def _reap() -> None:
    """Collect the exit status of every finished child (re-parented orphans included)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def stop_left_behind(grace: float = GRACE_SECONDS) -> list[int]:
    """SIGTERM, then SIGKILL, every process below this one; return their pids."""
    left = descendants(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid, start in left.items():
            if _same(pid, start):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 5.0)
        while any(_same(p, s) for p, s in left.items()) and time.monotonic() < deadline:
            _reap()
            time.sleep(0.1)
    _reap()
    return sorted(left)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python .ci/reap.py COMMAND [ARG ...]", file=sys.stderr)
        return 2
    become_subreaper()
    proc = subprocess.Popen(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):  # pass Ctrl-C / a CI cancel to the command
        signal.signal(sig, lambda signum, frame: proc.send_signal(signum))
    code = proc.wait()
    names = {pid: _cmdline(pid) for pid in descendants(os.getpid())}
    if left := stop_left_behind():
        said = "; ".join(f"{pid} ({names.get(pid, '?')})" for pid in left)
        print(f"reap: stopped {len(left)} process(es) the command left behind: {said}",
              file=sys.stderr)  # fmt: skip
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
