"""The server says once, at start-up, when the settings make D, D' and D'' one batch or
score Meta-SGD past the steps its step sizes were learned for."""

from __future__ import annotations

import logging

from simulations.loop import run_in_loop

FAST = {"hidden-sizes": "8", "num-rounds": 1, "local-steps": 1, "eval-steps": 1,
        "clients-per-node": 4, "min-available-nodes": 1, "fraction-train": 0.5}  # fmt: skip


def _warnings(caplog, tmp_path, **config) -> list[str]:
    with caplog.at_level(logging.WARNING, logger="flwr"):
        run_in_loop(FAST | {"run-dir": str(tmp_path)} | config, num_nodes=1)
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_one_batch_for_d_d_prime_and_d_second_is_logged_once(caplog, tmp_path):
    logged = _warnings(caplog, tmp_path, **{"sinusoid-train-points": 5, "batch-size": 5})
    assert sum("D, D' and D''" in m for m in logged) == 1


def test_metasgd_scored_past_its_trained_steps_is_logged_unless_bounded(caplog, tmp_path):
    logged = _warnings(caplog, tmp_path / "a", algorithm="metasgd", **{"eval-steps": 3})
    assert sum("metasgd-alpha-max" in m for m in logged) == 1
    caplog.clear()
    bounded = {"eval-steps": 3, "metasgd-alpha-max": 0.05}
    assert not _warnings(caplog, tmp_path / "b", algorithm="metasgd", **bounded)
