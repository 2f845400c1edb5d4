"""Processes a federation starts, each owned until it is stopped, also when something fails.

Flower's components spawn helpers: a SuperLink starts ``flower-superexec`` in a session of
its own (which starts ``flwr-serverapp``), a SuperNode starts ``flower-superexec`` (which
starts one ``flwr-clientapp`` per message). Each process we start gets its own session and
is stopped with :func:`common.processes.stop_process_group` (its group, then every
descendant it had). On top of that, :meth:`ManagedProcess.stop` returns only once every
descendant seen before the stop is gone, matched by pid *and* start time so that a
recycled pid is never signalled: a test can then assert that nothing is left.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from common.processes import stop_process_group

PROC = Path("/proc")


@dataclass(frozen=True)
class ProcessId:
    """A pid together with its start time (clock ticks since boot): unique while it lives."""

    pid: int
    start: int

    def alive(self) -> bool:
        """Running and still the same process; a zombie (exited, not yet reaped) is not."""
        fields = _stat_fields(self.pid)
        return fields is not None and fields[0] != "Z" and int(fields[19]) == self.start


@dataclass
class ManagedProcess:
    name: str
    popen: subprocess.Popen
    log_path: Path
    # Helpers that outlived a crash() (those in sessions of their own, e.g. a SuperLink's
    # SuperExec): once the parent is dead they can no longer be found below it, so stop()
    # still stops them by id.
    orphans: list[ProcessId] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def crash(self) -> None:
        """SIGKILL the process group at once, as a power cut would: no goodbye to anyone."""
        if self.alive():
            helpers = descendants(self.pid)
            os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()
            self.orphans += [h for h in helpers if h.alive()]

    def stop(self, grace: float = 10) -> None:
        """SIGTERM (then SIGKILL) the group and its helpers; return once all are gone."""
        helpers = descendants(self.pid) if self.alive() else []
        stop_process_group(self.popen, grace=grace)
        kill_all(helpers + self.orphans, timeout=grace)
        self.orphans = []


def kill_all(processes: Sequence[ProcessId], timeout: float = 10) -> None:
    """SIGKILL those still alive and wait until they are gone (or raise after ``timeout``)."""
    for proc in processes:
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):  # it may exit meanwhile
                os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while survivors := [p.pid for p in processes if p.alive()]:
        if time.monotonic() > deadline:
            raise ProcessLookupError(f"processes {survivors} survived SIGKILL for {timeout:g} s")
        time.sleep(0.05)


def start_process(
    name: str,
    cmd: Sequence[str],
    env: Mapping[str, str],
    log_path: Path,
    cwd: Path | None = None,
) -> ManagedProcess:
    """Start ``cmd`` in a new session with stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        popen = subprocess.Popen(
            list(cmd), env=dict(env), cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    return ManagedProcess(name, popen, log_path)


def descendants(pid: int) -> list[ProcessId]:
    """Every live descendant of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.glob("[0-9]*"):
        stat = _stat_fields(int(entry.name))
        if stat is not None:
            children.setdefault(int(stat[1]), []).append(int(entry.name))
    found, todo = [], list(children.get(pid, []))
    while todo:
        child = todo.pop()
        start = _start_time(child)
        if start is not None:
            found.append(ProcessId(child, start))
        todo.extend(children.get(child, []))
    return found


def process_id(pid: int) -> ProcessId | None:
    """The live process ``pid`` as a :class:`ProcessId`, or None if there is none."""
    start = _start_time(pid)
    return ProcessId(pid, start) if start is not None else None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        raw = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    # The command name is parenthesised and may itself contain spaces or parentheses.
    return raw[raw.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None else None  # field 22: starttime
