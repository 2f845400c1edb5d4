"""Random streams: inside each key layout no two purposes share a value, so no two draws
that should be independent are the same numbers; checked on the generators themselves
(NumPy's SeedSequence pads a key with zeros to four words, so equal *keys* are not the
only way two streams can meet)."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pytest

from client.runtime import ClientRuntime
from common import streams
from server.privacy import noise_rng

SEEDS = (0, 7, 2**40 + 3)  # the last takes two words: keys of different lengths
PARTITIONS = range(8)
ROUNDS = range(13)


def state(key: list[int]) -> tuple[int, ...]:
    return tuple(np.random.SeedSequence(key).generate_state(4).tolist())


@pytest.mark.parametrize(
    "purposes", [streams.CLIENT_PURPOSES, streams.ROUND_PURPOSES, streams.RUN_PURPOSES]
)
def test_no_two_purposes_of_one_layout_share_a_value(purposes: dict[str, int]):
    by_value: dict[int, list[str]] = {}
    for name, value in purposes.items():
        by_value.setdefault(value, []).append(name)
    assert all(len(names) == 1 for names in by_value.values()), by_value


def test_generated_datasets_keep_training_and_new_clients_apart():
    assert streams.TRAIN_STREAM != streams.NEW_CLIENT_STREAM
    assert streams.TASK_DRAW != streams.POINTS_DRAW


def test_a_clients_streams_never_meet_over_seeds_clients_rounds_and_purposes():
    # The layout is the one ClientRuntime.rng uses, checked on the method itself.
    fake = SimpleNamespace(seed=5, partition_id=2)
    real = ClientRuntime.rng(fake, 3, streams.EVALUATE_PURPOSE)  # type: ignore[arg-type]
    assert real.random() == np.random.default_rng([5, 2, 3, streams.EVALUATE_PURPOSE]).random()

    seen: dict[tuple[int, ...], tuple] = {}
    for seed, part, rnd, (name, purpose) in itertools.product(
        SEEDS, PARTITIONS, ROUNDS, streams.CLIENT_PURPOSES.items()
    ):
        other = seen.setdefault(state([seed, part, rnd, purpose]), (seed, part, rnd, name))
        assert other == (seed, part, rnd, name), f"{other} and {name} draw the same numbers"


def test_a_rounds_streams_never_meet():
    assert noise_rng(9, 4, streams.NOISE_PURPOSE).random() == (
        np.random.default_rng([9, 4, streams.NOISE_PURPOSE]).random()
    )
    nodes = ([0, 1], [1], [2, 5], [3, 4, 6])  # a node's partitions, ascending
    seen: dict[tuple[int, ...], tuple] = {}
    for seed, rnd in itertools.product(SEEDS, ROUNDS):
        keys = {(seed, rnd, name): [seed, rnd, p] for name, p in streams.ROUND_PURPOSES.items()}
        for parts in nodes:
            keys[(seed, rnd, "node", *parts)] = [seed, rnd, streams.NODE_NOISE_PURPOSE, *parts]
        for who, key in keys.items():
            other = seen.setdefault(state(key), who)
            assert other == who, f"round streams {other} and {who} draw the same numbers"


def test_the_dp_sample_is_the_train_sample_drawn_from_another_key():
    assert streams.SAMPLE_PURPOSE == streams.SAMPLE_TRAIN_PURPOSE  # documented, on purpose


def test_a_new_clients_stream_meets_only_the_documented_training_stream():
    # streams.py: [seed, i, NEW_CLIENT_PURPOSE] pads to [seed, i, 3, 0], partition i's
    # training stream in round 3. Published; this pins that it is the only one it meets.
    clients = {
        state([seed, part, rnd, purpose]): (part, rnd, purpose)
        for seed, part, rnd, purpose in itertools.product(
            SEEDS[:2], PARTITIONS, ROUNDS, streams.CLIENT_PURPOSES.values()
        )
    }
    met = {
        (i, clients[s])
        for seed, i in itertools.product(SEEDS[:2], PARTITIONS)
        if (s := state([seed, i, streams.NEW_CLIENT_PURPOSE])) in clients
    }
    assert met == {(i, (i, 3, streams.TRAIN_PURPOSE)) for i in PARTITIONS}
