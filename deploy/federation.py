"""One SuperLink and N SuperNodes on this machine, with TLS and SuperNode authentication.

    python -m deploy.federation up   [--nodes 3]           # start; Ctrl-C (or `down`) stops
    python -m deploy.federation run  --run-config '...'    # `flwr run` against it, logs streamed
    python -m deploy.federation down                       # stop everything `up` started
    python -m deploy.federation demo [--nodes 3] [--run-config '...'] [--measure-node 0]
    python -m deploy.federation floor [--nodes 3] [--rounds 5]  # Flower's own cost per round
    python -m deploy.federation demo --own-data FOLDER --run-config '...'  # a CSV per node

``up`` creates (or reuses) the CA, the SuperLink certificate and one key pair per node
(deploy/make_certs.py), starts ``flower-superlink`` with TLS and ``--enable-supernode-auth``,
registers each node's public key with ``flwr supernode register``, and starts one
``flower-supernode`` per node, each with its own key, Runtime API port, ``FLWR_HOME`` and
node config (``partition-id``, ``num-partitions``, ``model-dir``, optional ``data-path``;
with ``--own-data`` each node instead gets one file of the folder as its own ``data-path``
and no ``partition-id``: it hosts every client in that file, client/runtime.py).
``demo`` does up, run and down in one process; ``floor`` does the same with a ClientApp
that does nothing (deploy/floor_app), which times what Flower itself costs per round.
Every command is printed as it is run: the same commands, with the SuperLink's address, make
a federation across machines (docs/deployment.md).

Everything lives under ``--state-dir`` (default ``runs/federation``; ``runs/`` is
git-ignored, which also keeps keys and logs out of the FAB that ``flwr run`` packs). This
process owns every process it starts and stops all of them on exit, also on failure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.common.config import parse_config_args

from common import strict_json
from common.processes import console_script, free_port, run_config_arg
from deploy.make_certs import Certificates, load_or_make_certificates
from deploy.managed_process import ManagedProcess, start_process
from deploy.measure.node_footprint import NodeFootprint, NodeSampler

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FLOOR_APP = Path(__file__).resolve().parent / "floor_app"
CONNECTION = "fedmeta-deploy"
# How a SuperNode runs its ClientApp (docs/deployment.md, "How a node runs its ClientApp"):
# in-node: `python -m deploy.node`, the SuperNode and one long-lived ClientApp in one process;
# process: `flower-supernode --isolation process` beside `python -m deploy.node --clientapp-only`;
# per-message: plain `flower-supernode`, Flower's default of one flwr-clientapp per message.
CLIENTAPP_MODES = ("in-node", "process", "per-message")
DEFAULT_STATE_DIR = Path("runs/federation")
STATE_FILE = "federation.json"


class FederationError(RuntimeError):
    """A component did not start, a node was not accepted, or a run failed."""


def flower_env(home: Path) -> dict[str, str]:
    """Environment of every Flower process: its own FLWR_HOME, no runtime installs."""
    return os.environ | {
        "FLWR_HOME": str(home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
        # Flower's SuperExec asks for a new task every 1 s by default (SuperLink: ServerApp;
        # per-message SuperNodes: each ClientApp); 0.2 s takes up to 0.8 s off each trip.
        "FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.2",
        # SuperLink and SuperNode spawn flower-superexec, flwr-serverapp, flwr-clientapp
        # by name: this interpreter's scripts must come first on PATH.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }


@dataclass(frozen=True)
class Layout:
    """Where a federation keeps its files."""

    root: Path

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    @property
    def cli_home(self) -> Path:  # FLWR_HOME of the `flwr` CLI: config.toml lives here
        return self.root / "flwr-home"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def node_home(self, index: int) -> Path:  # FLWR_HOME of SuperNode `index`
        return self.root / "nodes" / f"node-{index}"

    def model_dir(self, index: int) -> Path:
        return self.node_home(index) / "models"


class Federation:
    """A SuperLink and ``num_nodes`` SuperNodes on loopback; stops what it started."""

    def __init__(
        self, root: Path, num_nodes: int, *, data_path: str = "", port: int | None = None,
        clientapp: str = "in-node", torch_threads: int | None = None,
        supernode_poll: float | None = None, node_data: Sequence[str] = (),
    ) -> None:  # fmt: skip
        if num_nodes < 1:
            raise FederationError(f"a federation needs at least 1 SuperNode, got {num_nodes}")
        if node_data and (len(node_data) != num_nodes or data_path):
            raise FederationError(
                f"{len(node_data)} own data paths for {num_nodes} SuperNodes: give one per "
                "node (and no --data-path, which shares the run's data by partition-id)"
            )
        if clientapp not in CLIENTAPP_MODES:
            raise FederationError(
                f"clientapp={clientapp!r} is not a ClientApp layout; use one of "
                + ", ".join(CLIENTAPP_MODES)
            )
        if torch_threads is not None and torch_threads < 1:
            raise FederationError(f"torch-threads must be >= 1, got {torch_threads}")
        if supernode_poll is not None and (clientapp != "in-node" or not supernode_poll > 0):
            raise FederationError(
                f"--supernode-poll-interval {supernode_poll} needs a positive number of seconds "
                "and --clientapp in-node (it patches the SuperNode inside deploy.node)"
            )
        self.layout = Layout(root.expanduser().resolve())
        self.num_nodes = num_nodes
        self.data_path = data_path
        # issue 16: node i holds its own data at node_data[i] and hosts every client in it
        self.node_data = tuple(str(Path(p).expanduser().resolve()) for p in node_data)
        self.clientapp = clientapp
        self.torch_threads = torch_threads  # None: the app's default (client/runtime.py)
        self.supernode_poll = supernode_poll  # None: Flower's fixed 3 s / 0.5 s waits
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.certs: Certificates | None = None
        self.superlink: ManagedProcess | None = None
        self.nodes: dict[int, ManagedProcess] = {}
        self.clientapps: dict[int, ManagedProcess] = {}  # clientapp="process": the servers
        self.node_ids: dict[int, int] = {}  # node index -> Flower node id (from registration)
        self._started: list[ManagedProcess] = []

    # ---- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Certificates, SuperLink, registration and every SuperNode, until all are online."""
        self.certs = load_or_make_certificates(self.layout.certs, self.num_nodes)
        self._write_cli_config()
        self.start_superlink()
        for i in range(self.num_nodes):
            self.register(i)
        for i in range(self.num_nodes):
            self.start_supernode(i)
        self.wait_online(set(self.node_ids.values()))

    def stop(self) -> None:
        """Stop nodes first (they deactivate themselves), then the SuperLink. Idempotent."""
        errors = []
        for proc in reversed(self._started):
            try:
                proc.stop()
            except Exception as err:  # keep stopping the others; report after
                errors.append(f"{proc.name}: {err}")
        if errors:
            raise FederationError("could not stop: " + "; ".join(errors))

    @property
    def processes(self) -> tuple[ManagedProcess, ...]:
        """Every process this federation started, in start order (stopped ones included)."""
        return tuple(self._started)

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- components -------------------------------------------------------------------
    def start_superlink(self) -> ManagedProcess:
        certs = self._certs()
        cmd = [
            console_script("flower-superlink"),
            "--ssl-ca-certfile", str(certs.ca_cert),
            "--ssl-certfile", str(certs.server_cert),
            "--ssl-keyfile", str(certs.server_key),
            "--enable-supernode-auth",
            "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(self.port),
        ]  # fmt: skip
        self.superlink = self._start("superlink", cmd, self.layout.root / "superlink-home")
        self._wait_for_superlink()
        return self.superlink

    def register(self, index: int) -> int:
        """Register node ``index``'s public key; return the node id the SuperLink assigned."""
        key = self._certs().node_public_key(index)
        try:
            reply = self.flwr("supernode", "register", str(key), CONNECTION)
        except FederationError as err:
            raise FederationError(f"registering SuperNode {index} ({key}) failed: {err}") from err
        self.node_ids[index] = int(reply["node-id"])
        return self.node_ids[index]

    def start_supernode(self, index: int, private_key: Path | None = None) -> ManagedProcess:
        """Start SuperNode ``index`` with its own key, or as a stranger with ``private_key``.

        A stranger gets node ``index``'s node config but its own FLWR_HOME and log, named
        after its key; it is not one of :attr:`nodes`. With ``clientapp="process"`` the
        node's ClientApp server starts too (:attr:`clientapps`).
        """
        key = private_key or self._certs().node_keys[index]
        runtime_port = free_port()
        args = [
            "--root-certificates", str(self._certs().ca_cert),
            "--superlink", self.address,
            "--auth-supernode-private-key", str(key),
            "--node-config", self.node_config(index),
            "--host", "127.0.0.1", "--port", str(runtime_port),
        ]  # fmt: skip
        if self.clientapp == "in-node":
            cmd = [sys.executable, "-m", "deploy.node", *args]
            if self.supernode_poll is not None:
                cmd += ["--supernode-poll-interval", str(self.supernode_poll)]
        elif self.clientapp == "process":
            cmd = [console_script("flower-supernode"), *args, "--isolation", "process"]
        else:
            cmd = [console_script("flower-supernode"), *args]
        if private_key is None:
            name, home = f"supernode-{index}", self.layout.node_home(index)
        else:
            name, home = f"supernode-{key.name}", self.layout.root / "nodes" / key.name
        proc = self._start(name, cmd, home)
        if private_key is None:
            self.nodes[index] = proc
            if self.clientapp == "process":
                server = [
                    sys.executable, "-m", "deploy.node", "--clientapp-only",
                    "--runtime-api-address", f"127.0.0.1:{runtime_port}",
                ]  # fmt: skip
                self.clientapps[index] = self._start(f"clientapp-{index}", server, home)
        return proc

    def node_config(self, index: int) -> str:
        config: dict[str, Any] = {"model-dir": str(self.layout.model_dir(index))}
        if self.node_data:  # its own data: no partition-id, the node hosts its file's clients
            config["data-path"] = self.node_data[index]
        else:
            config |= {"partition-id": index, "num-partitions": self.num_nodes}
        if self.torch_threads is not None:
            config["torch-threads"] = self.torch_threads
        if self.data_path:
            config["data-path"] = self.data_path
        return run_config_arg(config)

    def crash_node(self, index: int) -> None:
        """SIGKILL SuperNode ``index`` and its ClientApp: a node that dies without notice."""
        self.nodes[index].crash()
        if index in self.clientapps:
            self.clientapps[index].crash()

    def node_pids(self, index: int) -> list[int]:
        """The processes that make up node ``index`` (their children included when sampled)."""
        extra = [self.clientapps[index].pid] if index in self.clientapps else []
        return [self.nodes[index].pid, *extra]

    # ---- runs -------------------------------------------------------------------------
    def start_run(
        self, run_config: Mapping[str, Any], app: Path = PROJECT_ROOT
    ) -> subprocess.Popen:
        return start_run(self.layout, run_config, app)

    def flwr(self, *args: str, timeout: float = 60) -> dict[str, Any]:
        return flwr_json(self.layout, *args, timeout=timeout)

    def online_node_ids(self) -> set[int]:
        listing = self.flwr("supernode", "list", CONNECTION)
        return {int(n["node-id"]) for n in listing.get("nodes", []) if n["status"] == "online"}

    def wait_online(self, node_ids: set[int], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not node_ids <= (online := self.online_node_ids()):
            for index, proc in self.nodes.items():
                if not proc.alive():
                    raise FederationError(
                        f"SuperNode {index} exited with {proc.popen.returncode}; "
                        f"see {proc.log_path}:\n{_tail(proc.log_text())}"
                    )
            if time.monotonic() > deadline:
                raise FederationError(
                    f"only {len(node_ids & online)} of {len(node_ids)} SuperNodes came online "
                    f"in {timeout:g} s; see the logs in {self.layout.logs}"
                )
            time.sleep(0.5)

    # ---- helpers ----------------------------------------------------------------------
    def _certs(self) -> Certificates:
        if self.certs is None:
            self.certs = load_or_make_certificates(self.layout.certs, self.num_nodes)
        return self.certs

    def _start(self, name: str, cmd: list[str], home: Path) -> ManagedProcess:
        home.mkdir(parents=True, exist_ok=True)
        print("$", f"FLWR_HOME={shlex.quote(str(home))}", shlex.join(cmd), flush=True)
        proc = start_process(name, cmd, flower_env(home), self.layout.logs / f"{name}.log")
        self._started.append(proc)
        return proc

    def _write_cli_config(self) -> None:
        """The `flwr` CLI's connection: TLS verified against our CA (no `insecure`)."""
        self.layout.cli_home.mkdir(parents=True, exist_ok=True)
        (self.layout.cli_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n'
            f"[superlink.{CONNECTION}]\n"
            f'address = "{self.address}"\n'
            f'root-certificates = "{self._certs().ca_cert}"\n'
        )

    def _wait_for_superlink(self, timeout: float = 60) -> None:
        """Until the CLI can talk to the SuperLink over TLS (proves certs and address)."""
        assert self.superlink is not None
        deadline = time.monotonic() + timeout
        while True:
            if not self.superlink.alive():
                raise FederationError(
                    f"flower-superlink exited with {self.superlink.popen.returncode}; see "
                    f"{self.superlink.log_path}:\n{_tail(self.superlink.log_text())}"
                )
            try:
                self.flwr("supernode", "list", CONNECTION, timeout=20)
                return
            except FederationError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)


def start_run(
    layout: Layout, run_config: Mapping[str, Any], app: Path = PROJECT_ROOT
) -> subprocess.Popen:
    """`flwr run` of ``app`` (this project) against the federation in ``layout``.

    The run's streamed log is the returned process's stdout (text lines).
    """
    cmd = [console_script("flwr"), "run", str(app), CONNECTION, "--stream"]
    if run_config:
        cmd += ["--run-config", run_config_arg(run_config)]
    print("$", shlex.join(cmd), flush=True)
    return subprocess.Popen(
        cmd, env=flower_env(layout.cli_home), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip


def flwr_json(layout: Layout, *args: str, timeout: float = 60) -> dict[str, Any]:
    """Run a `flwr` CLI command against the federation in ``layout``; its JSON reply, or raise.

    With ``--format json`` the CLI exits 0 even when it failed (e.g. SuperLink unreachable)
    and says so in the reply's ``success``, so both are checked.
    """
    cmd = [console_script("flwr"), *args, "--format", "json"]
    proc = subprocess.run(
        cmd, env=flower_env(layout.cli_home), capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise FederationError(
            f"`{shlex.join(cmd)}` exited with {proc.returncode}:\n{proc.stdout}{proc.stderr}"
        )
    reply = _json_of(proc.stdout)
    if not reply.get("success"):
        raise FederationError(f"`{shlex.join(cmd)}` failed: {reply.get('error-message', reply)}")
    return reply


@dataclass(frozen=True)
class RunOutcome:
    """How a submitted run ended, as the SuperLink recorded it."""

    run_id: int
    status: str  # "finished:completed", "finished:failed", ...
    details: str  # for a failed run: the ServerApp's exception message

    @property
    def completed(self) -> bool:
        return self.status == "finished:completed"


def run_outcome(layout: Layout, log: str) -> RunOutcome:
    """The outcome of the run whose `flwr run --stream` output is ``log``.

    `flwr run --stream` exits 0 even when the ServerApp raised, so the status is asked of
    the SuperLink (`flwr ls --run-id`).
    """
    found = re.search(r"Successfully started run (\d+)", log)
    if found is None:
        raise FederationError(f"the SuperLink did not accept the run:\n{_tail(log)}")
    listing = flwr_json(layout, "ls", CONNECTION, "--run-id", found[1])
    run = listing["runs"][0]
    return RunOutcome(int(found[1]), run["status"], run.get("status-details", ""))


def _json_of(output: str) -> dict[str, Any]:
    """The JSON object in a `flwr ... --format json` output (which may be preceded by text)."""
    start = output.find("{")
    if start < 0:
        raise FederationError(f"expected JSON from flwr, got: {output!r}")
    return json.loads(output[start:])


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.splitlines()[-lines:])


@contextmanager
def local_federation(root: Path, num_nodes: int, **options: Any) -> Iterator[Federation]:
    """A started federation; every process it started is stopped on exit, also on error.

    ``options`` are :class:`Federation`'s keyword arguments.
    """
    federation = Federation(root, num_nodes, **options)
    with federation:
        federation.start()
        yield federation


# ---- command line -------------------------------------------------------------------------
def parse_run_config(text: str) -> dict[str, Any]:
    """'key=value ...' as `flwr run --run-config` reads it (TOML values)."""
    return dict(parse_config_args([text])) if text.strip() else {}


def stream_run(layout: Layout, run_config: Mapping[str, Any], app: Path = PROJECT_ROOT) -> int:
    """Submit a run, print its log as it comes; 0 if it completed, 1 otherwise."""
    proc = start_run(layout, run_config, app)
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    proc.wait()
    outcome = run_outcome(layout, "".join(lines))
    details = "" if outcome.completed else f": {outcome.details}"
    print(f"run {outcome.run_id}: {outcome.status}{details}", flush=True)
    return 0 if outcome.completed else 1


def _cmd_up(args: argparse.Namespace) -> int:
    federation = Federation(args.state_dir, args.nodes, port=args.port, **_node_options(args))
    state_file = federation.layout.root / STATE_FILE
    # SIGTERM (from `down`) unwinds like Ctrl-C, through the `with` that stops everything.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with federation:
            federation.start()
            state = {"pid": os.getpid(), "address": federation.address}
            state_file.write_text(
                strict_json.dumps(state | {"nodes": federation.node_ids}, indent=2)
            )
            print(
                f"federation up at {federation.address} with {args.nodes} SuperNodes; "
                f"logs in {federation.layout.logs}. Ctrl-C or `down` stops it.",
                flush=True,
            )
            _watch(federation)
    except KeyboardInterrupt:
        print("stopping the federation", flush=True)
    finally:
        state_file.unlink(missing_ok=True)
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _watch(federation: Federation) -> None:
    """Report nodes that die (the run goes on without them) until interrupted."""
    reported: set[int] = set()
    while True:
        for index, proc in federation.nodes.items():
            if not proc.alive() and index not in reported:
                reported.add(index)
                print(
                    f"SuperNode {index} exited with {proc.popen.returncode}; the run goes "
                    f"on without it. See {proc.log_path}",
                    flush=True,
                )
        if federation.superlink is not None and not federation.superlink.alive():
            raise FederationError(f"the SuperLink exited; see {federation.superlink.log_path}")
        time.sleep(1)


def _cmd_run(args: argparse.Namespace) -> int:
    layout = Layout(args.state_dir.expanduser().resolve())
    if not (layout.root / STATE_FILE).exists():
        raise FederationError(
            f"no federation is up in {layout.root}; start one with "
            f"`python -m deploy.federation up --state-dir {args.state_dir}`"
        )
    return stream_run(layout, parse_run_config(args.run_config))


def _cmd_down(args: argparse.Namespace) -> int:
    state_file = args.state_dir.expanduser().resolve() / STATE_FILE
    if not state_file.exists():
        print(f"no federation is up in {state_file.parent}")
        return 0
    pid = int(json.loads(state_file.read_text())["pid"])
    if b"deploy.federation" not in _cmdline(pid):  # a stale file must not kill a stranger
        state_file.unlink()
        print(f"process {pid} from {state_file} is gone; removed the stale file")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while b"deploy.federation" in _cmdline(pid):
        if time.monotonic() > deadline:
            raise FederationError(f"`up` (pid {pid}) did not stop within 60 s")
        time.sleep(0.5)
    print("federation stopped")
    return 0


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def demo_run_config(state_dir: Path, nodes: int, overrides: str) -> dict[str, Any]:
    """The demo's run config: a fresh run-dir, every node required, then ``overrides``."""
    # A fresh run-dir per demo: an existing one holds a checkpoint and would be refused.
    run_dir = state_dir.expanduser().resolve() / time.strftime("run-%Y%m%d-%H%M%S")
    run_config: dict[str, Any] = {"run-dir": str(run_dir)}
    run_config |= parse_run_config(overrides)
    # Every node must be there before a round starts, unless the run says otherwise: with
    # the app's default of 2, `--nodes 1` would wait node-wait-timeout and fail.
    run_config.setdefault("min-available-nodes", nodes)
    return run_config


def _cmd_demo(args: argparse.Namespace) -> int:
    run_config = demo_run_config(args.state_dir, args.nodes, args.run_config)
    if args.measure_node is not None and not 0 <= args.measure_node < args.nodes:
        raise FederationError(
            f"--measure-node {args.measure_node} is not a node of --nodes {args.nodes}; "
            f"use 0..{args.nodes - 1}"
        )
    with local_federation(args.state_dir, args.nodes, **_node_options(args)) as federation:
        if args.measure_node is None:
            return stream_run(federation.layout, run_config)
        with NodeSampler(*federation.node_pids(args.measure_node)) as sampler:
            code = stream_run(federation.layout, run_config)
        report = measurement_report(sampler.footprint(), Path(str(run_config["run-dir"])))
        print(json.dumps(report, indent=2))
        (federation.layout.root / "measurement.json").write_text(
            strict_json.dumps(report, indent=2)
        )
        return code


def _cmd_floor(args: argparse.Namespace) -> int:
    if args.rounds < 1:
        raise FederationError(f"--rounds must be >= 1, got {args.rounds}")
    out = args.state_dir.expanduser().resolve() / "floor.json"
    out.unlink(missing_ok=True)
    run_config = {"num-rounds": args.rounds, "min-available-nodes": args.nodes, "out": str(out)}
    with local_federation(args.state_dir, args.nodes, **_node_options(args)) as federation:
        code = stream_run(federation.layout, run_config, FLOOR_APP)
    if code == 0:
        seconds = json.loads(out.read_text())["round-seconds"]
        median = sorted(seconds)[len(seconds) // 2]
        rounds = ", ".join(f"{s:.2f}" for s in seconds)
        print(
            f"Flower's floor, {args.nodes} node(s), --clientapp {args.clientapp}: "
            f"{rounds} s per round (median {median:.2f} s)"
        )
    return code


def _node_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "data_path": args.data_path,
        "node_data": own_data_paths(args.own_data),
        "clientapp": args.clientapp,
        "torch_threads": args.torch_threads,
        "supernode_poll": args.supernode_poll_interval,
    }


def own_data_paths(folder: Path | None) -> tuple[str, ...]:
    """--own-data FOLDER: its .csv/.parquet files in name order, one per SuperNode."""
    if folder is None:
        return ()
    if not folder.expanduser().is_dir():
        raise FederationError(f"--own-data {folder} is not a folder of .csv/.parquet files")
    files = sorted(p for p in folder.expanduser().iterdir() if p.suffix in (".csv", ".parquet"))
    if not files:
        raise FederationError(f"--own-data {folder} holds no .csv or .parquet file")
    return tuple(str(f) for f in files)


def _node_count(args: argparse.Namespace) -> int:
    """--nodes, or with --own-data one node per file when --nodes is not given."""
    if args.nodes is not None:
        return args.nodes
    return len(own_data_paths(args.own_data)) or 3


def measurement_report(footprint: NodeFootprint, run_dir: Path) -> dict[str, Any]:
    """The figures docs/deployment.md quotes: a node's memory, and time per round."""
    rows = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines() if r]
    rounds = len(rows)
    return {
        "peak-rss-mib": {k: round(v, 1) for k, v in sorted(footprint.peak_rss_mib.items())},
        "peak-tree-rss-mib": round(footprint.peak_tree_rss_mib, 1),
        "rounds": rounds,
        "round-seconds": [r["seconds"] for r in rows],
        "clientapp-processes": footprint.clientapp_processes,
        "node-busy-seconds-per-round": round(footprint.clientapp_seconds / max(rounds, 1), 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.federation", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {
        "up": _cmd_up, "run": _cmd_run, "down": _cmd_down, "demo": _cmd_demo, "floor": _cmd_floor
    }  # fmt: skip
    for name in commands:
        p = sub.add_parser(name)
        p.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
        if name in ("up", "demo", "floor"):
            p.add_argument("--nodes", type=int, default=None, help="default 3")
            p.add_argument("--data-path", default="", help="data-path in every node's config")
            p.add_argument(
                "--own-data", type=Path, default=None, metavar="FOLDER",
                help="each node holds its own data: node i gets the i-th .csv/.parquet file "
                "of FOLDER as its data-path and no partition-id (--nodes: one per file)",
            )  # fmt: skip
            p.add_argument(
                "--clientapp", choices=CLIENTAPP_MODES, default="in-node",
                help="in-node (default): one ClientApp process per node for all messages, "
                "inside the SuperNode's process; process: the same as a process of its own "
                "beside the SuperNode; per-message: Flower's default, a new process per message",
            )  # fmt: skip
            p.add_argument(
                "--supernode-poll-interval", type=float, default=None, metavar="SECONDS",
                help="in-node only: cap the SuperNode's fixed 3 s poll (a patch of Flower "
                "1.42's internals, off by default; see deploy/node.py)",
            )  # fmt: skip
            p.add_argument(
                "--torch-threads", type=int, default=None, metavar="N",
                help="torch-threads in every node's config (default: the app's, 1)",
            )  # fmt: skip
        if name == "up":
            p.add_argument("--port", type=int, default=None, help="default: a free port")
        if name in ("run", "demo"):
            p.add_argument("--run-config", default="", help="'key=value ...' overrides")
        if name == "demo":
            p.add_argument("--measure-node", type=int, default=None, metavar="INDEX")
        if name == "floor":
            p.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    try:
        if "nodes" in args:
            args.nodes = _node_count(args)
        return commands[args.command](args)
    except FederationError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
