"""Every shipped experiment YAML loads and validates; relative data paths become absolute."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.experiment import load_experiment

EXPERIMENTS = sorted(
    (Path(__file__).resolve().parents[2] / "simulations/experiments").glob("*.yaml")
)


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_experiment_loads_and_validates(path):
    exp = load_experiment(path)
    assert exp.algorithms
    for overrides in [exp.base, *exp.algorithms.values()]:
        if "data-path" in overrides:
            assert Path(overrides["data-path"]).is_absolute()


def test_relative_data_path_resolves_against_the_yaml_folder(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    (tmp_path / "exp.yaml").write_text(
        "base: {dataset: femnist, data-path: data}\nalgorithms: {fedavg: {}}\n"
    )
    monkeypatch.chdir("/")
    exp = load_experiment(tmp_path / "exp.yaml")
    assert exp.base["data-path"] == str((tmp_path / "data").resolve())
