"""Starting and stopping Flower's processes: what the simulation driver and deploy share.

Both ``simulations/`` (a simulation SuperLink per experiment) and ``deploy/`` (a SuperLink
and SuperNodes) start Flower's console scripts as processes of their own and must stop
every one of them, by id, also when something fails. The helpers they both need live here,
so that deploying never imports the simulation driver.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil


def console_script(name: str) -> str:
    """The console script ``name`` next to this interpreter (works in a venv not on PATH)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def toml_value(v: Any) -> str:
    """``v`` as a TOML value, the way ``--run-config`` and ``--node-config`` read it."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    text = str(v)
    if '"' in text:
        # Flower splits the pairs with a regex that ends a "..." value at the first quote,
        # escaped or not; a literal '...' string carries JSON such as model-args instead.
        if "'" in text or "\n" in text:
            raise ValueError(
                f"{text!r} holds both quote kinds (or a newline): Flower's --run-config and "
                "--node-config cannot carry it; drop one kind of quote"
            )
        return f"'{text}'"
    return '"' + text.replace("\\", "\\\\") + '"'


def run_config_arg(overrides: Mapping[str, Any]) -> str:
    """'key=value ...' for ``flwr run --run-config`` or ``flower-supernode --node-config``."""
    return " ".join(f"{k}={toml_value(v)}" for k, v in overrides.items())


def stop_process_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process's group (it was started in its own session), then SIGKILL.

    Flower's SuperExec starts its apps (``flwr-simulation`` with Ray, ``flwr-serverapp``)
    in sessions of their own, so a run cut short would outlive the group: every
    descendant found before the stop is stopped too.
    """
    if proc.poll() is not None:
        return
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    _stop_group(proc, grace)
    for p in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(descendants, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def _stop_group(proc: subprocess.Popen, grace: float) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace)
