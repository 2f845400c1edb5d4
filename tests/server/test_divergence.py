"""Divergence is an outcome (server/divergence.py, the round loop of server/app.py): a run
whose theta turns non-finite or that stalls stops as diverged at its round, is recorded in
strict JSON, and can roll back instead."""

from __future__ import annotations

import json

import numpy as np
import pytest

from server.divergence import Rollbacks, RunDiverged, StallCounter, nonfinite_key
from server.optimizer import OptimizerConfig
from simulations.loop import run_in_loop

# The pyproject defaults on 100 sinusoid clients (10 per round) with Adam at server-lr 1.0:
# round 1's step leaves a finite theta so large (MSE ~7e5) that every client update from
# it is non-finite, the probe of issue 17.
BLOW_UP = {
    "clients-per-node": 100,
    "min-available-nodes": 1,
    "num-rounds": 30,
    "server-lr": 1.0,
    "evaluate-every": 10,
}


def _refuse(token):
    raise ValueError(f"not strict JSON: {token}")


def _strict(path):
    """A JSON-lines file parsed as strict JSON (NaN, Infinity refused)."""
    return [json.loads(line, parse_constant=_refuse) for line in path.read_text().splitlines()]


def test_nonfinite_key_names_the_first_bad_array():
    state = {"a": np.zeros(2), "b": np.array([1.0, np.inf]), "c": np.array([np.nan])}
    assert nonfinite_key(state) == "b"
    assert nonfinite_key({"a": np.ones(3)}) is None


def test_a_stall_counts_only_after_training_and_names_the_last_step():
    stall = StallCounter(limit=3)
    for _ in range(5):  # nothing accepted yet: not trained, so no stall
        stall = stall.after(accepted=0, trained=False)
    assert stall.count == 0
    stall = stall.after(accepted=4, trained=True)
    for rnd in (8, 9):
        stall = stall.after(accepted=0, trained=True)
        assert stall.divergence(rnd, "first: x") is None
    stall = stall.after(accepted=0, trained=True)
    found = stall.divergence(10, "first: x")
    assert found is not None and (found.server_round, found.stopped_at) == (7, 10)
    assert "rounds 8..10" in found.reason and "max-stalled-rounds = 3" in found.reason
    assert stall.after(accepted=1, trained=True).count == 0  # one accepted update resets it
    assert stall.after(accepted=0, trained=True, asked=0).count == 3  # no one asked: no news
    assert stall.after(accepted=None, trained=True).count == 3  # distributed DP: unseen


def test_rollbacks_scale_the_server_step_and_round_trip_through_json():
    rb = Rollbacks().next(0.5).next(0.5)
    assert rb.done == 2 and rb.optimizer(OptimizerConfig("adam", 0.2)).lr == pytest.approx(0.05)
    assert Rollbacks.from_json(json.loads(json.dumps(rb.to_json()))) == rb


def test_server_lr_1_diverges_at_round_1_and_is_recorded_not_saved(tmp_path):
    with pytest.raises(RunDiverged) as caught:
        run_in_loop(BLOW_UP | {"run-dir": str(tmp_path), "evaluate-every": 1}, num_nodes=1)
    assert caught.value.server_round == 1
    summary = json.loads((tmp_path / "summary.json").read_text(), parse_constant=_refuse)
    assert summary["diverged-at-round"] == 1
    assert summary["stopped-at-round"] == 4  # max-stalled-rounds = 3 after round 1
    assert "no client update was accepted in rounds 2..4" in summary["diverged-reason"]
    assert not (tmp_path / "model.pt").exists()  # a blown-up theta is not a trained model
    rows = _strict(tmp_path / "metrics.jsonl")  # strict JSON, though round 1 scored NaN
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and "diverged" in rows[-1]
    assert rows[0]["eval"]["diverged-after"] == rows[0]["eval"]["clients"]
    assert "mse-after-mean" not in rows[0]["eval"]  # no NaN dressed up as a mean


def test_rollback_retries_with_a_smaller_step_a_bounded_number_of_times(tmp_path):
    config = BLOW_UP | {"run-dir": str(tmp_path), "on-divergence": "rollback"}
    config |= {"max-rollbacks": 2, "rollback-lr-factor": 0.001, "num-rounds": 12}
    summary = run_in_loop(config, num_nodes=1)  # 1.0 -> 0.001: Adam's step is tame again
    record = json.loads((tmp_path / "rollback.json").read_text())
    assert record["rollbacks"] == 1 and record["lr-scale"] == pytest.approx(0.001)
    assert record["events"] == [
        {"round": 1, "reason": record["events"][0]["reason"], "to-round": 0}
    ]
    rows = _strict(tmp_path / "metrics.jsonl")
    assert [r["round"] for r in rows] == list(range(1, 13))  # the undone rounds are gone
    assert all(r["accepted"] > 0 for r in rows)
    assert np.isfinite(summary["mse-after-mean"]) and (tmp_path / "model.pt").exists()


def test_rollback_gives_up_after_max_rollbacks(tmp_path):
    config = BLOW_UP | {"run-dir": str(tmp_path), "on-divergence": "rollback"}
    config |= {"max-rollbacks": 1, "rollback-lr-factor": 0.9}  # 0.9: still far too large
    with pytest.raises(RunDiverged):
        run_in_loop(config, num_nodes=1)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rollbacks"] == 1 and summary["lr-scale"] == pytest.approx(0.9)


def test_a_finite_blow_up_of_the_shared_model_is_divergence():
    from server.divergence import LossWatch

    watch, found = LossWatch().after(10, {"mse-before-mean": 2.6})
    assert found is None and watch.reference == 2.6
    for rnd, loss in ((20, 25.9), (30, float("nan")), (40, 0.1)):  # NaN: one bad client's
        assert watch.after(rnd, {"mse-before-mean": loss})[1] is None
    _, found = watch.after(120, {"mse-before-mean": 105.4})
    assert found is not None and (found.server_round, found.stopped_at) == (120, 120)
    assert "105.4, over 10 x its first evaluated value 2.6" in found.reason
    assert watch.after(50, {"clients": 3})[1] is None  # a round without evaluation
    rows = [{"eval": {}}, {"eval": {"loss-before-mean": 2.3}}, {"eval": {"loss-before-mean": 9}}]
    assert LossWatch.from_rows(rows).reference == 2.3  # a resumed run keeps its reference


def test_a_round_of_error_replies_or_none_is_a_federation_failure_not_a_stall():
    from flwr.app import Error, Message, MessageType, RecordDict

    from server.divergence import federation_failed

    ok = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    ok = Message(RecordDict(), reply_to=ok)
    bad = Message(Error(code=0, reason="ActorDiedError"), reply_to=ok)
    assert federation_failed([bad, bad], asked=2)
    assert federation_failed([], asked=2)  # no node answered within round-timeout
    assert not federation_failed([bad, ok], asked=2)  # one node answered: theta is tested
    assert not federation_failed([], asked=0)  # nobody asked (an empty Poisson sample)


def _trained(run_dir, on_divergence):
    """theta, the round rows (wall times left out) and the summary of a short perfedavg-hf
    run that never diverges."""
    import torch

    config = {
        "clients-per-node": 100, "min-available-nodes": 1, "num-rounds": 12,
        "algorithm": "perfedavg-hf", "server-lr": 0.005, "evaluate-every": 4,
        "run-dir": str(run_dir), "on-divergence": on_divergence,
    }  # fmt: skip
    summary = run_in_loop(config, num_nodes=1)
    theta = torch.load(run_dir / "model.pt", weights_only=False)["theta"]
    rows = _strict(run_dir / "metrics.jsonl")
    return theta, [{k: v for k, v in r.items() if k != "seconds"} for r in rows], summary


def test_rollback_leaves_a_run_that_never_diverges_bit_for_bit_unchanged(tmp_path):
    # Rollback only keeps snapshots until a divergence is seen: it draws no randomness and
    # changes no step, so a sound run is the same under either setting.
    theta_stop, rows_stop, _ = _trained(tmp_path / "stop", "stop")
    theta_back, rows_back, summary = _trained(tmp_path / "rollback", "rollback")
    assert not (tmp_path / "rollback" / "rollback.json").exists()  # written at a rollback
    assert "diverged-at-round" not in summary
    assert rows_back == rows_stop and len(rows_stop) == 12
    assert sum(bool(r["eval"]) for r in rows_stop) == 3  # the loss watch saw 3 evaluations
    assert theta_back.keys() == theta_stop.keys()
    for name, array in theta_stop.items():
        assert np.array_equal(np.asarray(theta_back[name]), np.asarray(array)), name
