"""Simulated malicious clients, made by the ClientApp so the server sees exactly what a real
attacker could send: a reply of the right keys, shapes and dtypes whose content lies.

Which clients attack is a pure function of (seed, attack-fraction, number of clients):
exactly round(fraction x N) of the N clients, the first of a seeded permutation, so
reruns, engines and node layouts agree on who they are. What an attacker sends
(``attack``; ``Delta`` is the update it honestly computed this round):

``scaled``            s x Delta                            (s = attack-scale)
``sign-flip``         -s x Delta
``gaussian``          N(0, sigma^2) noise, its own draw     (sigma = attack-noise-std)
``num-examples-lie``  -Delta, claiming s x its true num-examples, so that a mean weighted
                      by claims hands it the round
``label-flip``        an honest update on poisoned data: class c -> C - 1 - c, a
                      regression target y -> -y (the training split only: data poisoning)
``same-bad-update``   every attacker the same vector, s x N(0, 1) per entry drawn from
                      (seed, round) only: a colluding group that Krum sees as a tight cluster
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np

from common.config import AttackKind, Settings
from common.data.registry import num_classes
from common.streams import ATTACK_PURPOSE, ATTACKER_STREAM, COLLUSION_STREAM

NamedArrays = dict[str, np.ndarray]


@lru_cache(maxsize=16)
def attackers(seed: int, fraction: float, num_clients: int) -> frozenset[int]:
    """The partition ids of the round(fraction x num_clients) attackers."""
    count = round(fraction * num_clients)
    order = np.random.default_rng([seed, ATTACKER_STREAM]).permutation(num_clients)
    return frozenset(int(p) for p in order[:count])


def is_attacker(s: Settings, partition: int, num_clients: int) -> bool:
    if s.attack_kind is AttackKind.NONE:
        return False
    return partition in attackers(s.seed, s.attack_fraction, num_clients)


def flipped_labels(y: np.ndarray, classes: int | None) -> np.ndarray:
    """Label flip: class c -> classes - 1 - c; regression (classes None): y -> -y."""
    if classes is None:
        return -y
    return (classes - 1 - y).astype(y.dtype)


def training_split(
    s: Settings, partition: int, num_clients: int, x: np.ndarray, y: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The train split a client trains on: a label-flip attacker's labels are poisoned."""
    if s.attack_kind is AttackKind.LABEL_FLIP and is_attacker(s, partition, num_clients):
        return x, flipped_labels(y, num_classes(s))
    return x, y


def colluding_update(
    reference: Mapping[str, np.ndarray], seed: int, server_round: int, scale: float
) -> NamedArrays:
    """The update every same-bad-update attacker sends this round (identical for all)."""
    rng = np.random.default_rng([seed, server_round, COLLUSION_STREAM])
    return {
        k: (scale * rng.standard_normal(reference[k].shape)).astype(reference[k].dtype)
        for k in sorted(reference)
    }


def forged_update(
    s: Settings, update: Mapping[str, np.ndarray], num_examples: int, partition: int,
    server_round: int,
) -> tuple[NamedArrays, int]:  # fmt: skip
    """What attacker ``partition`` sends instead of its honest (update, num-examples)."""
    kind, scale = s.attack_kind, s.attack_scale
    if kind is AttackKind.SCALED:
        out = {k: v * scale for k, v in update.items()}
    elif kind is AttackKind.SIGN_FLIP:
        out = {k: v * -scale for k, v in update.items()}
    elif kind is AttackKind.GAUSSIAN:
        rng = np.random.default_rng([s.seed, partition, server_round, ATTACK_PURPOSE])
        out = {k: s.attack_noise_std * rng.standard_normal(update[k].shape) for k in update}
    elif kind is AttackKind.NUM_EXAMPLES_LIE:
        return {k: -v for k, v in update.items()}, int(num_examples * scale)
    elif kind is AttackKind.SAME_BAD_UPDATE:
        out = colluding_update(update, s.seed, server_round, scale)
    else:  # none, label-flip (already poisoned its data): the update as computed
        out = dict(update)
    return {k: np.asarray(v).astype(update[k].dtype) for k, v in out.items()}, num_examples


def attack_reply(
    s: Settings, updates: Mapping[str, np.ndarray], examples: Mapping[int, int],
    order: Sequence[int], num_clients: int, server_round: int,
) -> tuple[NamedArrays, dict[int, int]]:  # fmt: skip
    """A node's stacked updates (rows in ``order``) and num-examples by partition, with
    every trained attacker's row forged. Clients without an entry in ``examples`` did not
    train (skipped) and are left alone."""
    out = {k: np.array(v) for k, v in updates.items()}
    claims = dict(examples)
    for row, pid in enumerate(order):
        if pid not in claims or not is_attacker(s, pid, num_clients):
            continue
        honest = {k: v[row] for k, v in out.items()}
        forged, claims[pid] = forged_update(s, honest, claims[pid], pid, server_round)
        for k, v in forged.items():
            out[k][row] = v
    return out, claims
