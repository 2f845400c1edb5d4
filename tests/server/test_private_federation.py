"""DP and SecAgg+ through the real server loop and ClientApp (simulations/loop.py): a SecAgg+
round reproduces the plain aggregate to within the quantization error, DP + SecAgg+ gives
the DP run, target-epsilon refuses a run before round 1, and a resumed DP run continues
the accountant where it stopped."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from common.arrays import to_record
from common.config import ConfigError, parse_settings
from server.privacy import DPConfig, PrivacyBudgetExceeded, PrivacyState, fresh_noise_key
from server.round import ServerState
from server.run_folder import RunFolder
from server.secagg import quantization_range
from simulations.loop import run_in_loop
from tests.server.rounds import FixedNodes, round_on_replies, strategy_for

CLIP = 0.01
FAST = {
    "num-rounds": 2,
    "local-steps": 2,
    "hidden-sizes": "16",
    "clients-per-node": 4,
    "min-available-nodes": 2,
    "fraction-train": 0.5,
    "fraction-evaluate": 0.25,
    "eval-steps": 2,
    "server-optimizer": "sgd",
    "server-lr": 1.0,
    "weighting": "uniform",
}
NODES = 3


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _theta(run_dir):
    ckpt = RunFolder(run_dir).load_checkpoint()
    assert ckpt is not None
    return ckpt


def _bound(rounds: int, clients: int) -> float:
    """The quantization error of S per coordinate, n M 2C / Q, on the mean over ``clients``,
    summed over ``rounds`` SGD(lr = 1) steps, plus float32 rounding of theta."""
    return rounds * NODES * 4 * 2 * CLIP / quantization_range(NODES) / clients + 1e-6


@pytest.mark.parametrize("algorithm", ["maml", "metasgd"])
def test_secagg_round_reproduces_the_plain_aggregate_within_quantization_error(tmp_path, algorithm):
    base = FAST | {"algorithm": algorithm}
    # plain: the server clips every update to C (norm-bound) and takes the uniform mean
    run_in_loop(base | {"run-dir": str(tmp_path / "plain"), "norm-bound": CLIP}, NODES)
    # SecAgg+: every client clips to C on its node, the server sees only the masked sums
    run_in_loop(
        base | {"run-dir": str(tmp_path / "secagg"), "secagg": True, "dp-clip": CLIP}, NODES
    )
    plain, secure = _rows(tmp_path / "plain"), _rows(tmp_path / "secagg")
    assert [r["accepted"] for r in secure] == [r["accepted"] for r in plain] == [6, 6]
    assert all(r["privacy"]["secagg"]["nodes"] == NODES for r in secure)
    # the updates were really clipped (else this test would not test the bound)
    assert all(r["robust"]["clients"] for r in plain)
    a, b = _theta(tmp_path / "plain").state, _theta(tmp_path / "secagg").state
    assert set(a) == set(b)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], rtol=0, atol=_bound(2, 6))
        assert not np.array_equal(a[key], _initial(base, key))  # theta moved


def _initial(base, key):
    from server.app import initial_state

    return initial_state(parse_settings(base))[key]


def test_dp_with_secagg_equals_dp_without_it(tmp_path):
    dp = FAST | {"dp": True, "dp-clip": CLIP, "dp-noise-multiplier": 0.7, "dp-adaptive": True,
                 "dp-clipped-count-stddev": 1.0, "dp-reproducible-noise": True}  # fmt: skip
    run_in_loop(dp | {"run-dir": str(tmp_path / "dp")}, NODES)
    run_in_loop(dp | {"run-dir": str(tmp_path / "both"), "secagg": True}, NODES)
    plain, secure = _rows(tmp_path / "dp"), _rows(tmp_path / "both")
    for p, s in zip(plain, secure, strict=True):
        assert s["accepted"] == p["accepted"]  # the same Poisson sample
        assert s["privacy"]["epsilon"] == pytest.approx(p["privacy"]["epsilon"])
        assert s["privacy"]["next-clip"] == pytest.approx(p["privacy"]["next-clip"], rel=1e-6)
        assert s["privacy"]["next-clip"] != CLIP  # adaptive clipping moved the bound
    a, b = _theta(tmp_path / "dp"), _theta(tmp_path / "both")
    expected = max(1, int(NODES * 4 * FAST["fraction-train"]))  # the fixed denominator k
    for key in a.state:
        np.testing.assert_allclose(b.state[key], a.state[key], atol=_bound(2, expected))
    assert a.privacy is not None and b.privacy is not None
    assert a.privacy["ledger"] == b.privacy["ledger"] == [[0.5, 0.7, 2]]


def test_target_epsilon_refuses_the_run_before_round_1(tmp_path):
    config = FAST | {
        "dp": True, "dp-clip": CLIP, "dp-noise-multiplier": 0.5, "target-epsilon": 1.0,
        "num-rounds": 20, "run-dir": str(tmp_path / "run"),
    }  # fmt: skip
    with pytest.raises(PrivacyBudgetExceeded, match="target-epsilon.*0 rounds would fit"):
        run_in_loop(config, NODES)
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert not metrics.exists() or metrics.read_text() == ""  # no round ran
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_a_delta_of_one_over_n_or_more_is_refused_at_start_up(tmp_path):
    # 3 nodes x 4 clients: N = 12, 1/N = 0.083
    config = DP_NOISE | {"dp-delta": 0.1, "run-dir": str(tmp_path / "run")}
    with pytest.raises(ConfigError, match="'dp-delta'.*N = 12 clients"):
        run_in_loop(config, NODES)
    assert not (tmp_path / "run" / "checkpoint.npz").exists()
    run_in_loop(config | {"dp-delta": 0.05, "num-rounds": 1}, NODES)  # below 1/12: runs


def test_a_resumed_dp_run_continues_the_accountant_and_the_clip(tmp_path):
    dp = FAST | {"dp": True, "dp-clip": CLIP, "dp-noise-multiplier": 1.0, "dp-adaptive": True,
                 "dp-clipped-count-stddev": 1.0, "num-rounds": 4,
                 "dp-reproducible-noise": True}  # fmt: skip
    whole = run_in_loop(dp | {"run-dir": str(tmp_path / "whole")}, NODES)
    run_in_loop(dp | {"run-dir": str(tmp_path / "split"), "num-rounds": 2}, NODES)
    resumed = run_in_loop(dp | {"run-dir": str(tmp_path / "split"), "resume": True}, NODES)
    assert resumed["epsilon"] == pytest.approx(whole["epsilon"])
    assert resumed["final-clip"] == pytest.approx(whole["final-clip"])
    a, b = _theta(tmp_path / "whole"), _theta(tmp_path / "split")
    assert b.privacy == a.privacy and a.privacy["ledger"][0][2] == 4
    for key in a.state:
        np.testing.assert_array_equal(b.state[key], a.state[key])
    # and a resume that would exceed a target set from the start is refused before it runs
    capped = dp | {"target-epsilon": whole["epsilon"] + 1e-6}
    run_in_loop(capped | {"run-dir": str(tmp_path / "capped")}, NODES)
    with pytest.raises(PrivacyBudgetExceeded, match="after the 4 rounds already run"):
        run_in_loop(capped | {"run-dir": str(tmp_path / "capped"), "resume": True,
                              "num-rounds": 6}, NODES)  # fmt: skip


DP_NOISE = FAST | {"dp": True, "dp-clip": CLIP, "dp-noise-multiplier": 1.0}


def test_two_runs_with_the_same_seed_draw_different_noise_and_samples(tmp_path):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        run_in_loop(DP_NOISE | {"num-rounds": 3, "run-dir": str(run)}, NODES)
    a, b = (_theta(r) for r in runs)
    assert a.privacy["noise-key"] != b.privacy["noise-key"]
    for key in a.state:  # the same seed, data and init: only the noise (and sample) differ
        assert not np.array_equal(a.state[key], b.state[key])
    assert all(r["privacy"]["release"] == "private" for r in _rows(runs[0]))


def test_the_labelled_reproducible_mode_reproduces_and_says_it_is_not_private(tmp_path):
    config = DP_NOISE | {"dp-reproducible-noise": True}
    first = run_in_loop(config | {"run-dir": str(tmp_path / "a")}, NODES)
    run_in_loop(config | {"run-dir": str(tmp_path / "b")}, NODES)
    a, b = _theta(tmp_path / "a"), _theta(tmp_path / "b")
    for key in a.state:
        np.testing.assert_array_equal(a.state[key], b.state[key])
    assert first["not-a-private-release"] == 1.0
    assert all("not a private release" in r["privacy"]["release"] for r in _rows(tmp_path / "a"))


def test_a_resume_with_unpredictable_noise_continues_with_the_same_key(tmp_path):
    import shutil

    split = DP_NOISE | {"num-rounds": 2, "run-dir": str(tmp_path / "one")}
    run_in_loop(split, NODES)
    shutil.copytree(tmp_path / "one", tmp_path / "two")
    for name in ("one", "two"):  # two resumes of one checkpoint: the key it holds decides
        run_in_loop(DP_NOISE | {"num-rounds": 4, "resume": True,
                                "run-dir": str(tmp_path / name)}, NODES)  # fmt: skip
    a, b = _theta(tmp_path / "one"), _theta(tmp_path / "two")
    assert a.privacy == b.privacy and a.privacy["ledger"][0][2] == 4
    for key in a.state:
        np.testing.assert_array_equal(a.state[key], b.state[key])
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    assert [r | {"seconds": 0} for r in one] == [r | {"seconds": 0} for r in two]


class _KeyRecorder(FixedNodes):
    def __init__(self) -> None:
        super().__init__({1: [0]}, population=10)
        self.seeds: list[tuple[int, bool]] = []

    def sample(self, fraction, seed, server_round, purpose, poisson=False):
        self.seeds.append((seed, poisson))
        return {1: [0]}


def test_dp_samples_from_the_secret_key_and_evaluation_from_the_seed():
    from server.optimizer import OptimizerConfig
    from server.round import ServerState, pipeline_for

    settings = parse_settings(DP_NOISE | {"seed": 3})
    nodes = _KeyRecorder()
    strategy = strategy_for(DP_NOISE | {"seed": 3}, nodes)
    privacy = PrivacyState(CLIP, 1.0, noise_key=fresh_noise_key())
    pipeline = pipeline_for(settings, strategy, OptimizerConfig("sgd", 1.0))
    pipeline.sample(1, ServerState({}, privacy=privacy))  # type: ignore[union-attr]
    strategy.sample_evaluate(1, final=False)
    assert nodes.seeds == [(privacy.noise_key, True), (3, False)]  # Poisson: the accountant's
    assert privacy.noise_key.bit_length() > 64  # 128 random bits, not the seed


def test_robust_aggregation_with_secagg_is_refused_saying_why():
    with pytest.raises(ConfigError, match="SecAgg\\+ reveals only the sum"):
        parse_settings({"secagg": True, "dp-clip": 1.0, "weighting": "uniform",
                        "aggregation": "krum"})  # fmt: skip
    with pytest.raises(ConfigError, match="'uniform'"):
        parse_settings({"dp": True, "dp-clip": 1.0, "weighting": "examples"})
    with pytest.raises(ConfigError, match="its default 5.0 with dp = true, which ignores it"):
        parse_settings({"dp": True, "dp-clip": 1.0, "norm-bound-median-factor": 2.0})
    # the defaults (capped claims, a norm bound) do not apply to DP and are accepted
    assert parse_settings({"dp": True, "dp-clip": 1.0}).dp


# ---- the server checks the clients' clipping --------------------------------------------
TWO_OF_TEN = FixedNodes({1: [0, 1]}, population=10)


def test_an_unclipped_update_is_clipped_by_the_server_and_the_mean_has_a_fixed_denominator():
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    theta = {"w": np.zeros(2, np.float32)}
    config = {"dp": True, "dp-clip": 1.0, "weighting": "uniform", "fraction-train": 0.5}
    privacy = PrivacyState(clip=1.0, noise_multiplier=0.0)  # no noise: an exact check
    updates = {"w": np.array([[3.0, 4.0], [0.3, 0.4]], np.float32)}  # norms 5 and 0.5
    content = RecordDict({
        "updates": to_record(updates),
        "metrics": MetricRecord({"partition-id": [0, 1], "num-examples": [5, 500],
                                 "skipped": [0, 0], "dp-within-clip": [1.0, 1.0]}),
    })  # fmt: skip
    reply = Message(content, reply_to=Message(RecordDict(), dst_node_id=1,
                                              message_type=MessageType.TRAIN))  # fmt: skip
    out = round_on_replies(config, TWO_OF_TEN, [reply], theta, privacy=privacy)
    assert out.theta is not None
    # k = 10 * 0.5 = 5; (clip([3, 4]) + [0.3, 0.4]) / 5, whatever the example counts
    np.testing.assert_allclose(out.theta["w"], [(0.6 + 0.3) / 5, (0.8 + 0.4) / 5], rtol=1e-6)
    assert out.report.privacy["server-clipped"] == [0]


def test_a_node_with_no_sampled_client_takes_part_in_secagg_with_zeros(tmp_path):
    # 3 nodes x 2 clients, 2 clients per round: at least one node has none sampled
    config = FAST | {"clients-per-node": 2, "fraction-train": 0.34, "secagg": True,
                     "dp-clip": CLIP, "run-dir": str(tmp_path / "run")}  # fmt: skip
    run_in_loop(config, NODES)
    rows = _rows(tmp_path / "run")
    assert [r["accepted"] for r in rows] == [2, 2]
    assert all(r["privacy"]["secagg"]["nodes"] == NODES and not r["dropped"] for r in rows)


# ---- target-epsilon stops a run before the round that would exceed it --------------------
class _Nodes:
    """Nodes hosting ``clients`` clients in all."""

    def __init__(self, clients: int) -> None:
        self.clients = clients

    def wait(self):
        return [(p, 1) for p in range(self.clients)]


def test_the_next_round_is_refused_when_q_grows_beyond_the_plan():
    from server.app import _RoundLoop
    from server.privacy import PrivacyLedger

    ledger = PrivacyLedger().add(0.1, 1.0, 20)
    target = ledger.add(0.1, 1.0).epsilon(1e-5) + 1e-3  # room for one more round at q = 0.1
    settings = parse_settings({"dp": True, "dp-clip": 1.0, "weighting": "uniform",
                               "fraction-train": 0.1, "dp-noise-multiplier": 1.0,
                               "target-epsilon": target})  # fmt: skip
    loop = _RoundLoop.__new__(_RoundLoop)  # only the budget check, no federation
    loop.settings, loop.dp = settings, DPConfig.from_settings(settings)
    loop.state = ServerState({}, privacy=PrivacyState(1.0, 1.0, ledger))
    assert loop._within_budget(_Nodes(100), 21)  # type: ignore[arg-type]  # q = 10/100
    # most nodes left: 5 clients, k = max(1, 0.5) = 1, q = 1/5: the round would exceed
    assert not loop._within_budget(_Nodes(5), 21)  # type: ignore[arg-type]


def test_a_stopped_run_keeps_its_model_and_scores_every_client(tmp_path, monkeypatch):
    import server.app as server_app

    real = server_app._RoundLoop._within_budget
    monkeypatch.setattr(
        server_app._RoundLoop, "_within_budget", lambda s, n, rnd: rnd < 3 and real(s, n, rnd)
    )
    config = FAST | {"dp": True, "dp-clip": CLIP, "dp-noise-multiplier": 1.0, "num-rounds": 5,
                     "run-dir": str(tmp_path / "run")}  # fmt: skip
    summary = run_in_loop(config, NODES)
    assert summary["stopped-after-round"] == 2
    assert summary["clients"] == NODES * 4  # the final scoring asked every client
    assert [r["round"] for r in _rows(tmp_path / "run")] == [1, 2]
    assert (tmp_path / "run" / "model.pt").exists()
    ckpt = _theta(tmp_path / "run")
    assert ckpt.privacy is not None and ckpt.privacy["ledger"][0][2] == 2


def test_dp_steps_unless_every_node_failed():
    from flwr.app import Error

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 0
    theta = {"w": np.zeros(2, np.float32)}
    config = {"dp": True, "dp-clip": 1.0, "weighting": "uniform", "fraction-train": 0.5,
              "dp-noise-multiplier": 1.0}  # fmt: skip
    privacy = PrivacyState(clip=1.0, noise_multiplier=1.0)

    def outcome(replies):
        return round_on_replies(config, TWO_OF_TEN, replies, theta, privacy=privacy)

    asked = Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN)
    failed = Message(Error(code=0, reason="boom"), reply_to=asked)
    skipped = Message(RecordDict({
        "updates": to_record({"w": np.zeros((2, 2), np.float32)}),
        "metrics": MetricRecord({"partition-id": [0, 1], "num-examples": [0, 0],
                                 "skipped": [1, 1]}),
    }), reply_to=asked)  # fmt: skip
    # nobody accepted, but not every node failed: a pure-noise step, and the round counts
    out = outcome([failed, skipped])
    assert out.theta is not None and not np.allclose(out.theta["w"], 0.0)
    assert out.privacy_state is not None and out.privacy_state.ledger.rounds == 1
    # every node failed: a failure of the federation, no step, nothing accounted
    out = outcome([failed])
    assert out.theta is None and out.metrics is None and out.report.failed
    assert out.privacy_state is not None and out.privacy_state.ledger.rounds == 0
