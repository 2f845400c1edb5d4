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


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ("algorithms: {maml: {}}\nbogus: 1\n", "bogus", "unknown key"),
        ("algorithms: {reptile: {}}\n", "algorithms.reptile", "is not an algorithm"),
        ("algorithms: {maml: {inner-lr: -1}}\n", "algorithms.maml.inner-lr", "a number > 0"),
        ("base: {num-rounds: 0}\nalgorithms: {maml: {}}\n", "base.num-rounds", "integer >= 1"),
        ("seeds: [-1]\nalgorithms: {maml: {}}\n", "seeds", "integers >= 0"),
        ("engine: gpu\nalgorithms: {maml: {}}\n", "engine", "not one of"),
        ("algorithms: [maml\n", "-", "not valid YAML"),
    ],
)
def test_an_invalid_experiment_names_file_key_and_problem(tmp_path, text, key, problem):
    from simulations.experiment import ExperimentError

    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ExperimentError) as err:
        load_experiment(path)
    message = str(err.value)
    assert str(path) in message and f"key '{key}'" in message and problem in message


def test_runner_stops_before_running_anything_on_an_invalid_file(tmp_path, capsys):
    from simulations.run import main

    path = tmp_path / "bad.yaml"
    path.write_text("algorithms: {maml: {num-rounds: zero}}\n")
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert "num-rounds" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_loop_experiment_writes_tables_and_plots(tmp_path):
    from simulations.run import main

    path = tmp_path / "tiny.yaml"
    path.write_text(
        "engine: loop\nnum-supernodes: 4\nseeds: [0, 1]\n"
        "base: {num-rounds: 2, local-steps: 1, hidden-sizes: '8', new-clients: 3}\n"
        "algorithms: {maml: {}, fedavg: {}}\n"
    )
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out)]) == 0
    table = (out / "summary.md").read_text()
    assert "| maml |" in table and "| fedavg |" in table and "new clients, 10 steps" in table
    for name in (
        "summary.csv",
        "mse_vs_round.png",
        "mse_per_client.png",
        "sinusoid_new_clients.png",
    ):
        assert (out / name).stat().st_size > 0
