"""A SuperNode whose ClientApp lives as long as the node: imports and data are paid once.

    python -m deploy.node [flower-supernode arguments]   # SuperNode + ClientApp in 1 process
    python -m deploy.node --clientapp-only --runtime-api-address 127.0.0.1:9094
        # only the ClientApp, beside a `flower-supernode --isolation process`

Flower 1.42 runs one ClientApp process per message: ``flower-supernode`` (default
``--isolation subprocess``) starts ``flower-superexec``, which polls the SuperNode's Runtime
API every second (``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``) and starts a ``flwr-clientapp`` per
task; that process imports torch, Flower and the app, loads the node's data, handles one
message and exits (``run_clientapp`` ends in ``flwr_exit``). Flower's warm executor pools
are for Kubernetes and for agent, model and connector tasks only, not for ClientApps.

With ``--isolation process`` the SuperNode starts no executor: whoever holds its Runtime API
address claims its tasks (``AcquireTask``). :class:`ClientAppServer` is such an executor. It
runs each claimed task the way ``flwr-clientapp`` does, with Flower's own functions (pull the
message, context, run and FAB; call the ClientApp; push the reply and the context), but in
a process that stays: the app's module and its caches (client/runtime.py: settings, model
skeleton, every client's data) outlive the message. The link to the SuperLink (TLS, node
authentication, heartbeats, node config) is the unchanged ``flower-supernode``.

Two layouts, the same server:

* **one process** (``python -m deploy.node ARGS``, the default of ``deploy.federation``):
  Flower's ``flower-supernode`` main in the main thread, the server in a second thread.
  Flower's modules are imported once for both (a second process would hold its own ~90 MiB
  copy). A ClientApp that raises is answered with Flower's error reply and the node goes
  on; one that crashes the interpreter takes the node down, like a power cut.
* **two processes** (``--clientapp-only``): the server beside a ``flower-supernode
  --isolation process``, so a crash of the ClientApp leaves the SuperNode up.

The app's code comes from the run's FAB, as with ``flwr-clientapp``: it is installed under
``FLWR_HOME`` and imported once per FAB. A run with another FAB (changed code) drops the
previous app's modules and imports the new ones; torch and Flower stay loaded. This module
imports nothing of the project (``common``, ``client``) itself, so that every project module
the ClientApp uses comes from the FAB. Runtime dependency installation is not supported
(install the dependencies on the device; set FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1).

Flower's own floor (docs/deployment.md): a 1.42 SuperNode that finds no message waits a
fixed 3 s before asking the SuperLink again, and checks for its ClientApp's reply every
0.5 s; neither has a flag. A round is two message trips, so that wait alone costs a round
up to 6 s. ``--supernode-poll-interval S`` (off by default) caps both waits at S seconds in
this process (:func:`cap_supernode_waits`); it is a patch of Flower 1.42's internals, which
is why it is opt-in, and it makes every idle node ask the SuperLink 1/S times a second.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from pathlib import Path

import httpx
from flwr.app import Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp import ClientApp
from flwr.clientapp.client_app import LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest, SendTaskHeartbeatRequest
from flwr.supercore import log
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender
from flwr.supercore.interceptors import RuntimeTokenHttpInterceptor, RuntimeVersionHttpInterceptor
from flwr.supercore.retry import RetryInvoker, exponential
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import (
    pull_task_input,
    push_message,
    push_task_output,
)

DEFAULT_RUNTIME_API_ADDRESS = "127.0.0.1:9094"  # flower-supernode's default --host/--port
DEFAULT_POLL_INTERVAL = 0.2  # s between AcquireTask calls on loopback while idle
DEFAULT_PRELOAD = ("torch",)  # imported before the first message, not during it


@dataclass
class LoadedApp:
    """The ClientApp of one FAB and where its code lives."""

    fab_hash: str
    project_dir: Path
    app: ClientApp


class ClientAppServer:
    """Claims the SuperNode's ClientApp tasks and runs them, one at a time, in this process."""

    def __init__(
        self,
        runtime_api_address: str = DEFAULT_RUNTIME_API_ADDRESS,
        *,
        root_certificates: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        preload: Sequence[str] = DEFAULT_PRELOAD,
    ) -> None:
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval}")
        self.address = runtime_api_address
        self.root_certificates = root_certificates  # a PEM file: the Runtime API uses TLS
        self.poll_interval = poll_interval
        self.preload = tuple(preload)
        self.loaded: LoadedApp | None = None
        self.tasks_served = 0
        self.apps_loaded = 0

    # ---- the loop ---------------------------------------------------------------------
    def serve_forever(self, stop: threading.Event | None = None) -> None:
        """Claim and run tasks until ``stop`` is set (never, by default)."""
        stop = stop or threading.Event()
        for module in self.preload:
            importlib.import_module(module)
        client = self._client("SuperExec")
        log(INFO, "[fedmeta] ClientApp server (pid %d) serving %s", os.getpid(), self.address)
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value])
        try:
            while not stop.is_set():
                try:
                    claimed = client.AcquireTask(request)
                except httpx.HTTPError as err:  # SuperNode not up yet, or restarting
                    log(WARNING, "[fedmeta] Runtime API at %s: %s", self.address, err)
                    stop.wait(1.0)
                    continue
                if claimed.HasField("task") and claimed.token:
                    self.run_task(claimed.token)
                else:
                    stop.wait(self.poll_interval)
        finally:
            client.close()

    def run_task(self, token: str) -> None:
        """One message, as ``flwr-clientapp`` runs it, without leaving the process."""
        started = time.perf_counter()
        client = self._client("flwr-clientapp", token)
        heartbeat = HeartbeatSender(_task_heartbeat(client))
        heartbeat.start()
        message = context = reply = None
        sub_status, details = SubStatus.FAILED, "ClientApp task failed due to unknown reason"
        try:
            message, context, run, fab = pull_task_input(client)
            app = self.app_for(run, fab)
            reply = app(message=message, context=context)
            sub_status, details = SubStatus.COMPLETED, ""
        except Exception as ex:  # answered as flwr-clientapp answers it, and served on
            code = ErrorCode.CLIENT_APP_RAISED_EXCEPTION
            details = f"{type(ex)}:<'{ex}'>"
            if isinstance(ex, LoadClientAppError):
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                details = "An exception was raised when attempting to load `ClientApp`"
            log(ERROR, "ClientApp raised an exception", exc_info=ex)
            if message is not None:
                reply = Message(Error(code=code, reason=details), reply_to=message)
        finally:
            try:
                if reply is not None and context is not None:
                    push_message(client, reply, context)
                push_task_output(client, context, sub_status, details)
            except Exception as ex:  # the SuperNode's own expiry handles a lost reply
                log(ERROR, "[fedmeta] could not return the reply", exc_info=ex)
            heartbeat.stop()
            client.close()
        self.tasks_served += 1
        kind = message.metadata.message_type if message is not None else "?"
        log(
            INFO,
            "[fedmeta] pid %d served a %s message in %.2f s (tasks served: %d, apps loaded: %d)",
            os.getpid(), kind, time.perf_counter() - started, self.tasks_served,
            self.apps_loaded,
        )  # fmt: skip

    # ---- the app ----------------------------------------------------------------------
    def app_for(self, run: Run, fab: Fab) -> ClientApp:
        """The run's ClientApp: imported once per FAB; another FAB replaces the previous."""
        if self.loaded is not None and self.loaded.fab_hash == fab.hash_str:
            return self.loaded.app
        project_dir = install_from_fab(fab.content, skip_prompt=True)
        if self.loaded is not None:
            forget_modules_under(self.loaded.project_dir)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        app = load(run.fab_id, run.fab_version, fab.hash_str)
        self.loaded = LoadedApp(fab.hash_str, Path(project_dir).resolve(), app)
        self.apps_loaded += 1
        return app

    def _client(self, component: str, token: str | None = None) -> RuntimeHttpClient:
        interceptors: list = [RuntimeVersionHttpInterceptor(component_name=component)]
        if token is not None:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        # Not Flower's make_simple_http_retry_invoker: on a 401 it SIGINTs its own process,
        # which here would also be the SuperNode's.
        retry = RetryInvoker(
            lambda: exponential(max_delay=2), httpx.TransportError, max_tries=5, max_time=30
        )
        return RuntimeHttpClient.from_server_address(
            server_address=self.address,
            insecure=self.root_certificates is None,
            root_certificates=self.root_certificates,
            interceptors=interceptors,
            retry_invoker=retry,
        )


def _task_heartbeat(client: RuntimeHttpClient):
    """Flower's task heartbeat, minus its SIGINT on a refused beat (that would stop the node)."""
    request = SendTaskHeartbeatRequest()

    def beat() -> bool:
        try:
            if not client.SendTaskHeartbeat(request).success:
                log(WARNING, "[fedmeta] the SuperNode no longer expects this task's reply")
        except httpx.HTTPError:
            return False
        return True

    return beat


def forget_modules_under(directory: Path) -> list[str]:
    """Drop every imported module whose file lies under ``directory``; return their names."""
    directory = directory.resolve()
    gone = []
    for name, module in list(sys.modules.items()):
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve().is_relative_to(directory):
            del sys.modules[name]
            gone.append(name)
    while str(directory) in sys.path:
        sys.path.remove(str(directory))
    importlib.invalidate_caches()
    return gone


# ---- command line -------------------------------------------------------------------------
def runtime_api_address(supernode_args: Sequence[str]) -> tuple[str, str | None]:
    """The Runtime API address and CA file a ``flower-supernode`` command line implies."""
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="9094")
    parser.add_argument("--ssl-ca-certfile", default=None)
    known, _ = parser.parse_known_args(list(supernode_args))
    host = "127.0.0.1" if known.host in ("0.0.0.0", "::", "") else known.host
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{known.port}", known.ssl_ca_certfile


def cap_supernode_waits(seconds: float) -> None:
    """Cap the SuperNode's fixed waits (3 s for a message, 0.5 s for a reply) at ``seconds``.

    ``flwr.supernode.start_client_internal`` calls ``time.sleep`` for nothing else; only
    that module's view of ``time`` changes, the rest of the process keeps the real one.
    """
    if not seconds > 0:
        raise ValueError(f"--supernode-poll-interval must be > 0 seconds, got {seconds}")
    from flwr.supernode import start_client_internal

    start_client_internal.time = _CappedSleep(seconds)  # type: ignore[assignment]


class _CappedSleep:
    """The ``time`` module, with ``sleep`` capped."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

    def __getattr__(self, name: str) -> object:
        return getattr(time, name)


def run_supernode(
    supernode_args: Sequence[str], poll_interval: float, supernode_poll: float | None = None
) -> None:
    """``flower-supernode --isolation process ARGS`` with the ClientApp server in a thread."""
    args = list(supernode_args)
    if any(a == "--isolation" or a.startswith("--isolation=") for a in args):
        raise SystemExit(
            "error: deploy.node sets --isolation process itself; remove --isolation "
            "(for Flower's process per message run flower-supernode directly)"
        )
    if supernode_poll is not None:
        cap_supernode_waits(supernode_poll)
    address, ca_file = runtime_api_address(args)
    server = ClientAppServer(address, root_certificates=ca_file, poll_interval=poll_interval)

    def serve() -> None:
        try:
            server.serve_forever()
        except BaseException as err:  # a node without its ClientApp must not stay online
            log(ERROR, "[fedmeta] the ClientApp server stopped: %r; stopping the node", err)
            os.kill(os.getpid(), signal.SIGTERM)  # Flower's handler: goodbye, then exit

    threading.Thread(target=serve, name="clientapp-server", daemon=True).start()
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *args, "--isolation", "process"]
    flower_supernode()


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="python -m deploy.node",
        allow_abbrev=False,  # never take a flower-supernode flag for an abbreviation of ours
        description="flower-supernode with one ClientApp process for all messages. Every "
        "argument not listed here goes to flower-supernode.",
    )
    parser.add_argument(
        "--clientapp-only", action="store_true",
        help="run only the ClientApp server, beside a `flower-supernode --isolation process`",
    )  # fmt: skip
    parser.add_argument(
        "--runtime-api-address", default=DEFAULT_RUNTIME_API_ADDRESS,
        help="with --clientapp-only: the SuperNode's --host:--port",
    )  # fmt: skip
    parser.add_argument(
        "--runtime-root-certificates", default=None,
        help="with --clientapp-only: CA file when the Runtime API uses TLS",
    )  # fmt: skip
    parser.add_argument(
        "--task-poll-interval", type=float, default=DEFAULT_POLL_INTERVAL,
        help=f"seconds between asks for a task while idle (default {DEFAULT_POLL_INTERVAL})",
    )  # fmt: skip
    parser.add_argument(
        "--supernode-poll-interval", type=float, default=None, metavar="SECONDS",
        help="cap the SuperNode's fixed 3 s wait for messages (and 0.5 s for replies); "
        "default: Flower's waits",
    )  # fmt: skip
    ours, rest = parser.parse_known_args(argv)
    if not ours.task_poll_interval > 0:
        parser.error(f"--task-poll-interval must be > 0, got {ours.task_poll_interval}")
    if ours.clientapp_only:
        if rest:
            parser.error(f"--clientapp-only takes no flower-supernode arguments, got {rest}")
        server = ClientAppServer(
            ours.runtime_api_address,
            root_certificates=ours.runtime_root_certificates,
            poll_interval=ours.task_poll_interval,
        )
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: a quiet stop
            server.serve_forever()
        return
    if ours.supernode_poll_interval is not None and not ours.supernode_poll_interval > 0:
        parser.error(f"--supernode-poll-interval must be > 0, got {ours.supernode_poll_interval}")
    run_supernode(rest, ours.task_poll_interval, ours.supernode_poll_interval)


if __name__ == "__main__":
    main()
