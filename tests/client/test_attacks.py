"""Simulated attackers: who they are, what each kind sends, and a federation they attack
(the real ClientApp and server loop, simulations/loop.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from client.attacks import (
    AttackConfig,
    attack_reply,
    attackers,
    colluding_update,
    flipped_labels,
    forged_update,
    is_attacker,
    training_split,
)
from common.config import ConfigError, parse_settings
from server.app import initial_state
from server.divergence import RunDiverged
from simulations.loop import run_in_loop


def _attack(attack: str, **extra) -> AttackConfig:
    return AttackConfig.from_settings(
        parse_settings({"attack": attack, "attack-fraction": 0.2, **extra})
    )


def test_attackers_are_exactly_the_fraction_and_a_function_of_seed_and_partition():
    chosen = attackers(0, 0.2, 100)
    assert len(chosen) == 20 and chosen <= set(range(100))
    assert attackers(0, 0.2, 100) == chosen  # reruns agree
    assert attackers(1, 0.2, 100) != chosen  # another seed, other attackers
    assert len(attackers(0, 0.3, 10)) == 3 and attackers(0, 1.0, 7) == set(range(7))
    cfg = _attack("scaled")
    assert [p for p in range(100) if is_attacker(cfg, p, 100)] == sorted(chosen)
    honest = AttackConfig.from_settings(parse_settings({}))
    assert not any(is_attacker(honest, p, 100) for p in range(100))


def test_label_flip_reverses_classes_and_negates_regression_targets():
    np.testing.assert_array_equal(flipped_labels(np.array([0, 1, 9]), 10), [9, 8, 0])
    y = np.array([[0.5], [-2.0]], np.float32)
    np.testing.assert_array_equal(flipped_labels(y, None), -y)
    cfg = _attack("label-flip", dataset="digits", partition="dirichlet")
    bad, good = sorted(attackers(0, 0.2, 10))[0], min(set(range(10)) - attackers(0, 0.2, 10))
    x, labels = np.zeros((3, 1, 8, 8), np.float32), np.array([0, 3, 9])
    assert training_split(cfg, bad, 10, x, labels)[1].tolist() == [9, 6, 0]
    assert training_split(cfg, good, 10, x, labels)[1] is labels


def test_each_kind_forges_what_it_says():
    honest = {"w": np.array([1.0, -2.0], np.float32), "alpha/w": np.array([0.5], np.float32)}

    def forge(kind, **extra):
        return forged_update(_attack(kind, **extra), honest, 40, partition=3, server_round=2)

    scaled, n = forge("scaled", **{"attack-scale": 1e6})
    np.testing.assert_array_equal(scaled["w"], [1e6, -2e6])
    assert n == 40 and scaled["w"].dtype == np.float32
    flipped, _ = forge("sign-flip", **{"attack-scale": 3.0})
    np.testing.assert_array_equal(flipped["alpha/w"], [-1.5])
    lie, claim = forge("num-examples-lie", **{"attack-scale": 1e7})
    np.testing.assert_array_equal(lie["w"], [-1.0, 2.0])
    assert claim == 400_000_000
    noise, _ = forge("gaussian", **{"attack-noise-std": 100.0})
    again, _ = forge("gaussian", **{"attack-noise-std": 100.0})
    assert np.array_equal(noise["w"], again["w"]) and noise["w"].dtype == np.float32
    assert not np.allclose(noise["w"], honest["w"]) and np.abs(noise["w"]).max() > 1.0
    poisoned, _ = forge("label-flip")  # its data was poisoned; the update is sent as is
    np.testing.assert_array_equal(poisoned["w"], honest["w"])


def test_colluders_send_one_vector_per_round():
    cfg = _attack("same-bad-update", **{"attack-scale": 10.0})
    ref = {"w": np.zeros(4, np.float32)}
    a, _ = forged_update(cfg, {"w": np.ones(4, np.float32)}, 5, partition=1, server_round=7)
    b, _ = forged_update(cfg, {"w": -np.ones(4, np.float32)}, 9, partition=8, server_round=7)
    np.testing.assert_array_equal(a["w"], b["w"])
    assert not np.array_equal(colluding_update(ref, 0, 8, 10.0)["w"], a["w"])
    np.testing.assert_array_equal(colluding_update(ref, 0, 7, 10.0)["w"], a["w"])


def test_a_node_reply_forges_only_its_trained_attackers():
    cfg = _attack("scaled", **{"attack-scale": 100.0})
    bad = sorted(attackers(0, 0.2, 10))
    good = min(set(range(10)) - set(bad))
    order = [bad[0], good, bad[1]]
    updates = {"w": np.ones((3, 2), np.float32)}
    out, claims = attack_reply(cfg, updates, {bad[0]: 5, good: 5}, order, 10, server_round=1)
    np.testing.assert_array_equal(out["w"], [[100, 100], [1, 1], [1, 1]])  # bad[1] skipped
    assert claims == {bad[0]: 5, good: 5} and updates["w"].max() == 1  # input untouched


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"attack": "scaled"}, "attack-fraction"),
        ({"attack-fraction": 0.2}, "attack"),
        ({"attack": "sign-flip", "attack-fraction": 1.5}, "attack-fraction"),
        ({"attack": "scaled", "attack-fraction": 0.2, "attack-scale": 0.0}, "attack-scale"),
    ],
)
def test_attack_settings_are_checked(config, key):
    with pytest.raises(ConfigError) as err:
        parse_settings(config)
    assert err.value.key == key


# ---- a federation with 20% scaled-update attackers -------------------------------------
FEDERATION = {
    "clients-per-node": 20,  # 20 sinusoid clients on one node, 4 of them attackers
    "min-available-nodes": 1,
    "num-rounds": 4,
    "fraction-train": 0.5,
    "fraction-evaluate": 1.0,
    "evaluate-every": 4,
    "local-steps": 2,
    "hidden-sizes": "16",
    "server-optimizer": "sgd",  # Per-FedAvg's server step: one bad update lands in full
    "server-lr": 1.0,
    "outer-lr": 0.01,
}
ATTACK = {"attack": "scaled", "attack-fraction": 0.2, "attack-scale": 1e6}


def _run(tmp_path, name, config):
    run_dir = tmp_path / name
    summary = run_in_loop(FEDERATION | config | {"run-dir": str(run_dir)}, num_nodes=1)
    theta = torch.load(run_dir / "model.pt", weights_only=True)["theta"]
    flat = torch.cat([theta[k].flatten() for k in sorted(theta)])
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, flat, rows


def test_scaled_attackers_wreck_the_mean_and_not_the_defended_theta(tmp_path):
    clean, theta_clean, _ = _run(tmp_path, "clean", {})
    undefended = {"weighting": "examples", "norm-bound-median-factor": 0.0}  # before issue 17
    with pytest.raises(RunDiverged):  # theta blew up; the run stops as diverged, unsaved
        _run(tmp_path, "wrecked", ATTACK | undefended)
    assert not (tmp_path / "wrecked" / "model.pt").exists()
    held, theta_held, _ = _run(tmp_path, "defaults", ATTACK)  # the default norm bound
    assert torch.isfinite(theta_held).all() and theta_held.abs().max() < 1e3
    assert held["mse-after-mean"] < 2 * clean["mse-after-mean"]
    defence = {"aggregation": "median", "norm-bound-median-factor": 3.0}
    defended, theta_defended, rows = _run(tmp_path, "defended", ATTACK | defence)
    assert torch.isfinite(theta_defended).all()
    assert defended["mse-after-mean"] == pytest.approx(clean["mse-after-mean"], rel=0.1)
    # the defended run learned about what the clean one learned from the same start
    init = initial_state(parse_settings(FEDERATION))
    start = torch.cat([torch.from_numpy(init[k]).flatten() for k in sorted(init)])
    learned = (theta_clean - start).norm()
    assert learned > 0.1 and (theta_defended - theta_clean).norm() < 0.25 * learned
    # every clipped update was an attacker's, logged with its norm
    clipped = [c for r in rows for c in r["robust"]["clients"]]
    assert clipped and all(r["robust"]["rule"] == "median" for r in rows)
    assert {c["partition"] for c in clipped} <= attackers(0, 0.2, 20)
    assert all(c["norm"] > 1e3 and c["action"].startswith("clipped to ") for c in clipped)
