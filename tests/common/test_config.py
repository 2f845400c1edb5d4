"""Every configuration error names the key, the value and what is allowed."""

from __future__ import annotations

import tomllib

import pytest

from common.config import ConfigError, Settings, parse_settings, settings_to_run_config
from tests.conftest import PROJECT_ROOT


def test_pyproject_defaults_parse_and_cover_every_setting():
    config = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["tool"]["flwr"]["app"][
        "config"
    ]
    settings = parse_settings(config)
    assert set(config) == set(settings_to_run_config(settings))
    assert settings == parse_settings(settings_to_run_config(settings))


@pytest.mark.parametrize(
    ("config", "key", "allowed"),
    [
        ({"algoritm": "maml"}, "algoritm", "a known key"),
        ({"algorithm": "reptile"}, "algorithm", "'perfedavg-hf'"),
        ({"num-rounds": "10"}, "num-rounds", "a int"),
        ({"num-rounds": 2.5}, "num-rounds", "a int"),
        ({"num-rounds": True}, "num-rounds", "a int"),
        ({"num-rounds": 0}, "num-rounds", "an integer >= 1"),
        ({"inner-lr": -0.1}, "inner-lr", "a number > 0"),
        ({"fraction-train": 1.5}, "fraction-train", "(0, 1]"),
        ({"resume": "yes"}, "resume", "a bool"),
        ({"hidden-sizes": "40,x"}, "hidden-sizes", "comma-separated"),
        ({"server-optimizer": "adagrad"}, "server-optimizer", "'sgd'"),
        ({"algorithm": "perfedavg-hf", "inner-steps": 2}, "inner-steps", "one inner step"),
        ({"partition": "dirichlet"}, "partition", "one task per client"),
        ({"dataset": "femnist", "partition": "natural"}, "data-path", "femnist"),
        ({"device": "tpu"}, "device", "'auto'"),
        ({"dataset": "digits"}, "partition", "no writer ids"),
    ],
)
def test_config_errors_name_key_value_and_allowed(config, key, allowed):
    with pytest.raises(ConfigError) as err:
        parse_settings(config)
    assert err.value.key == key
    message = str(err.value)
    assert f"'{key}'" in message and allowed in message
    assert repr(config.get(key, err.value.value)) in message


def test_ints_are_accepted_for_float_keys():
    assert parse_settings({"inner-lr": 1}).inner_lr == 1.0
    assert isinstance(Settings().inner_lr, float)
