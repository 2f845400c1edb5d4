"""The Python entry point runs the same code as the command line and returns the summaries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from simulations.experiment import ExperimentError
from simulations.run import main

EXPERIMENT = {
    "name": "tiny",
    "engine": "loop",
    "num-supernodes": 4,
    "seeds": [0, 1],
    "base": {"num-rounds": 2, "local-steps": 2, "hidden-sizes": "8", "fraction-train": 0.5},
    "algorithms": {"maml": {}, "fedavg": {"outer-lr": 0.01}},
}


def test_a_mapping_runs_and_returns_every_runs_summary_as_the_cli_writes_it(tmp_path):
    from simulations import run_experiment  # the notebook import

    summaries = run_experiment(EXPERIMENT, tmp_path / "python")
    assert set(summaries) == {"maml", "fedavg"} and set(summaries["maml"]) == {0, 1}
    for row in summaries.values():
        for summary in row.values():
            assert np.isfinite(summary["mse-after-mean"]) and summary["rounds"] == 2
    assert (tmp_path / "python" / "summary.md").exists()

    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(EXPERIMENT))
    assert main([str(path), "--out", str(tmp_path / "cli")]) == 0
    for name, row in summaries.items():
        for seed, summary in row.items():
            cli = json.loads((tmp_path / "cli" / name / f"seed{seed}" / "summary.json").read_text())
            for key in summary:
                if key != "seconds":
                    assert cli[key] == summary[key], (name, seed, key)


def test_a_finished_experiment_is_reused_and_its_summaries_returned(tmp_path, capsys):
    from simulations.run import run_experiment

    first = run_experiment(EXPERIMENT | {"seeds": [0]}, tmp_path)
    again = run_experiment(EXPERIMENT | {"seeds": [0]}, tmp_path)
    assert again == first
    assert "already done, reused" in capsys.readouterr().out


def test_a_bad_mapping_raises_the_named_error_instead_of_printing_it(tmp_path):
    from simulations.run import run_experiment

    bad = EXPERIMENT | {"base": {"inner-lr": -1.0}}
    with pytest.raises(ExperimentError, match="tiny: key 'base.inner-lr'"):
        run_experiment(bad, tmp_path)
    with pytest.raises(ExperimentError, match="unknown key"):
        run_experiment(EXPERIMENT | {"rounds": 3}, tmp_path)
