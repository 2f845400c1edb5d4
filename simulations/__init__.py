"""Experiments: the runner, its engines, reports. ``run_experiment`` is the Python entry point."""

from typing import Any


def __getattr__(name: str) -> Any:
    """``from simulations import run_experiment`` without importing the runner (yaml, the
    engines) for every ``python -m simulations.<tool>``."""
    if name == "run_experiment":
        from simulations.run import run_experiment

        return run_experiment
    raise AttributeError(f"module 'simulations' has no attribute {name!r}")
