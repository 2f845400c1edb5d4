"""Folders the project keeps records in: whose they are, and one writer at a time.

A run-dir and an experiment's ``--out`` hold results that took hours to make, so:

- :func:`claim` makes a folder ours (a marker file, ``.fedmeta-flower.json``, names its
  kind) and refuses a folder that is not empty and not ours, touching nothing in it: a
  user's own ``summary.md`` or ``model.pt`` is never overwritten.
- :class:`FolderLock` lets one process at a time write into a folder. The lock file
  ``.lock`` holds the writer's PID; it is created with ``O_CREAT | O_EXCL``, so of two
  processes starting at once exactly one gets it. A second writer is refused with the
  first one's PID. A lock left by a process that died (killed, power cut) is taken over.
- :func:`temporary_name` gives every process its own temporary file, so two writers (or a
  writer and a crashed one's leftovers) never share one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: the O_EXCL create alone decides
    fcntl = None  # type: ignore[assignment]

MARKER = ".fedmeta-flower.json"  # {"kind": "run-dir" | "experiment"}
LOCK = ".lock"

# What folders written before the marker existed hold. Such a folder counts as ours only
# when it holds nothing else and has a checkpoint or a config.json of ours (a run-dir),
# or run-dirs below it (an experiment), so a user's folder with a summary.md is refused.
RUN_FILES = frozenset(
    {
        "config.json", "metrics.jsonl", "clients.jsonl", "checkpoint.npz", "model.pt",
        "summary.json", "federation.json", "flwr.log", LOCK, MARKER,
        "checkpoint.tmp.npz", "model.tmp.pt",  # the temporary names of older versions
    }
)  # fmt: skip
EXPERIMENT_FILES = frozenset({"summary.md", "summary.csv", LOCK, MARKER})


class FolderError(ValueError):
    """A records folder that this process may not write into, and why."""


def claim(path: str | Path, kind: str) -> Path:
    """Create ``path`` or accept it as this project's ``kind`` folder; mark it ours.

    Raises FolderError, before anything in it is touched, for a path that is a file, a
    folder that is not empty and not ours, or one of ours of another kind.
    """
    folder = Path(path).expanduser().resolve()
    if folder.exists() and not folder.is_dir():
        raise FolderError(f"{folder} is a file, not a folder; give a folder for the {kind}")
    folder.mkdir(parents=True, exist_ok=True)
    found = recorded_kind(folder)
    if found is None and any(folder.iterdir()):
        raise FolderError(
            f"{folder} is not empty and holds no records of this project (no {MARKER}); "
            f"nothing in it was touched. Give an empty or new folder for the {kind}"
        )
    if found is not None and found != kind:
        raise FolderError(
            f"{folder} holds records of kind '{found}', not '{kind}'; nothing in it was touched. "
            f"Give another folder for the {kind}"
        )
    if not (folder / MARKER).exists():
        _write_once(folder / MARKER, json.dumps({"kind": kind}) + "\n")
    return folder


def recorded_kind(folder: Path) -> str | None:
    """The kind of records ``folder`` holds, or None when they are not ours (or none)."""
    try:
        return str(json.loads((folder / MARKER).read_text())["kind"])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError):
        return None
    names = {p.name for p in folder.iterdir() if not p.name.endswith(".tmp")}
    if names <= RUN_FILES and ("checkpoint.npz" in names or _our_config(folder / "config.json")):
        return "run-dir"
    files = {n for n in names if not (folder / n).is_dir()}
    runs = [p for p in folder.glob("*/seed*") if recorded_kind(p) == "run-dir"]
    if runs and all(n in EXPERIMENT_FILES or n.endswith(".png") for n in files):
        return "experiment"
    return None


def _our_config(path: Path) -> bool:
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and {"algorithm", "run-dir", "seed"} <= config.keys()


class FolderLock:
    """One writer per folder: ``with FolderLock(folder, "run-dir"):`` or acquire/release."""

    def __init__(self, folder: str | Path, what: str) -> None:
        self.path = Path(folder) / LOCK
        self.what = what
        self.mine = _holder_record()

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise FolderError naming the live process that holds it."""
        with _serialised(self.path.parent):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder is not None and is_alive(holder):
                    raise FolderError(self._in_use(holder)) from None
                self.path.unlink()  # its writer died: the folder is ours to continue
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.mine) + "\n")

    def release(self) -> None:
        """Remove the lock file if it is still this process's."""
        with _serialised(self.path.parent):
            if read_holder(self.path) == self.mine:
                self.path.unlink(missing_ok=True)

    def _in_use(self, holder: dict[str, Any]) -> str:
        where = "" if holder.get("host") == socket.gethostname() else f" on {holder.get('host')}"
        return (
            f"{self.path.parent} is in use by process {holder.get('pid')}{where} (lock "
            f"{self.path}); two writers would interleave its records. Wait for that process "
            f"to finish or stop it, or give another {self.what}"
        )


@contextlib.contextmanager
def _serialised(folder: Path) -> Iterator[None]:
    """Hold an flock on the folder while a lock is checked, taken over or removed, so two
    processes that both find a dead writer's lock do not both take it. The kernel drops an
    flock with its process; where the file system has none, the O_EXCL create still decides."""
    if fcntl is None:
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def read_holder(path: Path) -> dict[str, Any] | None:
    """The lock file's record of its writer; None if it is gone, empty or cut short."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None


def is_alive(holder: dict[str, Any]) -> bool:
    """Whether the writer a lock names still runs. A writer on another host cannot be
    checked from here and counts as alive; a reused PID shows by its other start time."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = int(holder["pid"])
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    started = _start_time(pid)
    if started is None:
        return True
    if started == "zombie":
        return False
    return holder.get("started") in (None, started)


def _holder_record() -> dict[str, Any]:
    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": _start_time(pid)}


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), 'zombie' for a process
    that has exited but not been reaped, None where /proc cannot tell."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may hold spaces
    return "zombie" if fields[0] in ("Z", "X") else fields[19]


def temporary_name(path: Path) -> Path:
    """A temporary file beside ``path`` that no other process (or earlier crash) uses."""
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _write_once(path: Path, text: str) -> None:
    tmp = temporary_name(path)
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
