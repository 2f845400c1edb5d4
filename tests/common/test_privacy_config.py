"""Settings that would make epsilon meaningless are refused before anything runs, each with
one message naming the key (issue 18)."""

from __future__ import annotations

import pytest

from common.config import DP_ONLY_KEYS, ConfigError, parse_settings

DP = {"dp": True, "dp-clip": 0.5, "weighting": "uniform"}
SECAGG = {"secagg": True, "dp-clip": 0.5, "weighting": "uniform"}
# a value other than the default for every DP-only key
SET = {
    "dp-noise-multiplier": 1.0, "dp-adaptive": True, "dp-target-quantile": 0.3,
    "dp-clip-lr": 0.5, "dp-clipped-count-stddev": 2.0, "dp-delta": 1e-6,
    "target-epsilon": 2.0, "dp-reproducible-noise": True, "dp-accountant": "rdp",
    "dp-mechanism": "distributed", "dp-tolerated-drops": 1,
}  # fmt: skip


def test_every_dp_only_key_has_a_value_to_try():
    assert set(SET) == set(DP_ONLY_KEYS)


@pytest.mark.parametrize("key", [*DP_ONLY_KEYS, "dp-clip"])
def test_a_dp_key_without_dp_is_refused_naming_it(key):
    value = SET.get(key, 0.5)
    with pytest.raises(ConfigError, match=f"'{key}'.*unless dp = true") as err:
        parse_settings({"weighting": "uniform", key: value})
    assert err.value.key == key and "\n" not in str(err.value)


@pytest.mark.parametrize("key", DP_ONLY_KEYS)
def test_a_dp_key_with_secagg_alone_is_refused_too(key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        parse_settings(SECAGG | {key: SET[key]})


def test_secagg_alone_keeps_its_clip_and_the_defaults_pass():
    assert parse_settings(SECAGG).dp_clip == 0.5
    assert parse_settings({"dp-delta": 1e-5}).dp is False  # the default value is not "set"


def test_clipped_count_noise_without_adaptive_clipping_is_refused():
    with pytest.raises(ConfigError, match="'dp-clipped-count-stddev'.*dp-adaptive"):
        parse_settings(DP | {"dp-clipped-count-stddev": 2.0})
    adaptive = DP | {"dp-adaptive": True, "dp-clipped-count-stddev": 2.0}
    assert parse_settings(adaptive).dp_clipped_count_stddev == 2.0


def test_distributed_noise_needs_secagg_and_fixed_clipping():
    with pytest.raises(ConfigError, match="'dp-mechanism'.*secagg"):
        parse_settings(DP | {"dp-mechanism": "distributed"})
    both = DP | SECAGG | {"dp-mechanism": "distributed"}
    with pytest.raises(ConfigError, match="'dp-adaptive'"):
        parse_settings(both | {"dp-adaptive": True})
    with pytest.raises(ConfigError, match="'dp-tolerated-drops'.*distributed"):
        parse_settings(DP | {"dp-tolerated-drops": 1})
    assert parse_settings(both | {"dp-tolerated-drops": 1}).dp_tolerated_drops == 1
