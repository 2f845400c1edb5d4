"""Flower ClientApp: thin handlers that unpack a Message, call pure functions, pack a reply.

A node hosts one or many clients (``clients-per-node``, client/runtime.py). Each message
names the clients the server sampled on this node (partition ids); the node runs them
together, as one cohort under ``torch.func.vmap``, and replies per client (the message
contract, keys and layout, is common/messages.py):

``train``    tau local steps per client (client/train.py); the reply's ``updates``
             ArrayRecord stacks every client's update (local state - received state) on a
             leading axis, in the order of its partition ids, with each client's
             ``num-examples``, ``skipped`` flag and training losses as lists.
``evaluate`` personalises a functional copy of the received theta with k steps on each
             client's train split and scores it, before and after, on its held-out test
             split (common/scoring.py). A node whose node config has ``model-dir``
             also keeps each personalised model on its own disk (client/model_store.py).

A client too small for the configured batches is reported as skipped, with the reason,
while the rest of its cohort trains. A node's identity and data come from its node config
(``partition-id``, ``num-partitions``; optionally ``data-path``), so the same app serves
Flower's Simulation Engine and real SuperNodes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from client.attacks import attack_reply, training_split
from client.model_store import ONNX_FILE, export_onnx, save_personalized
from client.runtime import ClientRuntime, NodeRuntime, node_runtime
from client.secagg import (
    is_secagg_train,
    node_rng,
    node_sample,
    node_sum_reply,
    noised_node_reply,
    read_noise,
    secagg_when_asked,
    unpack_fitins,
)
from client.train import CohortResult, train_cohort
from common.arrays import (
    ALPHA_PREFIX,
    from_record,
    nonfinite_rows,
    split_state,
    to_record,
    to_tensors,
)
from common.config import Algorithm, AttackKind, settings_to_run_config
from common.dp_mechanism import WITHIN_CLIP, clip_rows
from common.fingerprint import check_code
from common.messages import (
    ACC_AFTER,
    ACC_BEFORE,
    LOSS_AFTER,
    LOSS_BEFORE,
    NUM_EXAMPLES,
    Instruction,
    instruction_of,
    query_code,
    read_instruction,
    write_identity,
    write_reply,
)
from common.meta import bounded_step_sizes
from common.scoring import evaluate_cohort, tensors_of
from common.streams import EVALUATE_PURPOSE, TRAIN_PURPOSE

app = ClientApp(mods=[secagg_when_asked])  # SecAgg+ rounds only (client/secagg.py)

PERSONAL_STATE_PREFIX = "personal-model/"  # context.state slot of the 'local' baseline


@dataclass(frozen=True)
class Received:
    theta: dict[str, torch.Tensor]
    alpha: dict[str, torch.Tensor] | None
    state: dict[str, np.ndarray]
    server_round: int
    clients: list[int]  # partition ids asked for, in order
    clip: float  # C every client clips its update to (DP, SecAgg+); 0: no clipping


@dataclass(frozen=True)
class Cohort:
    """The asked-for clients: those that can run, and why the others cannot."""

    ready: list[ClientRuntime]
    skipped: dict[int, str]  # partition id -> reason
    order: list[int]  # every asked-for partition id, in the reply's order


def _unpack(msg: Message, node: NodeRuntime) -> Received:
    arrays, instruction = read_instruction(msg.content)
    return _received(from_record(arrays), instruction, node)


def _received(state: dict[str, np.ndarray], asked: Instruction, node: NodeRuntime) -> Received:
    check_code(asked.code)  # a worker with other code than the ServerApp's must not train
    theta, alpha = split_state(state)
    return Received(
        theta=to_tensors(theta, node.device),
        alpha=to_tensors(alpha, node.device) if alpha is not None else None,
        state=state,
        server_round=asked.server_round,
        clients=list(node.partitions) if asked.clients is None else asked.clients,
        clip=asked.clip,
    )


def _cohort(node: NodeRuntime, clients: list[int]) -> Cohort:
    ready, skipped = [], {}
    order = list(dict.fromkeys(clients))  # a repeated id is served once
    for pid in order:
        if pid not in node.partitions:
            skipped[pid] = f"partition {pid} is not hosted by this node (it hosts {node.hosted})"
            continue
        rt = node.client(pid)
        if reason := rt.too_small_reason(node.train):
            skipped[pid] = reason
        else:
            ready.append(rt)
    return Cohort(ready, skipped, order)


def _reply(
    msg: Message, cohort: Cohort, values: dict[int, dict[str, float | int]],
    arrays: ArrayRecord | None,
) -> Message:  # fmt: skip
    return Message(write_reply(cohort.order, cohort.skipped, values, arrays), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    node = node_runtime(context)
    if is_secagg_train(msg):
        return _train_secagg(msg, context, node)
    got = _unpack(msg, node)
    cohort, updates, values, _ = _train_rows(context, node, got)
    return _reply(msg, cohort, values, to_record(updates))


def _train_secagg(msg: Message, context: Context, node: NodeRuntime) -> Message:
    """A SecAgg+ round: the node's clients train and clip as in a plain round; the node
    drops a client whose update is not finite (the server cannot see single updates) and
    replies with its scaled sum for the mod to mask (client/secagg.py)."""
    state, config = unpack_fitins(msg)
    got = _received(state, instruction_of(config), node)
    distributed = read_noise(config)
    if distributed is not None:  # distributed DP: the node samples, rounds and noises
        noise, rate = distributed
        s = node.settings
        rng = node_rng(s.dp_reproducible_noise, s.seed, got.server_round, got.clients)
        got = replace(got, clients=node_sample(got.clients, rate, rng))
    cohort, updates, values, within = _train_rows(context, node, got)
    dropped = {p: f"client skipped: {why}" for p, why in cohort.skipped.items()}
    bad = nonfinite_rows(updates, len(cohort.order))
    rows = []
    for row, pid in enumerate(cohort.order):
        if pid in cohort.skipped:
            continue
        if row in bad:
            dropped[pid] = f"'{bad[row]}' contains NaN or infinite values (dropped by its node)"
        else:
            rows.append(row)
    if distributed is not None:
        return noised_node_reply(
            msg, list(state), updates, rows, noise, node.settings.clients_per_node, rng
        )
    kept = {cohort.order[r] for r in rows}
    sums = {
        p: {k: v for k, v in row.items() if k not in (NUM_EXAMPLES, WITHIN_CLIP)}
        for p, row in values.items()
        if p in kept
    }
    return node_sum_reply(
        msg, list(state), updates, within, rows, dropped, sums, got.clip,
        node.settings.clients_per_node,
    )  # fmt: skip


def _train_rows(
    context: Context, node: NodeRuntime, got: Received
) -> tuple[Cohort, dict[str, np.ndarray], dict[int, dict[str, float | int]], np.ndarray]:
    """Train the asked-for clients: their stacked updates (clipped to ``got.clip`` when it is
    set, each client's b_i then in its metrics and returned), per-client metrics."""
    cohort = _cohort(node, got.clients)
    s = node.settings
    updates = {k: np.zeros((len(cohort.order), *v.shape), v.dtype) for k, v in got.state.items()}
    values: dict[int, dict[str, float | int]] = {}
    if cohort.ready:
        position = {pid: row for row, pid in enumerate(cohort.order)}
        rows = [position[rt.partition_id] for rt in cohort.ready]
        result = _train(context, node, got, cohort.ready)
        if s.algorithm is not Algorithm.LOCAL:  # 'local' shares nothing: its update stays zero
            for key, stacked in _stacked_updates(result, got).items():
                updates[key][rows] = stacked
        for j, rt in enumerate(cohort.ready):
            values[rt.partition_id] = {k: float(v[j]) for k, v in result.metrics.items()}
            values[rt.partition_id][NUM_EXAMPLES] = rt.data.num_train
    within = np.ones(len(cohort.order))
    if got.clip > 0:  # DP / SecAgg+: no honest update leaves above C
        clipped = clip_rows(updates, got.clip)
        updates, within = clipped.updates, clipped.within
        for row, pid in enumerate(cohort.order):
            if pid in values:
                values[pid][WITHIN_CLIP] = float(within[row])
    if node.attack.kind is not AttackKind.NONE:  # simulated attackers (client/attacks.py)
        claims = {p: int(v[NUM_EXAMPLES]) for p, v in values.items()}
        updates, claims = attack_reply(
            node.attack, updates, claims, cohort.order, node.num_partitions, got.server_round
        )
        for p, n in claims.items():
            values[p][NUM_EXAMPLES] = n
    return cohort, updates, values, within


def _train(
    context: Context, node: NodeRuntime, got: Received, ready: list[ClientRuntime]
) -> CohortResult:
    s = node.settings
    clients = [
        training_split(
            node.attack, rt.partition_id, rt.num_partitions, rt.data.x_train, rt.data.y_train
        )
        for rt in ready
    ]
    rngs = [rt.rng(got.server_round, TRAIN_PURPOSE) for rt in ready]
    if s.algorithm is Algorithm.LOCAL:
        start = _personal_params(context, node, got, ready)
        result = train_cohort(
            node.model, got.theta, s.inner_lr, clients, rngs, node.train, node.device,
            start=start,
        )  # fmt: skip
        for j, rt in enumerate(ready):
            context.state[PERSONAL_STATE_PREFIX + str(rt.partition_id)] = to_record(
                {n: p[j] for n, p in result.params.items()}
            )
        return result
    lr = got.alpha if s.learns_inner_lr and got.alpha is not None else s.inner_lr
    return train_cohort(node.model, got.theta, lr, clients, rngs, node.train, node.device)


def _stacked_updates(result: CohortResult, got: Received) -> dict[str, np.ndarray]:
    """(local state - received state) of every client, stacked, on the CPU, in its dtype."""
    out = {n: (p - got.theta[n]).cpu().numpy() for n, p in result.params.items()}
    if result.inner_lr is not None and got.alpha is not None:
        out |= {
            ALPHA_PREFIX + n: (a - got.alpha[n]).cpu().numpy() for n, a in result.inner_lr.items()
        }
    return {k: out[k].astype(got.state[k].dtype) for k in got.state}


def _personal_params(
    context: Context, node: NodeRuntime, got: Received, ready: list[ClientRuntime]
) -> dict[str, torch.Tensor]:
    """Each client's own model ('local' baseline), theta where it has none yet; stacked."""
    rows = []
    for rt in ready:
        record = context.state.get(PERSONAL_STATE_PREFIX + str(rt.partition_id))
        rows.append(
            to_tensors(from_record(record), node.device)
            if isinstance(record, ArrayRecord)
            else got.theta
        )
    return {n: torch.stack([r[n] for r in rows]) for n in got.theta}


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    node = node_runtime(context)
    got = _unpack(msg, node)
    cohort = _cohort(node, got.clients)
    s = node.settings
    values: dict[int, dict[str, float | int]] = {}
    if not cohort.ready:
        return _reply(msg, cohort, values, None)
    local = s.algorithm is Algorithm.LOCAL
    params = _personal_params(context, node, got, cohort.ready) if local else got.theta
    lr = bounded_step_sizes(got.alpha, s.alpha_bounds) if got.alpha is not None else s.inner_lr
    steps = s.eval_steps if s.adapts_at_evaluation else 0
    model_dir = str(context.node_config.get("model-dir", ""))
    results = evaluate_cohort(
        node.model, params, lr, [rt.data for rt in cohort.ready],
        [rt.rng(got.server_round, EVALUATE_PURPOSE) for rt in cohort.ready],
        steps=(steps,), batch_size=s.batch_size, task=s.task, device=node.device,
        cohort_size=s.cohort_size, per_client_params=local, keep_params=bool(model_dir),
        loss=s.loss,
    )  # fmt: skip
    for rt, result in zip(cohort.ready, results, strict=True):
        before, after = result.before, result.after
        row: dict[str, float | int] = {
            NUM_EXAMPLES: rt.data.num_test,
            LOSS_BEFORE: before.loss,
            LOSS_AFTER: after.loss,
        }
        if before.accuracy is not None and after.accuracy is not None:
            row |= {ACC_BEFORE: before.accuracy, ACC_AFTER: after.accuracy}
        values[rt.partition_id] = row
        if model_dir:
            folder = _model_folder(model_dir, node, rt.partition_id)
            info = _model_info(rt, node, context, got, row, steps)
            save_personalized(folder, result.params, info)
            if _keeps_onnx(context):  # node config model-onnx=true: also an ONNX export
                x_test = tensors_of(rt.data, s.task, torch.device("cpu"))[2]
                export_onnx(node.model, result.params, x_test, folder / ONNX_FILE)
    return _reply(msg, cohort, values, None)


def _keeps_onnx(context: Context) -> bool:
    value = context.node_config.get("model-onnx", False)
    if not isinstance(value, bool):
        raise ValueError(
            f"node config model-onnx={value!r} is not a boolean: give model-onnx=true to keep "
            "an ONNX export beside the personalised model in model-dir (needs the onnx extra)"
        )
    return value


def _model_folder(model_dir: str, node: NodeRuntime, partition_id: int) -> Path:
    """A one-client node keeps its model in model-dir; a cohort node one folder per client."""
    root = Path(model_dir)
    return root if len(node.partitions) == 1 else root / f"partition-{partition_id}"


def _model_info(
    rt: ClientRuntime, node: NodeRuntime, context: Context, got: Received,
    scores: dict[str, float | int], steps: int,
) -> dict[str, Any]:  # fmt: skip
    """What a device needs to know about its saved model: origin, scores, settings."""
    return {
        "run-id": context.run_id,
        "round": got.server_round,
        "partition-id": rt.partition_id,
        "num-partitions": rt.num_partitions,
        "num-test": rt.data.num_test,
        "scores": {k: v for k, v in scores.items() if k.startswith(("loss-", "acc-"))},
        "eval-steps": steps,
        "settings": settings_to_run_config(node.settings),  # rebuilds the model: model_for()
    }


@app.query()
def identity(msg: Message, context: Context) -> Message:
    """Tell the server which clients (partitions) this node hosts (for reproducible sampling)."""
    check_code(query_code(msg.content))
    node = node_runtime(context)
    return Message(write_identity(node.node_partition, node.partitions), reply_to=msg)
