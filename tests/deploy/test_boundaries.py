"""deploy/ never imports the simulation driver: what both need lives in common/processes.py."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports inside functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


@pytest.mark.parametrize("path", sorted((ROOT / "deploy").rglob("*.py")), ids=lambda p: p.name)
def test_deploy_does_not_import_simulations(path: Path):
    bad = sorted(m for m in imported_modules(path) if m.split(".")[0] == "simulations")
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}; shared helpers go to common/"


def test_the_check_sees_a_lazy_import(tmp_path: Path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from simulations.engine import free_port\n")
    assert "simulations.engine" in imported_modules(sample)


def test_simulations_and_deploy_share_the_process_helpers():
    from common import processes
    from deploy import federation, managed_process
    from simulations import engine

    assert engine.free_port is processes.free_port is federation.free_port
    assert engine.run_config_arg is processes.run_config_arg is federation.run_config_arg
    assert managed_process.stop_process_group is processes.stop_process_group
    assert engine.stop_process_group is processes.stop_process_group
