"""Memory and time of one SuperNode, measured from outside while a real run goes on.

A node is one or two small process trees. With Flower's default (``--clientapp
per-message``): ``flower-supernode`` (connection, heartbeats, message store),
``flower-superexec`` (launches apps) and one short-lived ``flwr-clientapp`` per message,
where torch, the data and the model live. With ``deploy.node`` (``in-node``, the default)
one ``deploy.node`` process holds the SuperNode and the ClientApp; with ``process`` a
``flower-supernode`` and a ``deploy.node`` ClientApp server sit side by side.
:class:`NodeSampler` polls ``/proc`` for those trees and keeps, per component, the peak
resident set size (the kernel's ``VmHWM``, which also catches peaks between two polls),
the peak of the whole node's RSS at one instant (what the device must have free), and how
long per-message ClientApp processes ran. Linux only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from common.background_sampler import BackgroundSampler
from deploy.managed_process import PROC, ProcessId, descendants, process_id

KIB = 1024


@dataclass
class _Seen:
    name: str
    first: float
    last: float
    peak_rss_kib: int = 0


@dataclass
class NodeFootprint:
    """Peak RSS per component (MiB), the tree's peak at one instant, ClientApp busy time."""

    peak_rss_mib: dict[str, float] = field(default_factory=dict)
    peak_tree_rss_mib: float = 0.0
    clientapp_processes: int = 0
    clientapp_seconds: float = 0.0  # summed lifetimes: the node's busy time


class NodeSampler(BackgroundSampler):
    """Poll the process trees under ``pids`` every ``interval`` seconds until stopped."""

    thread_name = "node-sampler"

    def __init__(self, *pids: int, interval: float = 0.1) -> None:
        if not pids:
            raise ValueError("NodeSampler needs the pid of at least one process to sample")
        self.pids = pids
        self.interval = interval
        self._seen: dict[ProcessId, _Seen] = {}
        self._peak_tree_kib = 0
        self._roots: list[ProcessId] | None = None

    def tick(self) -> bool:
        if self._roots is None:  # read once, when sampling starts
            self._roots = [r for r in map(process_id, self.pids) if r is not None]
        if not any(r.alive() for r in self._roots):
            return False  # the node is gone: nothing left to sample
        self.sample(self._roots)
        return True

    def sample(self, roots: list[ProcessId]) -> None:
        now = time.monotonic()
        total = 0
        tree = [p for r in roots if r.alive() for p in [r, *descendants(r.pid)]]
        for proc in tree:
            rss, hwm = _memory_kib(proc.pid)
            if rss is None:
                continue  # exited between listing and reading
            seen = self._seen.setdefault(proc, _Seen(_name(proc.pid), now, now))
            seen.last = now
            seen.peak_rss_kib = max(seen.peak_rss_kib, hwm or rss)
            total += rss
        self._peak_tree_kib = max(self._peak_tree_kib, total)

    def footprint(self) -> NodeFootprint:
        out = NodeFootprint(peak_tree_rss_mib=self._peak_tree_kib / KIB)
        for seen in self._seen.values():
            mib = seen.peak_rss_kib / KIB
            out.peak_rss_mib[seen.name] = max(out.peak_rss_mib.get(seen.name, 0.0), mib)
            if seen.name == "flwr-clientapp":
                out.clientapp_processes += 1
                out.clientapp_seconds += seen.last - seen.first
        return out


def _name(pid: int) -> str:
    """The Flower component a process is, from its command line."""
    try:
        argv = (PROC / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    for arg in argv[:2]:  # "python3 /venv/bin/flower-supernode ..." or a retitled process
        name = Path(arg.decode(errors="replace").strip("[]")).name
        if name.startswith(("flower-", "flwr-")):
            return name
    if argv[1:3] == [b"-m", b"deploy.node"]:  # this project's SuperNode with its ClientApp
        return "deploy.node --clientapp-only" if b"--clientapp-only" in argv else "deploy.node"
    return Path(argv[0].decode(errors="replace")).name


def _memory_kib(pid: int) -> tuple[int | None, int | None]:
    """(VmRSS, VmHWM) in KiB, or (None, None) once the process is gone."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except OSError:
        return None, None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    if "VmRSS" not in values:  # a zombie has no memory left
        return None, None
    return values["VmRSS"], values.get("VmHWM")
