"""Which Ray the Simulation Engine runs on, checked before anything starts.

Flower's Ray backend calls ``ray.init()`` without an address, so Ray decides: the
``RAY_ADDRESS`` environment variable, else the cluster last started on this machine with
``ray start`` (its address file, ``ray_current_cluster`` in Ray's temp folder), else a
private Ray for the run. That choice was silent, and an address file left behind by a dead
cluster made every later run hang without a word. Here the runner makes the same choice
itself, says which it made, checks that a cluster answers (a stale address file is named
in one line, in seconds), waits for the nodes it expects, and hands the result to the
SuperLink as ``RAY_ADDRESS``, so Flower's ``ray.init()`` cannot choose anything else.

The ``--federation-config`` keys of ``flwr run`` hold whole CPUs per worker (the field is a
``uint32`` in Flower's ``SimulationConfig``). A fractional ``cpus-per-client`` on a private
Ray is the same ratio in whole numbers: Ray's CPU count is a logical resource, so 0.5 CPU
per worker on 2 cores is 1 CPU per worker on a Ray told it has 4.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

PRIVATE = "local"  # Ray's own word for "start a new Ray for this process"
AUTO = "auto"  # the cluster in this machine's address file, which must exist
PROBE_TIMEOUT = 3.0  # s to wait for a cluster's GCS port to accept a connection


class RayClusterError(RuntimeError):
    """The Ray cluster named cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class RayTarget:
    """A private Ray (``address == "local"``) or a live cluster and what it holds."""

    address: str
    source: str  # where the address came from: an option, RAY_ADDRESS, or the address file
    nodes: int = 1
    cpus: float = 0.0
    gpus: float = 0.0

    @property
    def private(self) -> bool:
        return self.address == PRIVATE

    def describe(self) -> str:
        if self.private:
            return f"Ray: private (a new Ray on this machine for each run; {self.source})"
        return (
            f"Ray: cluster {self.address} ({self.source}): {self.nodes} node(s), "
            f"{self.cpus:g} CPU(s), {self.gpus:g} GPU(s)"
        )

    def record(self) -> dict[str, Any]:
        """What ``federation.json`` keeps about the Ray a run used."""
        if self.private:
            return {"ray": "private"}
        return {"ray": self.address, "ray-nodes": self.nodes, "ray-gpus": self.gpus}


PRIVATE_RAY = RayTarget(PRIVATE, "RAY_ADDRESS=local")


@dataclass(frozen=True)
class ClientResources:
    """What one Simulation Engine worker (Ray actor) holds: CPUs and GPUs, fractions allowed."""

    cpus: float = 1.0
    gpus: float = 0.0

    def check(self) -> None:
        if not self.cpus > 0:
            raise RayClusterError(f"cpus-per-client must be > 0, got {self.cpus!r}")
        if self.gpus < 0:
            raise RayClusterError(f"gpus-per-client must be >= 0, got {self.gpus!r}")


def federation_config(
    num_supernodes: int, resources: ClientResources, ray: RayTarget, machine_cpus: int = 0
) -> dict[str, int | float]:
    """``flwr run --federation-config`` keys for ``resources`` on ``ray``.

    A fractional ``cpus`` is scaled to whole numbers on a private Ray (``init-args-num-cpus``
    tells Ray how many logical CPUs this machine has); a cluster's CPU counts are fixed when
    its nodes start, so there it is refused with the fix.
    """
    resources.check()
    config: dict[str, int | float] = {"num-supernodes": num_supernodes}
    ratio = Fraction(resources.cpus).limit_denominator(1000)
    if ratio.denominator == 1:
        config["client-resources-num-cpus"] = ratio.numerator
    elif ray.private:
        cores = machine_cpus or os.cpu_count() or 1
        config["client-resources-num-cpus"] = ratio.numerator
        config["init-args-num-cpus"] = cores * ratio.denominator
    else:
        raise RayClusterError(
            f"cpus-per-client={resources.cpus:g} on the Ray cluster {ray.address}: Flower "
            "passes whole CPUs per worker, and a cluster's CPU counts are set when its nodes "
            f"start. Start every node with `ray start --num-cpus={ratio.denominator}x its "
            f"cores` and use cpus-per-client={ratio.numerator}"
        )
    if resources.gpus:
        _check_gpus(resources.gpus, ray)
        config["client-resources-num-gpus"] = float(resources.gpus)
    return config


def _check_gpus(per_client: float, ray: RayTarget) -> None:
    """Refuse GPU workers where Ray has no GPU: Flower would stop with "ActorPool is empty"."""
    if ray.private:
        import torch  # what a private Ray would find: the GPUs this machine shows

        gpus, where = float(torch.cuda.device_count()), "this machine shows"
    else:
        gpus, where = ray.gpus, f"the cluster at {ray.address} lists"
    if gpus < per_client:
        raise RayClusterError(
            f"gpus-per-client={per_client:g}, but {where} {gpus:g} GPU(s): no worker would "
            "fit. Use gpus-per-client=0 (CPU workers), or start Ray nodes with GPUs"
        )


def address_file() -> Path:
    """Ray's address file on this machine (honours ``RAY_TMPDIR`` and ``TMPDIR`` as Ray does)."""
    from ray._common.utils import get_ray_address_file

    return Path(get_ray_address_file(None))


def choose_ray(option: str = "", environ: Mapping[str, str] | None = None) -> tuple[str, str]:
    """(address, where it came from), chosen the way ``ray.init()`` would choose it.

    ``option`` is the runner's ``ray-address``: ``""`` (Ray's own order: ``RAY_ADDRESS``, the
    address file, a private Ray), ``local`` (private), ``auto`` (the address file) or
    ``host:port``.
    """
    env = os.environ if environ is None else environ
    check_address(option)
    if option and option != AUTO:
        return option, f"ray-address={option}"
    if not option and env.get("RAY_ADDRESS"):
        return env["RAY_ADDRESS"], f"RAY_ADDRESS={env['RAY_ADDRESS']}"
    path = address_file()
    if path.is_file() and (recorded := path.read_text().strip()):
        return recorded, f"from {path}"
    if option == AUTO:
        raise RayClusterError(
            f"ray-address=auto, but no cluster was started on this machine ({path} does not "
            "exist): run `ray start --head` first, or give the head's HOST:PORT"
        )
    return PRIVATE, f"no RAY_ADDRESS and no {path}"


def check_address(option: str) -> None:
    """Raise unless ``option`` is a ``ray-address`` this runner understands."""
    if option and option not in (PRIVATE, AUTO) and not _host_port(option):
        raise RayClusterError(
            f"ray-address={option!r} is not 'local', 'auto' or HOST:PORT (the address "
            "`ray start --head` printed, e.g. 10.0.0.1:6379)"
        )


def resolve_ray(
    option: str = "", expect_nodes: int = 0, wait: float = 60.0,
    environ: Mapping[str, str] | None = None,
) -> RayTarget:  # fmt: skip
    """The Ray a run will use, checked: a cluster must answer and hold ``expect_nodes`` nodes."""
    address, source = choose_ray(option, environ)
    if address == PRIVATE:
        return RayTarget(PRIVATE, source, cpus=float(os.cpu_count() or 1))
    if not _host_port(address):
        raise RayClusterError(
            f"Ray address {address!r} ({source}) is not HOST:PORT; this runner connects to "
            "a cluster's GCS address (not ray:// clients)"
        )
    if not _answers(address):
        raise RayClusterError(_dead_cluster(address, source))
    return wait_for_nodes(RayTarget(address, source), expect_nodes, wait)


def _dead_cluster(address: str, source: str) -> str:
    if source.startswith("from "):
        path = source.removeprefix("from ")
        return (
            f"stale Ray address file {path}: it names {address}, where no cluster answers; "
            "run `ray stop` on this machine (it deletes the file), start the cluster again, "
            "or pass --ray-address local for a private Ray"
        )
    return (
        f"no Ray cluster answers at {address} ({source}): start it (`ray start --head`), "
        "fix the address, or use a private Ray (--ray-address local)"
    )


def wait_for_nodes(target: RayTarget, expect_nodes: int, wait: float) -> RayTarget:
    """``target`` with its live node, CPU and GPU counts, once it has ``expect_nodes`` nodes.

    Flower sizes the worker pool from the nodes alive when a run starts; a node that joins
    later is not used by that run, so a run waits here for the ones it was told to expect.
    """
    deadline = time.monotonic() + wait
    while True:
        nodes = live_nodes(target.address)
        if len(nodes) >= expect_nodes or time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    if len(nodes) < expect_nodes:
        raise RayClusterError(
            f"only {len(nodes)} of {expect_nodes} Ray node(s) joined the cluster at "
            f"{target.address} within {wait:g} s; start the others (`ray start "
            f"--address={target.address}`), lower ray-nodes, or raise ray-wait"
        )
    return RayTarget(
        target.address, target.source, len(nodes),
        sum(n.get("CPU", 0.0) for n in nodes), sum(n.get("GPU", 0.0) for n in nodes),
    )  # fmt: skip


def live_nodes(address: str) -> list[dict[str, float]]:
    """The total resources of every live node of the cluster at ``address``, from its GCS."""
    from ray._raylet import GcsClient

    try:
        infos = GcsClient(address=address).get_all_node_info(timeout=10)
    except Exception as err:  # Ray raises its own RPC errors; the cause is the address
        raise RayClusterError(
            f"the Ray cluster at {address} did not list its nodes: {err}"
        ) from None  # noqa: E501
    alive = 0  # GcsNodeInfo.GcsNodeState.ALIVE
    return [dict(i.resources_total) for i in infos.values() if i.state == alive]


def _host_port(address: str) -> tuple[str, int] | None:
    host, sep, port = address.rpartition(":")
    plain = sep and host and port.isdigit() and "/" not in host  # not a ray:// client address
    return (host, int(port)) if plain else None


def _answers(address: str) -> bool:
    host, port = _host_port(address)  # type: ignore[misc]
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT):
            return True
    except OSError:
        return False
