"""Code that matches across machines (issue 20): the fingerprint, and a worker that refuses."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

import server.app  # noqa: F401  flwr's log handler keeps the stderr of its import: not a capture's
from common import fingerprint
from common.fingerprint import CodeMismatch, check_code, code_fingerprint, fingerprint_of


def _copy(tmp_path: Path) -> list[Path]:
    folders = []
    for name in fingerprint.APP_PACKAGES:
        shutil.copytree(fingerprint.PROJECT_ROOT / name, tmp_path / name)
        folders.append(tmp_path / name)
    return folders


def test_the_hash_follows_the_code_and_nothing_else(tmp_path):
    folders = _copy(tmp_path)
    before = fingerprint_of(folders, "0.1.0")
    assert before == fingerprint_of(
        [fingerprint.PROJECT_ROOT / n for n in fingerprint.APP_PACKAGES], "0.1.0"
    )  # a copy of the same files, elsewhere: the same fingerprint
    (tmp_path / "server" / "__pycache__").mkdir(exist_ok=True)
    (tmp_path / "server" / "__pycache__" / "x.py").write_text("cached")
    assert fingerprint_of(folders, "0.1.0") == before
    with (tmp_path / "common" / "meta.py").open("a") as f:
        f.write("\n# one local edit\n")
    edited = fingerprint_of(folders, "0.1.0")
    assert edited != before and edited.startswith("0.1.0+")
    assert fingerprint_of(folders, "0.2.0") != edited  # the version counts too


def test_a_worker_refuses_other_code_naming_its_machine():
    check_code(code_fingerprint())
    check_code("")  # an unstamped message is not checked
    with pytest.raises(CodeMismatch, match=f"on machine {socket.gethostname()}:"):
        check_code("0.1.0+0000000000000000")


def test_a_mismatch_stops_the_federation_in_one_error_line(tmp_path, monkeypatch, capfd):
    """The ServerApp stamps its fingerprint; this worker (the loop's ClientApp) has another."""
    from simulations.run import main

    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "0.1.0+another-checkout")
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "engine: loop\nnum-supernodes: 2\nseeds: [0]\n"
        "base: {num-rounds: 1, local-steps: 1, hidden-sizes: '8'}\nalgorithms: {maml: {}}\n"
    )
    assert main([str(path), "--out", str(tmp_path / "out")]) == 1
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert f"code mismatch on machine {socket.gethostname()}" in errors[0]
    assert "0.1.0+another-checkout" in errors[0] and code_fingerprint() in errors[0]
    assert not (tmp_path / "out" / "maml" / "seed0" / "metrics.jsonl").exists()
