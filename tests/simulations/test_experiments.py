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
        ("base: {algorithm: fedavg}\nalgorithms: {maml: {}}\n", "base.algorithm", "per row"),
        ("base: {resume: true}\nalgorithms: {maml: {}}\n", "base.resume", "checkpoint"),
        ("algorithms: {maml: {seed: 3}}\n", "algorithms.maml.seed", "from 'seeds'"),
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


def _tiny(tmp_path, hidden: str = "8", extra: str = "") -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        "engine: loop\nnum-supernodes: 4\nseeds: [0]\n"
        f"base: {{num-rounds: 1, local-steps: 1, hidden-sizes: '{hidden}'{extra}}}\n"
        "algorithms: {maml: {}}\n"
    )
    return path


def _only_error_line(capfd) -> str:
    """The runner's report of a named error: one `error:` line, no traceback anywhere."""
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_set_refuses_a_key_the_runner_sets_per_run(tmp_path, capfd):
    from simulations.run import main

    assert main([str(_tiny(tmp_path)), "--set", "algorithm=fedavg"]) == 2
    assert "key '--set algorithm': is chosen per row" in _only_error_line(capfd)


def test_a_run_where_every_client_fails_exits_nonzero_and_reruns_after_the_fix(
    tmp_path, monkeypatch, capfd
):
    from common.data.types import DataError
    from simulations.run import main

    def broken(settings, partition_id, num_partitions):
        raise DataError("shard.json is cut short")

    args = [str(_tiny(tmp_path)), "--out", str(tmp_path / "out")]
    run_dir = tmp_path / "out" / "maml" / "seed0"
    with monkeypatch.context() as patch:
        patch.setattr("client.runtime.load_client_data", broken)
        assert main(args) == 1
    assert "every client failed" in _only_error_line(capfd)
    assert not (run_dir / "summary.json").exists() and not (run_dir / "model.pt").exists()

    assert main(args) == 0  # the data is fixed: the cell runs again, it is not reused
    out, _ = capfd.readouterr()
    assert "(new)" in out and "already done" not in out
    assert (run_dir / "summary.json").exists()


def _corrupt_data(tmp_path: Path) -> tuple[Path, str]:
    data = tmp_path / "femnist.npz"
    data.write_bytes(b"PK\x03\x04 half an npz")
    extra = f", dataset: femnist, model: logreg, data-path: '{data}'"
    return _tiny(tmp_path, extra=extra), "FEMNIST npz is unreadable, cut short or corrupt"


def _interrupted_run(tmp_path: Path) -> Path:
    """A finished one-round run made to look interrupted: its summary is gone."""
    from simulations.run import main

    assert main([str(_tiny(tmp_path)), "--out", str(tmp_path / "out")]) == 0
    run_dir = tmp_path / "out" / "maml" / "seed0"
    (run_dir / "summary.json").unlink()
    return run_dir


def _resume_with_other_settings(tmp_path: Path) -> tuple[Path, str]:
    _interrupted_run(tmp_path)
    return _tiny(tmp_path, hidden="16"), "config key 'hidden-sizes' has value '16'; allowed: '8'"


def _truncated_checkpoint(tmp_path: Path) -> tuple[Path, str]:
    checkpoint = _interrupted_run(tmp_path) / "checkpoint.npz"
    checkpoint.write_bytes(checkpoint.read_bytes()[:100])
    return _tiny(tmp_path), f"checkpoint {checkpoint} is unreadable"


NAMED_ERRORS = [_corrupt_data, _resume_with_other_settings, _truncated_checkpoint]


@pytest.mark.parametrize("case", NAMED_ERRORS, ids=lambda f: f.__name__.strip("_"))
def test_the_loop_runner_reports_a_named_error_in_one_line(tmp_path, capfd, case):
    from simulations.run import main

    experiment, expected = case(tmp_path)
    capfd.readouterr()
    assert main([str(experiment), "--out", str(tmp_path / "out")]) == 1
    assert expected in _only_error_line(capfd)


def test_a_finished_cell_from_another_federation_size_is_not_reused(tmp_path, capfd):
    from simulations.run import main

    experiment, out = _tiny(tmp_path), str(tmp_path / "out")
    assert main([str(experiment), "--out", out]) == 0
    assert main([str(experiment), "--out", out]) == 0
    assert "already done, reused" in capfd.readouterr().out
    experiment.write_text(experiment.read_text().replace("num-supernodes: 4", "num-supernodes: 6"))
    assert main([str(experiment), "--out", out]) == 1
    assert "key 'num-supernodes': is 6, but the run in" in _only_error_line(capfd)


def test_seeds_runs_only_the_seeds_named(tmp_path, capfd):
    from simulations.run import main

    path = tmp_path / "two.yaml"
    path.write_text(
        "engine: loop\nnum-supernodes: 2\nseeds: [0, 1]\n"
        "base: {num-rounds: 1, local-steps: 1, hidden-sizes: '4', min-available-nodes: 1}\n"
        "algorithms: {maml: {}}\n"
    )
    out = tmp_path / "out"
    assert main([str(path), "--out", str(out), "--seeds", "1"]) == 0
    assert (out / "maml/seed1/summary.json").exists()
    assert not (out / "maml/seed0").exists()
    assert main([str(path), "--seeds", "one"]) == 2
    assert "key '--seeds': needs integers" in _only_error_line(capfd)
