"""deploy.node's pieces that need no SuperNode: its address, its app swap, its refusals.

The whole node (SuperNode and ClientApp server in one process, serving every message of a
TLS-authenticated federation) is exercised by tests/deploy/test_federation.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from deploy import node


def test_the_runtime_api_address_follows_the_supernode_flags():
    assert node.runtime_api_address([]) == ("127.0.0.1:9094", None)
    args = ["--superlink", "x:9092", "--host", "10.0.0.2", "--port", "9200"]
    assert node.runtime_api_address(args) == ("10.0.0.2:9200", None)
    # Listening everywhere: the server dials loopback. A CA file means the API speaks TLS.
    args = ["--host", "0.0.0.0", "--port", "9300", "--ssl-ca-certfile", "ca.crt"]
    assert node.runtime_api_address(args) == ("127.0.0.1:9300", "ca.crt")
    assert node.runtime_api_address(["--host", "::1"]) == ("[::1]:9094", None)


def test_a_new_fab_drops_the_previous_apps_modules(tmp_path: Path, monkeypatch):
    old = tmp_path / "fab-1"
    (old / "demoapp").mkdir(parents=True)
    (old / "demoapp" / "__init__.py").write_text("VERSION = 1\n")
    monkeypatch.syspath_prepend(str(old))
    import demoapp  # noqa: F401  (imported from the first FAB)

    assert sys.modules["demoapp"].VERSION == 1
    gone = node.forget_modules_under(old)
    assert gone == ["demoapp"] and "demoapp" not in sys.modules
    assert str(old) not in sys.path
    assert node.__name__ in sys.modules  # modules elsewhere are left alone


def test_isolation_is_the_nodes_own_choice():
    with pytest.raises(SystemExit, match="remove --isolation"):
        node.run_supernode(["--isolation", "subprocess"], poll_interval=0.2)


def test_a_poll_interval_must_be_positive():
    with pytest.raises(ValueError, match="poll_interval must be > 0"):
        node.ClientAppServer(poll_interval=0)
    with pytest.raises(SystemExit):
        node.main(["--clientapp-only", "--task-poll-interval", "-1"])


def test_the_node_imports_nothing_of_the_project_it_serves():
    """Project modules must come from the run's FAB, so deploy.node may not import them."""
    from tests.deploy.test_boundaries import imported_modules

    own = {m.split(".")[0] for m in imported_modules(Path(node.__file__))}
    assert not own & {"client", "common", "server", "simulations"}, own


def test_the_supernode_waits_can_be_capped_in_its_module_only(monkeypatch):
    import time

    from flwr.supernode import start_client_internal

    monkeypatch.setattr(start_client_internal, "time", start_client_internal.time)  # undo
    node.cap_supernode_waits(0.01)
    started = time.monotonic()
    start_client_internal.time.sleep(3)  # Flower's wait for a message
    assert time.monotonic() - started < 1
    assert start_client_internal.time.monotonic is time.monotonic  # the rest is time's
    assert time.sleep is not start_client_internal.time.sleep  # nobody else is patched
    with pytest.raises(ValueError, match="must be > 0"):
        node.cap_supernode_waits(0)


def test_a_node_whose_clientapp_server_dies_stops_itself(monkeypatch):
    import importlib
    import signal
    import threading

    cli = importlib.import_module("flwr.supernode.cli.flower_supernode")

    killed = threading.Event()

    def broken(self, stop=None):
        raise RuntimeError("boom")

    def fake_kill(pid, sig):
        assert sig == signal.SIGTERM
        killed.set()

    monkeypatch.setattr(node.ClientAppServer, "serve_forever", broken)
    monkeypatch.setattr(node.os, "kill", fake_kill)
    monkeypatch.setattr(cli, "flower_supernode", lambda: killed.wait(10))
    monkeypatch.setattr(node.sys, "argv", list(node.sys.argv))
    node.run_supernode(["--superlink", "127.0.0.1:1"], poll_interval=0.2)
    assert killed.is_set(), "the node went on without its ClientApp"
