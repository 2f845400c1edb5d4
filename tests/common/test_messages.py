"""The message contract (common/messages.py): what a node writes, the server reads back, and
no reply key is spelled as a string literal outside the contract module."""

import ast
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord

from common import messages as m
from common.arrays import UpdateRejected

ROOT = Path(__file__).resolve().parents[2]


def test_instruction_round_trip():
    arrays = ArrayRecord({"w": __import__("flwr").app.Array(np.ones(3, np.float32))})
    content = m.write_instruction(arrays, 7, [3, 1], clip=0.5, config=ConfigRecord({m.FINAL: True}))
    got_arrays, got = m.read_instruction(content)
    assert got == m.Instruction(
        server_round=7, clients=[3, 1], clip=0.5, final=True, code=m.code_fingerprint()
    )  # every instruction carries the ServerApp's code fingerprint (issue 20)
    assert list(got_arrays) == ["w"]
    _, plain = m.read_instruction(m.write_instruction(arrays, 2, [4]))
    assert plain.clip == 0.0 and plain.final is False and plain.clients == [4]


def test_reply_round_trip_keeps_each_client_on_its_row():
    values = {5: {m.NUM_EXAMPLES: 20, "loss": 0.25}, 9: {m.NUM_EXAMPLES: 7, "loss": 1.5}}
    content = m.write_reply([9, 2, 5], {2: "too few samples"}, values, None)
    reply = m.read_reply(content, asked=[2, 5, 9])
    assert reply.rows == [(0, 9), (2, 5)]  # (row, partition), the skipped client left out
    assert reply.dropped == {2: "client skipped: too few samples"}
    assert reply.column(m.NUM_EXAMPLES) == [7, 0, 20]
    assert reply.metric_columns() == {"loss": [1.5, 0.0, 0.25]}


def test_reply_drops_unasked_and_missing_clients():
    values = {1: {m.NUM_EXAMPLES: 3}, 4: {m.NUM_EXAMPLES: 3}}
    content = m.write_reply([1, 4], {}, values, None)
    reply = m.read_reply(content, asked=[1, 2])
    assert reply.rows == [(0, 1)]
    assert set(reply.dropped) == {4, 2}  # 4 was not asked for; 2 has no row
    assert "did not ask" in reply.dropped[4] and "no result" in reply.dropped[2]


@pytest.mark.parametrize("broken", ["no-metrics", "no-ids", "short-column"])
def test_unreadable_reply_is_rejected_as_a_whole(broken):
    content = m.write_reply([1, 2], {}, {1: {m.NUM_EXAMPLES: 1}, 2: {m.NUM_EXAMPLES: 1}}, None)
    if broken == "no-metrics":
        del content[m.METRICS]
    elif broken == "no-ids":
        del content[m.METRICS][m.PARTITION_ID]
    else:
        content[m.METRICS][m.SKIPPED] = [0]
    with pytest.raises(UpdateRejected):
        m.read_reply(content, asked=[1, 2])
    with pytest.raises(UpdateRejected, match=m.UPDATES):
        m.reply_updates(content)


def test_identity_round_trip():
    assert list(m.read_identity(m.write_identity(2, range(20, 30)))) == list(range(20, 30))
    assert m.read_identity(m.write_identity(2, [7, 3])) == [7, 3]  # not contiguous: a list
    assert m.read_identity(m.write_identity(0, range(10**6))) == range(10**6)  # no list


# Keys that only the contract may spell (some others, e.g. "partition-id", are also Flower's
# node-config keys, and "clients"/"dropped" name fields of the run log).
_CONTRACT_ONLY = {
    m.ARRAYS, m.CONFIG, m.SERVER_ROUND, m.METRICS, m.SKIP, m.UPDATES, m.REASONS, m.SKIPPED,
    m.NUM_EXAMPLES, m.LOSS_BEFORE, m.LOSS_AFTER, m.ACC_BEFORE, m.ACC_AFTER, m.IDENTITY,
    m.PARTITIONS, m.STATE_KEYS, m.SUM_PREFIX,
}  # fmt: skip


def test_no_message_key_is_a_string_literal_outside_the_contract():
    offenders = []
    for folder in ("client", "server"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in _CONTRACT_ONLY:
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not offenders, "use common/messages.py's constants:\n" + "\n".join(offenders)
