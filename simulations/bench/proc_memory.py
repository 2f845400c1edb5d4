"""Sample the resident memory of a process tree while a run goes on.

A Simulation Engine run is a tree of processes: the SuperLink, the SuperExec it spawns,
``flwr-simulation`` (the ServerApp thread, the in-memory LinkState and the Ray driver in
one process), Ray's own daemons and one Ray worker per client actor. :class:`TreeSampler`
walks that tree every ``interval`` seconds, sums RSS by role, and tags each sample with
the round in progress (read from the run's ``metrics.jsonl``), so memory can be read
round by round. RSS counts shared library pages (torch) once per process, so the totals
overstate what the tree takes from the machine; they are comparable between runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from common.background_sampler import BackgroundSampler

ROLES = ("superlink", "superexec", "simulation", "ray-workers", "ray-daemons", "loop", "other")


def role_of(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())
        name = proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return "other"
    if "flower-superlink" in cmd:
        return "superlink"
    if "flower-superexec" in cmd:
        return "superexec"
    if "flwr-simulation" in cmd:
        return "simulation"
    if name.startswith("ray::") or "default_worker.py" in cmd:
        return "ray-workers"
    if any(
        s in cmd
        for s in ("gcs_server", "raylet", "ray/_private", "ray/dashboard", "ray/autoscaler")
    ):
        return "ray-daemons"
    if "simulations.bench" in cmd or "run_in_loop" in cmd:
        return "loop"
    return "other"


@dataclass
class Sample:
    t: float
    round: int  # rounds completed when the sample was taken
    rss: dict[str, int]  # bytes by role

    @property
    def total(self) -> int:
        return sum(self.rss.values())


@dataclass
class TreeSampler(BackgroundSampler):
    """Samples ``root`` and its descendants in a background thread until stopped."""

    root: int
    metrics_file: Path | None = None
    interval: float = 1.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._t0 = time.monotonic()

    def _rounds_done(self) -> int:
        if self.metrics_file is None or not self.metrics_file.exists():
            return 0
        with self.metrics_file.open("rb") as f:
            return sum(1 for _ in f)

    def sample_once(self) -> Sample | None:
        try:
            root = psutil.Process(self.root)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return None
        rss = dict.fromkeys(ROLES, 0)
        for p in procs:
            try:
                rss[role_of(p)] += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return Sample(time.monotonic() - self._t0, self._rounds_done(), rss)

    def tick(self) -> bool:
        if (s := self.sample_once()) is not None:
            self.samples.append(s)
        return True

    @property
    def peak(self) -> int:
        return max((s.total for s in self.samples), default=0)

    def by_round(self) -> dict[int, Sample]:
        """The last sample taken while each round was the latest completed one."""
        out: dict[int, Sample] = {}
        for s in self.samples:
            out[s.round] = s
        return out
