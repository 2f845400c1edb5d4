"""Flower ClientApp: thin handlers that unpack a Message, call pure functions, pack a reply.

``train``    runs tau local steps (client/train.py) and replies with the update
             (local state - received state) and its number of training examples.
``evaluate`` personalises a functional copy of the received theta with k steps on the
             local train split and scores it, before and after, on the held-out test split.
             A node whose node config has ``model-dir`` also keeps that personalised
             model on its own disk (client/model_store.py), to use offline.

A node's identity and data come from its node config (``partition-id``,
``num-partitions``; optionally ``data-path``), so the same app serves Flower's
Simulation Engine and real SuperNodes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.model_store import save_personalized
from client.runtime import ClientRuntime, runtime_for
from client.train import LocalResult, meta_train, sgd_train
from common.arrays import from_record, join_state, split_state, to_record, to_tensors
from common.config import Algorithm, settings_to_run_config
from common.personalize import personalize_and_score

app = ClientApp()

PERSONAL_STATE_KEY = "personal-model"  # context.state slot of the 'local' baseline


@dataclass(frozen=True)
class Received:
    theta: dict[str, torch.Tensor]
    alpha: dict[str, torch.Tensor] | None
    state: dict[str, np.ndarray]
    server_round: int


def _unpack(msg: Message, rt: ClientRuntime) -> Received:
    state = from_record(msg.content["arrays"])
    theta, alpha = split_state(state)
    server_round = int(msg.content["config"]["server-round"])
    return Received(
        theta=to_tensors(theta, rt.device),
        alpha=to_tensors(alpha, rt.device) if alpha is not None else None,
        state=state,
        server_round=server_round,
    )


def _skip_reply(msg: Message, reason: str) -> Message:
    """A client too small for the configured batches reports why instead of crashing."""
    content = RecordDict(
        {
            "metrics": MetricRecord({"num-examples": 0, "skipped": 1}),
            "skip": ConfigRecord({"reason": reason}),
        }
    )
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    rt = runtime_for(context)
    if rt.too_small_reason:
        return _skip_reply(msg, rt.too_small_reason)
    got = _unpack(msg, rt)
    s = rt.settings
    rng = rt.rng(got.server_round, purpose=0)
    x, y = rt.train_tensors
    if s.algo is Algorithm.LOCAL:
        start = _personal_params(context, rt) or got.theta
        result = sgd_train(rt.model, start, x, y, s, rng)
        context.state[PERSONAL_STATE_KEY] = to_record(result.params)
        # 'local' shares nothing: its update is zero, so the shared theta stays at init.
        update = {k: np.zeros_like(v) for k, v in got.state.items()}
    else:
        if s.meta_order is None:
            result = sgd_train(rt.model, got.theta, x, y, s, rng)
        else:
            lr = got.alpha if s.learns_inner_lr and got.alpha is not None else s.inner_lr
            result = meta_train(rt.model, got.theta, lr, x, y, s, s.meta_order, rng)
        update = _update(result, got)
    metrics = MetricRecord({**result.metrics, "num-examples": rt.data.num_train, "skipped": 0})
    content = RecordDict({"arrays": to_record(update), "metrics": metrics})
    return Message(content, reply_to=msg)


def _update(result: LocalResult, got: Received) -> dict[str, np.ndarray]:
    local = join_state(
        {n: p.cpu().numpy() for n, p in result.params.items()},
        {n: a.cpu().numpy() for n, a in result.inner_lr.items()} if result.inner_lr else None,
    )
    return {k: (local[k] - got.state[k]).astype(got.state[k].dtype) for k in got.state}


def _personal_params(context: Context, rt: ClientRuntime) -> dict[str, torch.Tensor] | None:
    if PERSONAL_STATE_KEY not in context.state:
        return None
    record = context.state[PERSONAL_STATE_KEY]
    assert isinstance(record, ArrayRecord)
    return to_tensors(from_record(record), rt.device)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    rt = runtime_for(context)
    if rt.too_small_reason:
        return _skip_reply(msg, rt.too_small_reason)
    got = _unpack(msg, rt)
    s = rt.settings
    params = got.theta
    if s.algo is Algorithm.LOCAL:
        params = _personal_params(context, rt) or got.theta
    lr = got.alpha if got.alpha is not None else s.inner_lr
    result = personalize_and_score(
        rt.model, params, lr, rt.data,
        steps=s.eval_steps if s.adapts_at_evaluation else 0,
        batch_size=s.batch_size, task=s.task, rng=rt.rng(got.server_round, purpose=1),
        device=rt.device,
    )  # fmt: skip
    before, after = result.before, result.after
    values: dict[str, float | int] = {
        "num-examples": rt.data.num_test,
        "partition-id": rt.partition_id,
        "loss-before": before.loss,
        "loss-after": after.loss,
        "skipped": 0,
    }
    if before.accuracy is not None and after.accuracy is not None:
        values |= {"acc-before": before.accuracy, "acc-after": after.accuracy}
    if model_dir := str(context.node_config.get("model-dir", "")):
        save_personalized(model_dir, result.params, _model_info(rt, context, got, values))
    return Message(RecordDict({"metrics": MetricRecord(values)}), reply_to=msg)


def _model_info(
    rt: ClientRuntime, context: Context, got: Received, scores: dict[str, float | int]
) -> dict[str, Any]:
    """What a device needs to know about its saved model: origin, scores, settings."""
    return {
        "run-id": context.run_id,
        "round": got.server_round,
        "partition-id": rt.partition_id,
        "num-partitions": rt.num_partitions,
        "num-test": rt.data.num_test,
        "scores": {k: v for k, v in scores.items() if k.startswith(("loss-", "acc-"))},
        "eval-steps": rt.settings.eval_steps if rt.settings.adapts_at_evaluation else 0,
        "settings": settings_to_run_config(rt.settings),  # rebuilds the model: model_for()
    }


@app.query()
def identity(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node serves (used for reproducible sampling)."""
    pid = int(context.node_config["partition-id"])
    return Message(RecordDict({"identity": MetricRecord({"partition-id": pid})}), reply_to=msg)
