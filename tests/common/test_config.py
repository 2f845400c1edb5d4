"""Every configuration error names the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import json
import tomllib

import pytest

from common.config import (
    Aggregation,
    Algorithm,
    AttackKind,
    ConfigError,
    MetaOrder,
    Settings,
    Weighting,
    parse_settings,
    settings_to_run_config,
)
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


CHOICES = {
    "algorithm": ("metasgd", Algorithm.METASGD),
    "metasgd-order": ("first-order", MetaOrder.FIRST),
    "aggregation": ("median", Aggregation.MEDIAN),
    "weighting": ("uniform", Weighting.UNIFORM),
    "attack": ("sign-flip", AttackKind.SIGN_FLIP),
}


def test_a_choice_is_stored_once_as_its_enum_and_recorded_as_its_plain_string():
    s = parse_settings({k: raw for k, (raw, _) in CHOICES.items()} | {"attack-fraction": 0.1})
    for key, (raw, member) in CHOICES.items():
        assert getattr(s, key.replace("-", "_")) is member
        recorded = settings_to_run_config(s)[key]
        assert type(recorded) is str and recorded == raw  # config.json, model.pt, the hash
    assert json.dumps(settings_to_run_config(s)["algorithm"]) == '"metasgd"'
    assert s.meta_order is MetaOrder.FIRST
    # built directly (defaults, dataclasses.replace) the field holds the enum too
    assert Settings().algorithm is Algorithm.MAML
    assert dataclasses.replace(s, algorithm="fedavg").algorithm is Algorithm.FEDAVG
    for name in ("algo", "aggregation_rule", "weighting_rule", "attack_kind"):
        assert not hasattr(s, name)  # no second name for the same setting


def test_ints_are_accepted_for_float_keys():
    assert parse_settings({"inner-lr": 1}).inner_lr == 1.0
    assert isinstance(Settings().inner_lr, float)


@pytest.mark.parametrize(
    ("config", "key", "allowed"),
    [
        ({"algorithm": "metasgd", "metasgd-alpha-max": 0.1, "metasgd-alpha-min": 0.1},
         "metasgd-alpha-min", "below metasgd-alpha-max"),
        ({"hessian-batch-size": -1}, "hessian-batch-size", "an integer >= 0"),
        ({"dataset": "omniglot", "data-path": "x", "hessian-batch-size": 17},
         "hessian-batch-size", "at most 16"),
        ({"dataset": "shakespeare", "data-path": "x"}, "model", "'lstm' for dataset"),
        ({"model": "lstm"}, "model", "'lstm' reads text"),
        ({"dataset": "shakespeare", "model": "lstm"}, "data-path", "tinyshakespeare.txt"),
        ({"dataset": "shakespeare", "model": "lstm", "data-path": "x", "partition": "dirichlet"},
         "partition", "one role per client"),
        ({"shakespeare-seq-len": 0}, "shakespeare-seq-len", "an integer >= 1"),
    ],
)  # fmt: skip
def test_stability_and_shakespeare_errors_name_key_value_and_allowed(config, key, allowed):
    test_config_errors_name_key_value_and_allowed(config, key, allowed)


def test_alpha_bounds_apply_to_metasgd_only_and_only_when_set():
    assert parse_settings({"algorithm": "metasgd"}).alpha_bounds is None
    bounded = {"metasgd-alpha-min": 0.001, "metasgd-alpha-max": 0.05}
    assert parse_settings({"algorithm": "metasgd", **bounded}).alpha_bounds == (0.001, 0.05)
    assert parse_settings({"algorithm": "maml", **bounded}).alpha_bounds is None
    assert parse_settings({"batch-size": 7}).hessian_size == 7
    assert parse_settings({"batch-size": 7, "hessian-batch-size": 20}).hessian_size == 20
