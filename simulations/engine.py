"""Run the app on Flower's Simulation Engine, owning every process it starts.

``flwr run`` against Flower's built-in ``local`` connection starts a detached SuperLink
that outlives the command. Here we start the SuperLink ourselves (simulation mode, free
loopback port, ``FLWR_HOME`` in a folder we own), submit runs with ``flwr run --stream``,
and stop the SuperLink by its PID on exit, also when a run fails.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.processes import console_script, free_port, run_config_arg, stop_process_group
from simulations.ray_cluster import PRIVATE_RAY, ClientResources, RayTarget, federation_config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "fedmeta-sim"


class SimulationError(RuntimeError):
    """The SuperLink did not start, or a run did not finish cleanly."""


def app_dir() -> Path:
    """The Flower app's folder, which ``flwr run`` packages: this project's source checkout."""
    if not (PROJECT_ROOT / "pyproject.toml").is_file():
        raise SimulationError(
            "the Simulation Engine runs the Flower app from its source folder (`flwr run` "
            f"reads [tool.flwr.app] from its pyproject.toml), but {PROJECT_ROOT} is an "
            "installed copy without one: run from a checkout (pip install -e .) or use "
            "--engine loop"
        )
    return PROJECT_ROOT


@dataclass
class SuperLink:
    """A running simulation SuperLink and the environment that reaches it."""

    process: subprocess.Popen
    env: dict[str, str]
    home: Path
    log_path: Path
    ray: RayTarget = PRIVATE_RAY

    def command(
        self, overrides: Mapping[str, Any], num_supernodes: int, cpus_per_client: float = 1,
        gpus_per_client: float = 0,
    ) -> list[str]:  # fmt: skip
        federation = federation_config(
            num_supernodes, ClientResources(cpus_per_client, gpus_per_client), self.ray
        )
        return [
            console_script("flwr"), "run", str(app_dir()), CONNECTION, "--stream",
            "--run-config", run_config_arg(overrides),
            "--federation-config", run_config_arg(federation),
        ]  # fmt: skip

    def start_run(
        self, overrides: Mapping[str, Any], num_supernodes: int, cpus_per_client: float = 1,
        gpus_per_client: float = 0,
    ) -> subprocess.Popen:  # fmt: skip
        """Submit one run; its streamed log is the returned process's stdout (text)."""
        return subprocess.Popen(
            self.command(overrides, num_supernodes, cpus_per_client, gpus_per_client),
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True,
        )  # fmt: skip

    def run(
        self, overrides: Mapping[str, Any], num_supernodes: int, cpus_per_client: float = 1,
        log_file: Path | None = None, timeout: float | None = None, gpus_per_client: float = 0,
    ) -> str:  # fmt: skip
        """Submit one run, wait for it, and return its log; raise if it failed."""
        proc = self.start_run(overrides, num_supernodes, cpus_per_client, gpus_per_client)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
            raise SimulationError(
                f"run did not finish in {timeout} s; see {self.log_path}"
            ) from None
        if log_file:
            log_file.write_text(output)
        if proc.returncode != 0:
            raise SimulationError(
                f"`flwr run` exited with {proc.returncode}; see "
                f"{log_file or 'its output'} and {self.log_path}"
            )
        self.check_finished(output)
        return output

    def check_finished(self, output: str) -> None:
        """Raise unless the run in ``output`` finished as completed.

        ``flwr run --stream`` exits 0 even when the ServerApp raised, so ask the
        SuperLink for the run's final status, which carries the exception's message.
        """
        match = re.search(r"Successfully started run (\d+)", output)
        if match is None:
            raise SimulationError(f"`flwr run` did not start a run:\n{output[-2000:]}")
        status = self.status(int(match.group(1)))
        if status.get("status") != "finished:completed":
            raise SimulationError(
                f"run {match.group(1)} ended as {status.get('status')!r}: "
                f"{status.get('status-details', 'no details')}"
            )

    def status(self, run_id: int) -> dict[str, Any]:
        proc = subprocess.run(
            [console_script("flwr"), "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"],
            env=self.env, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            return dict(json.loads(proc.stdout)["runs"][0])
        except (json.JSONDecodeError, KeyError, IndexError):
            raise SimulationError(
                f"`flwr ls` gave no status for run {run_id}: {proc.stderr}"
            ) from None


@contextmanager
def simulation_superlink(
    workdir: Path | None = None, extra_env: Mapping[str, str] | None = None,
    ray: RayTarget = PRIVATE_RAY,
) -> Iterator[SuperLink]:  # fmt: skip
    """Start a simulation SuperLink on a free port; always stop it (and its children).

    ``extra_env`` reaches every process it starts (the ServerApp and ClientApps included).
    Runs use ``ray`` (default: a private Ray per run, whatever cluster this machine knows):
    the SuperLink's ``RAY_ADDRESS`` is what Flower's ``ray.init()`` connects to.
    """
    app_dir()  # before starting anything
    owned = workdir is None
    home = Path(tempfile.mkdtemp(prefix="fedmeta-flwr-")) if owned else Path(workdir)  # type: ignore[arg-type]
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = (
        os.environ
        | {
            "FLWR_HOME": str(home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            # The SuperLink spawns flower-superexec / flwr-serverapp / flwr-simulation by name.
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
        | dict(extra_env or {})
        | {"RAY_ADDRESS": ray.address}
    )
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "127.0.0.1:{port}"\ninsecure = true\n'
    )
    log_path = home / "superlink.log"
    cmd = [
        console_script("flower-superlink"), "--insecure", "--simulation",
        "--disable-runtime-dependency-installation",
        "--host", "127.0.0.1", "--port", str(port), "--log-file", str(log_path),
    ]  # fmt: skip
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        _wait_for_port(port, proc, log_path)
        yield SuperLink(process=proc, env=env, home=home, log_path=log_path, ray=ray)
    finally:
        stop_process_group(proc)


def _wait_for_port(port: int, proc: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SimulationError(f"flower-superlink exited with {proc.returncode}; see {log_path}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise SimulationError(f"flower-superlink did not listen on port {port} in {timeout:g} s")
