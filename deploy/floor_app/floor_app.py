"""Flower's floor: a round of fedmeta's message pattern with a ClientApp that does nothing.

Each round sends every node a train message and then an evaluate message carrying an
ArrayRecord of ``num-parameters`` float32 values (the digits MLP has ~5,000), exactly as the
real ServerApp does (same delivery: server/delivery.py), and the ClientApp answers each at
once with the arrays it got (train) or one metric (evaluate). What a round then costs is
Flower's alone: polling on both sides, the Runtime API, gRPC and TLS. The seconds of each
round go to the log and, with ``out``, to a JSON file on the SuperLink's machine.
"""

from __future__ import annotations

import json
import time
from logging import INFO
from pathlib import Path

import numpy as np
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from server.delivery import send_and_receive

server = ServerApp()
client = ClientApp()


@client.train()
def train(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"updates": msg.content["arrays"]}), reply_to=msg)


@client.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"loss": 0.0})}), reply_to=msg)


@server.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    rounds, wanted = int(config["num-rounds"]), int(config["min-available-nodes"])
    deadline = time.monotonic() + 120
    while len(nodes := sorted(grid.get_node_ids())) < wanted:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} of min-available-nodes={wanted} connected")
        time.sleep(0.5)
    arrays = ArrayRecord([np.zeros(int(config["num-parameters"]), np.float32)])
    seconds = []
    for rnd in range(1, rounds + 1):
        started = time.monotonic()
        for kind in (MessageType.TRAIN, MessageType.EVALUATE):
            content = {"arrays": arrays, "config": ConfigRecord({"server-round": rnd})}
            messages = [
                Message(RecordDict(content), dst_node_id=n, message_type=kind) for n in nodes
            ]
            replies = send_and_receive(grid, messages, timeout=120)
            if len(replies) != len(nodes) or any(r.has_error() for r in replies):
                raise RuntimeError(f"round {rnd}: {len(replies)} of {len(nodes)} nodes replied")
        seconds.append(time.monotonic() - started)
        log(INFO, "floor round %d/%d: %.2f s", rnd, rounds, seconds[-1])
    if config["out"]:
        Path(str(config["out"])).write_text(json.dumps({"round-seconds": seconds}, indent=2))
