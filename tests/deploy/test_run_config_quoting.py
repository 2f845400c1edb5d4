"""A run config with a JSON value (model-args) travels through `flwr run --run-config` intact."""

from __future__ import annotations

from flwr.common.config import parse_config_args

from common.processes import run_config_arg


def test_values_with_quotes_and_backslashes_survive_flowers_parser():
    config = {
        "model-args": '{"hidden": 8, "act": "tanh"}',
        "data-path": "C:\\data\\users.csv",
        "feature-columns": "f0,f1",
        "num-classes": 3,
        "inner-lr": 0.05,
        "dp": False,
    }
    assert dict(parse_config_args([run_config_arg(config)])) == config
