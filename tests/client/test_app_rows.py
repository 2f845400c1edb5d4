"""client/app.py's reply, row by row, against each client's numbers computed on its own.

A node hosting three clients trains and evaluates them as one vmapped cohort. Each test
asks the real ClientApp handlers in-process (tests/node_probe.py's LoopGrid) and checks
every row of the reply against what that client gives when run alone through
client/train.py or common/scoring.py, so a row that went to the wrong client, a value
broadcast into every row, a skipped clip or a lost personal state is seen. The clients'
sizes differ (synthetic data), so their rows differ too.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping

import numpy as np
import pytest
import torch
from flwr.app import Message, MessageType
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from client.attacks import attackers
from client.model_store import INFO_FILE
from client.runtime import node_runtime
from client.secagg import node_rng, node_sample
from client.train import train_cohort
from common import messages
from common.arrays import from_record, join_state, split_state, to_record, to_tensors
from common.config import parse_settings
from common.data.registry import num_classes
from common.dp_mechanism import WITHIN_CLIP, distributed_noise, noised_node_sum, row_norms
from common.meta import bounded_step_sizes
from common.scoring import evaluate_cohort
from common.streams import ATTACK_PURPOSE, EVALUATE_PURPOSE, TRAIN_PURPOSE
from server.app import initial_state
from server.secagg import noise_config
from tests import node_probe

BASE = {"dataset": "synthetic", "model": "logreg", "clients-per-node": 3, "local-steps": 2,
        "batch-size": 10, "inner-lr": 0.05, "outer-lr": 0.1}  # fmt: skip
ORDER = [2, 0, 1]  # not the hosted order: rows must follow the message's order


def _send(grid, kind: str, state: Mapping[str, np.ndarray], clients: list[int], *,
          server_round: int = 1, clip: float = 0.0) -> Message:  # fmt: skip
    content = messages.write_instruction(to_record(dict(state)), server_round, clients, clip=clip)
    (reply,) = grid.send_and_receive([Message(content=content, dst_node_id=1, message_type=kind)])
    assert not reply.has_error(), reply.error.reason
    return reply


def _alone(grid, state: Mapping[str, np.ndarray], pid: int, server_round: int = 1,
           start: Mapping[str, np.ndarray] | None = None,
           flip: int | None = None) -> dict[str, np.ndarray]:  # fmt: skip
    """Client ``pid``'s update trained on its own (a cohort of one), float64; with ``flip``
    (the number of classes) on labels c -> flip - 1 - c."""
    node = node_runtime(grid.contexts[1])
    s, rt = node.settings, node.client(pid)
    y = rt.data.y_train
    theta, alpha = split_state(dict(state))
    theta_t = to_tensors(theta, node.device)
    alpha_t = to_tensors(alpha, node.device) if alpha is not None else None
    first = None if start is None else {k: torch.as_tensor(v)[None] for k, v in start.items()}
    result = train_cohort(
        node.model, theta_t, alpha_t if alpha_t is not None else s.inner_lr,
        [(rt.data.x_train, y if flip is None else (flip - 1 - y).astype(y.dtype))],
        [rt.rng(server_round, TRAIN_PURPOSE)],
        node.train, node.device, start=first,
    )  # fmt: skip
    out = {k: result.params[k][0].numpy() - theta[k] for k in theta}
    if alpha is not None:
        out |= {f"alpha/{k}": result.inner_lr[k][0].numpy() - alpha[k] for k in alpha}
    return {k: v.astype(np.float64) for k, v in out.items()}


def _row(reply: Message, row: int) -> dict[str, np.ndarray]:
    return {k: v[row].astype(np.float64) for k, v in node_probe.updates(reply).items()}


@pytest.mark.parametrize("algorithm", ["fedavg", "metasgd"])
def test_each_row_of_a_cohorts_reply_is_that_clients_own_update(algorithm):
    config = {**BASE, "algorithm": algorithm}
    state = initial_state(parse_settings(config))
    grid = node_probe.node_grid(config, 1)
    reply = _send(grid, MessageType.TRAIN, state, ORDER)
    assert node_probe.metric(reply, messages.PARTITION_ID) == ORDER
    node = node_runtime(grid.contexts[1])
    sizes = [node.client(p).data.num_train for p in ORDER]
    assert len(set(sizes)) == 3
    assert node_probe.metric(reply, messages.NUM_EXAMPLES) == sizes
    rows = [_alone(grid, state, p) for p in ORDER]
    assert {k: v.dtype for k, v in node_probe.updates(reply).items()} == {
        k: v.dtype for k, v in state.items()
    }  # the state's dtype (float32), not float64
    assert set(rows[0]) == set(state) | ({f"alpha/{k}" for k in split_state(state)[0]}
                                          if algorithm == "metasgd" else set())  # fmt: skip
    for r, expected in enumerate(rows):
        got = _row(reply, r)
        assert set(got) == set(state) and all(k in expected for k in got)
        for k in got:
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-4, atol=1e-6)
    gap = max(np.abs(rows[0][k] - rows[1][k]).max() for k in state)
    assert gap > 1e-4  # the clients' updates differ: a broadcast row would be seen


def test_a_skipped_client_gets_a_zero_row_and_the_others_keep_theirs():
    config = {**BASE, "algorithm": "fedavg"}
    state = initial_state(parse_settings(config))
    grid = node_probe.node_grid(config, 1)
    reply = _send(grid, MessageType.TRAIN, state, [1, 9, 0])
    assert node_probe.metric(reply, messages.PARTITION_ID) == [1, 9, 0]
    assert all(np.all(v == 0) for v in _row(reply, 1).values())
    for r, pid in ((0, 1), (2, 0)):
        expected, got = _alone(grid, state, pid), _row(reply, r)
        for k in state:
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-4, atol=1e-6)


def test_dp_clipping_scales_each_row_to_at_most_c_and_reports_its_within_clip_bit():
    config = {**BASE, "algorithm": "fedavg"}
    state = initial_state(parse_settings(config))
    grid = node_probe.node_grid(config, 1)
    honest = [_alone(grid, state, p) for p in ORDER]
    norms = row_norms({k: np.stack([h[k] for h in honest]) for k in state})
    assert len(set(np.round(norms, 6))) == 3
    clip = float(np.median(norms))  # one client under C, one over, one at it
    clip *= 1.0 + 1e-3  # the median client stays safely under (float32 rounding)
    reply = _send(grid, MessageType.TRAIN, state, ORDER, clip=clip)
    got = node_probe.updates(reply)
    np.testing.assert_array_less(row_norms(got), clip * (1 + 1e-6))
    within = [float(n <= clip) for n in norms]
    assert sorted(within) == [0.0, 1.0, 1.0]
    assert node_probe.metric(reply, WITHIN_CLIP) == within
    for r, h in enumerate(honest):
        scale = min(1.0, clip / norms[r])
        for k in state:
            np.testing.assert_allclose(got[k][r], scale * h[k], rtol=1e-4, atol=1e-6)


def _attacked(kind: str) -> tuple[dict, list[int], int]:
    config = {**BASE, "algorithm": "fedavg", "attack": kind, "attack-fraction": 0.5,
              "attack-scale": 3.0}  # fmt: skip
    s = parse_settings(config)
    bad = attackers(s.seed, s.attack_fraction, 3)
    return config, sorted(bad), s.seed


@pytest.mark.parametrize("kind", ["sign-flip", "num-examples-lie", "gaussian", "label-flip"])
def test_an_attackers_row_is_forged_and_the_honest_rows_are_left_alone(kind):
    config, bad, seed = _attacked(kind)
    assert 0 < len(bad) < 3
    s = parse_settings(config)
    state = initial_state(s)
    grid = node_probe.node_grid(config, 1)
    reply = _send(grid, MessageType.TRAIN, state, ORDER, server_round=3)
    node = node_runtime(grid.contexts[1])
    claims = node_probe.metric(reply, messages.NUM_EXAMPLES)
    for r, pid in enumerate(ORDER):
        honest, got = _alone(grid, state, pid, 3), _row(reply, r)
        n = node.client(pid).data.num_train
        expected, claim = honest, n
        if pid in bad and kind == "sign-flip":
            expected = {k: -3.0 * v for k, v in honest.items()}
        elif pid in bad and kind == "num-examples-lie":
            expected, claim = {k: -v for k, v in honest.items()}, 3 * n
        elif pid in bad and kind == "gaussian":  # N(0, std^2) from (seed, client, round)
            rng = np.random.default_rng([seed, pid, 3, ATTACK_PURPOSE])
            expected = {k: s.attack_noise_std * rng.standard_normal(state[k].shape)
                        for k in state}  # fmt: skip
        elif pid in bad:  # label-flip: an honest update on labels c -> C - 1 - c
            expected = _alone(grid, state, pid, 3, flip=num_classes(s))
        assert claims[r] == claim
        for k in state:
            np.testing.assert_allclose(got[k], expected[k], rtol=1e-4, atol=1e-6)
        if pid in bad and kind == "label-flip":
            assert max(np.abs(expected[k] - honest[k]).max() for k in state) > 1e-4


def _scores(grid, params, lr, pids: list[int], server_round: int, steps: int,
            per_client: bool = False) -> list:  # fmt: skip
    """Each client's evaluation run on its own (a cohort of one) through common/scoring.py."""
    node = node_runtime(grid.contexts[1])
    s, out = node.settings, []
    for j, pid in enumerate(pids):
        rt = node.client(pid)
        own = {k: v[j : j + 1] for k, v in params.items()} if per_client else params
        (result,) = evaluate_cohort(
            node.model, own, lr, [rt.data], [rt.rng(server_round, EVALUATE_PURPOSE)],
            steps=(steps,), batch_size=s.batch_size, task=s.task, device=node.device,
            per_client_params=per_client, keep_params=False,
        )  # fmt: skip
        out.append(result)
    return out


def _columns(reply: Message) -> list[list]:
    keys = (messages.NUM_EXAMPLES, messages.LOSS_BEFORE, messages.LOSS_AFTER,
            messages.ACC_BEFORE, messages.ACC_AFTER)  # fmt: skip
    return [node_probe.metric(reply, k) for k in keys]


def _expected_columns(grid, results, pids: list[int]) -> list[list]:
    node = node_runtime(grid.contexts[1])
    return [
        [node.client(p).data.num_test for p in pids],
        [r.before.loss for r in results], [r.after.loss for r in results],
        [r.before.accuracy for r in results], [r.after.accuracy for r in results],
    ]  # fmt: skip


def test_local_keeps_each_clients_own_model_across_rounds_and_shares_nothing():
    config = {**BASE, "algorithm": "local"}
    state = initial_state(parse_settings(config))
    grid = node_probe.node_grid(config, 1)
    first = _send(grid, MessageType.TRAIN, state, ORDER, server_round=1)
    assert all(np.all(v == 0) for v in node_probe.updates(first).values())
    own = {
        p: {k: (state[k] + v).astype(state[k].dtype) for k, v in _alone(grid, state, p).items()}
        for p in ORDER
    }
    moved = {k: v + 1.0 for k, v in state.items()}  # a new theta must not reset them
    second = _send(grid, MessageType.TRAIN, moved, ORDER, server_round=2)
    assert all(np.all(v == 0) for v in node_probe.updates(second).values())
    kept = {}
    for p in ORDER:
        kept[p] = from_record(grid.contexts[1].state[f"personal-model/{p}"])
        step = _alone(grid, state, p, 2, start=own[p])  # params - state
        for k in state:
            np.testing.assert_allclose(kept[p][k], state[k] + step[k], rtol=1e-4, atol=1e-6)
        assert max(np.abs(kept[p][k] - own[p][k]).max() for k in state) > 1e-5
    # evaluation starts from each client's own model, not from the theta it receives
    reply = _send(grid, MessageType.EVALUATE, moved, ORDER, server_round=3)
    stacked = {k: torch.as_tensor(np.stack([kept[p][k] for p in ORDER])) for k in state}
    s = parse_settings(config)
    # 'local' is scored as it is (no adaptation steps)
    results = _scores(grid, stacked, s.inner_lr, ORDER, 3, 0, per_client=True)
    expected = _expected_columns(grid, results, ORDER)
    for got, want in zip(_columns(reply), expected, strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


def test_evaluation_rows_are_each_clients_own_scores_with_metasgds_alpha():
    config = {**BASE, "algorithm": "metasgd", "eval-steps": 2}
    s = parse_settings(config)
    theta, _ = split_state(initial_state(s))
    rng = np.random.default_rng(5)
    alpha = {k: rng.uniform(0.002, 0.02, v.shape).astype(np.float32) for k, v in theta.items()}
    grid = node_probe.node_grid(config, 1)
    reply = _send(grid, MessageType.EVALUATE, join_state(theta, alpha), ORDER, server_round=4)
    assert node_probe.metric(reply, messages.PARTITION_ID) == ORDER
    theta_t = to_tensors(theta, torch.device("cpu"))
    lr = bounded_step_sizes(to_tensors(alpha, torch.device("cpu")), s.alpha_bounds)
    results = _scores(grid, theta_t, lr, ORDER, 4, s.eval_steps)
    expected = _expected_columns(grid, results, ORDER)
    for got, want in zip(_columns(reply), expected, strict=True):
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
    plain = _scores(grid, theta_t, s.inner_lr, ORDER, 4, s.eval_steps)
    assert max(abs(a.after.loss - b.after.loss) for a, b in zip(results, plain, strict=True)) > 1e-3
    assert len({r.after.loss for r in results}) == 3  # the clients' rows differ


def test_a_secagg_node_sends_the_scaled_sum_of_its_clipped_rows_and_its_counts():
    """The SecAgg+ train path without the mod's masking (a FitIns with no SecAgg+ stage
    records passes the mod by): the FitRes holds sum_i clip(u_i) / M, the counts
    [C m / M, 2C/M sum_i (b_i - 1/2)], per-node metric sums and the dropped client."""
    config = {**BASE, "algorithm": "fedavg"}
    state = initial_state(parse_settings(config))
    grid = node_probe.node_grid(config, 1)
    honest = [_alone(grid, state, p) for p in ORDER]
    norms = row_norms({k: np.stack([h[k] for h in honest]) for k in state})
    clip = float(np.median(norms)) * (1.0 + 1e-3)
    within = np.array([float(n <= clip) for n in norms])
    keys = list(state)
    fitres = _secagg_exchange(grid, state, clip, "2,9,0,1")
    *sums, counts = parameters_to_ndarrays(fitres.parameters)
    for k, got in zip(keys, sums, strict=True):
        expected = sum(min(1.0, clip / n) * h[k] for n, h in zip(norms, honest, strict=True))
        np.testing.assert_allclose(got, expected / 3, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(counts, [clip * 3 / 3, 2 * clip * np.sum(within - 0.5) / 3])
    assert fitres.num_examples == 3 and fitres.metrics[messages.CLIENTS] == 3
    assert list(json.loads(str(fitres.metrics[messages.DROPPED]))) == ["9"]
    plain = _send(grid, MessageType.TRAIN, state, ORDER)  # the same clients' own metrics
    loss_keys = [k for k in plain.content.metric_records[messages.METRICS] if "loss" in k]
    assert loss_keys
    for key in loss_keys:
        total = fitres.metrics[messages.SUM_PREFIX + key]
        assert total == pytest.approx(sum(node_probe.metric(plain, key)), rel=1e-6)
    assert messages.SUM_PREFIX + messages.NUM_EXAMPLES not in fitres.metrics
    assert messages.SUM_PREFIX + WITHIN_CLIP not in fitres.metrics


def test_a_distributed_dp_node_sends_the_noised_integer_sum_of_the_clients_it_sampled():
    """Distributed DP under SecAgg+ with reproducible node noise: the node samples its
    clients with q, rounds each sampled client's clipped row and adds its discrete Gaussian
    share (common/dp_mechanism.py), all from one seeded stream: the test replays that
    stream on the rows the clients give alone. Round 1 samples clients 0 and 1 of 2, 0, 1."""
    config = {**BASE, "algorithm": "fedavg", "dp": True, "secagg": True, "dp-clip": 1.0,
              "dp-mechanism": "distributed", "dp-reproducible-noise": True}  # fmt: skip
    s = parse_settings(config)
    state = initial_state(s)
    grid = node_probe.node_grid(config, 1)
    keys = list(state)
    rng = node_rng(True, s.seed, 1, ORDER)
    sampled, rate = node_sample(ORDER, 0.6, rng), 0.6
    assert sampled == [0, 1]
    honest = [_alone(grid, state, p) for p in sampled]
    norms = row_norms({k: np.stack([h[k] for h in honest]) for k in keys})
    clip = float(norms.mean())  # one sampled client over C, one under
    flat = np.stack(
        [np.concatenate([min(1.0, clip / n) * h[k].ravel() for k in keys])
         for n, h in zip(norms, honest, strict=True)]
    )  # fmt: skip
    noise = distributed_noise(clip, 0.5, flat.shape[1], 3, 1, 1, 2**20)
    expected = noised_node_sum(flat, noise, rng)
    fitres = _secagg_exchange(grid, state, clip, "2,0,1", noise_config(noise, rate))
    arrays = parameters_to_ndarrays(fitres.parameters)
    assert [a.shape for a in arrays] == [state[k].shape for k in keys] and not fitres.metrics
    got = np.concatenate([((a + 1) * noise.modulus / 2).ravel() for a in arrays])
    off = np.abs(got - expected)
    # float32 rows from a cohort of three and of one may differ in the last bit, which can
    # move a single randomized rounding by one integer step; nothing more
    assert off.max() <= 1 + 1e-6 and np.mean(off < 1e-6) > 0.99
    assert np.abs(expected - np.median(expected)).max() > 10  # the sum is not flat noise


def test_a_kept_models_info_names_its_origin_and_the_scores_of_its_reply_row(tmp_path):
    """model-dir on a three-client node: each client's info file repeats what the reply
    says of it (scores, test size), its round, run and step count, and the run config."""
    config = {**BASE, "algorithm": "maml", "eval-steps": 3}
    s = parse_settings(config)
    grid = node_probe.node_grid(config, 1)
    grid.contexts[1].node_config["model-dir"] = str(tmp_path)
    reply = _send(grid, MessageType.EVALUATE, initial_state(s), ORDER, server_round=7)
    run_id = grid.contexts[1].run_id
    keys = (messages.LOSS_BEFORE, messages.LOSS_AFTER, messages.ACC_BEFORE, messages.ACC_AFTER)
    columns = {k: node_probe.metric(reply, k) for k in keys}
    node = node_runtime(grid.contexts[1])
    for r, pid in enumerate(ORDER):
        info = json.loads((tmp_path / f"partition-{pid}" / INFO_FILE).read_text())
        assert info["scores"] == {k: pytest.approx(columns[k][r], rel=1e-6) for k in keys}
        assert (info["run-id"], info["round"], info["partition-id"]) == (run_id, 7, pid)
        assert (info["num-partitions"], info["eval-steps"]) == (3, 3)
        assert info["num-test"] == node.client(pid).data.num_test
        assert parse_settings(info["settings"]) == s


def _secagg_exchange(grid, state, clip: float, clients: str, extra: dict | None = None):
    """The node's FitRes for a SecAgg+-style FitIns (no masking: the mod is not in the loop)."""
    keys = list(state)
    fitins = FitIns(
        ndarrays_to_parameters([state[k] for k in keys]),
        {messages.SERVER_ROUND: 1, messages.CLIP: clip, messages.STATE_KEYS: ",".join(keys),
         messages.CLIENTS: clients, **(extra or {})},
    )  # fmt: skip
    content = compat.fitins_to_recorddict(fitins, keep_input=True)
    (reply,) = grid.send_and_receive(
        [Message(content=content, dst_node_id=1, message_type=MessageType.TRAIN)]
    )
    assert not reply.has_error(), reply.error.reason
    return compat.recorddict_to_fitres(reply.content, keep_input=False)


@pytest.mark.parametrize("algorithm", ["metasgd", "local"])
def test_a_node_makes_every_tensor_on_its_device(algorithm):
    """A GPU node's trap without a GPU: with torch's default device set to 'meta', a tensor
    made without naming the node's device lands on 'meta' and the work fails. A node on
    'cpu' must answer a train and an evaluate message as it does without that default
    (Meta-SGD's α, and 'local''s own stored models, come back to the device each round)."""
    config = {**BASE, "algorithm": algorithm}
    state = initial_state(parse_settings(config))

    def replies(default: str | None) -> list[Message]:
        grid = node_probe.node_grid(config, 1)
        node_runtime(grid.contexts[1])  # the model and data, loaded as a node starts
        with torch.device(default) if default else contextlib.nullcontext():
            return [
                _send(grid, kind, state, ORDER, server_round=r)
                for r, kind in enumerate((MessageType.TRAIN, MessageType.TRAIN,
                                          MessageType.EVALUATE), start=1)
            ]  # fmt: skip

    plain, on_meta_default = replies(None), replies("meta")
    for a, b in zip(plain[:2], on_meta_default[:2], strict=True):
        for k, v in node_probe.updates(a).items():
            np.testing.assert_array_equal(node_probe.updates(b)[k], v)
    assert _columns(on_meta_default[2]) == _columns(plain[2])
