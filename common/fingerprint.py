"""Which build of the project a process imported: its version and a hash of the app's code.

On a Ray cluster (or with SuperNodes on other machines) a worker imports this project from
its own machine's checkout, not from the FAB the run was submitted with: Flower's Ray
backend points the workers' ``PYTHONPATH`` at the paths of the process that started Ray.
Code that differs between machines would train and aggregate together without a word. So
the ServerApp stamps every message with its fingerprint (common/messages.py ``CODE``),
every ClientApp compares it with its own, and a worker whose code differs refuses the
message with :class:`CodeMismatch`, naming its machine; the server stops the run on it.

The hash covers the source files of the packages that run in a federation (``client``,
``common``, ``server``): their relative paths and bytes, in a fixed order. Anything that
changes what a node computes changes the hash; a rebuilt ``__pycache__`` does not.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import socket
import tomllib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

DISTRIBUTION = "fedmeta-flower"
APP_PACKAGES = ("client", "common", "server")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class CodeMismatch(RuntimeError):
    """A worker imported other code than the ServerApp runs; the message names the machine."""


def fingerprint_of(folders: Iterable[Path], version: str) -> str:
    """``version+hash``: the hash of every ``*.py`` under ``folders`` (path and bytes)."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(folder.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            digest.update(f"{folder.name}/{path.relative_to(folder).as_posix()}\0".encode())
            digest.update(path.read_bytes())
            digest.update(b"\0")
    return f"{version}+{digest.hexdigest()[:16]}"


def project_version() -> str:
    """The installed distribution's version, else the checkout's pyproject.toml."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        pyproject = PROJECT_ROOT / "pyproject.toml"
        if pyproject.is_file():
            return str(tomllib.loads(pyproject.read_text())["project"]["version"])
        return "unknown"


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """This process's fingerprint (computed once: the imported code does not change)."""
    return fingerprint_of((PROJECT_ROOT / p for p in APP_PACKAGES), project_version())


def check_code(expected: str) -> None:
    """Raise :class:`CodeMismatch` unless this process runs the code ``expected`` names.

    ``""`` (a server from before fingerprints, or a hand-made message) is not checked.
    """
    mine = code_fingerprint()
    if expected and expected != mine:
        raise CodeMismatch(
            f"code mismatch on machine {socket.gethostname()}: its worker imported "
            f"fedmeta-flower {mine} from {PROJECT_ROOT}, the ServerApp runs {expected}; "
            "install the same checkout on every machine (same commit, same local edits)"
        )
