"""Every random stream's purpose, named in one place.

A run is reproducible because each generator is seeded from the run's seed plus a few small
integers (``np.random.default_rng([seed, ...])``): which client, which round, and a
*purpose* that keeps two draws of the same client and round independent. The purposes are
grouped by the layout of the key they sit in; inside one layout two purposes must differ,
or two draws that should be independent would be the same numbers
(tests/common/test_streams.py checks it).

Every value below is published: theta after a fixed-seed run, the quickstart's table and
the pins in tests/server/test_theta_pins.py depend on them. Never renumber one; add a new
purpose with a value unused in its layout.

Keys carry no tag of their layout, and NumPy's ``SeedSequence`` treats a key and the same
key with trailing zeros alike (it pads to four words), so keys of *different* layouts can
meet: ``[seed, index, NEW_CLIENT_PURPOSE]`` is ``[seed, index, 3, 0]``, the training
stream of partition ``index`` in round 3, and a round's evaluation sample ``[seed, r, 1]``
is partition ``r``'s training stream of round 1. Such streams draw for different things on
different data, so no draw repeats another's role; the test pins the new clients' one.
"""

from __future__ import annotations

# ---- a client's streams: [seed, partition, round, purpose] (client/runtime.py) -----------
TRAIN_PURPOSE = 0  # a round's local training: task batches, inner/outer splits, Hessian batch
EVALUATE_PURPOSE = 1  # a round's evaluation: adaptation batches (personalize CLI: round = R)
ATTACK_PURPOSE = 2  # a simulated attacker's own noise vector (client/attacks.py)
CLIENT_PURPOSES = {
    "train": TRAIN_PURPOSE,
    "evaluate": EVALUATE_PURPOSE,
    "attack": ATTACK_PURPOSE,
}

# ---- a new (held-out) client's stream: [seed, new-client index, purpose] -----------------
NEW_CLIENT_PURPOSE = 3  # its adaptation batches when scored (server/new_clients.py)

# ---- a round's streams: [key, round, purpose]; key = seed, or DP's secret noise key -----
SAMPLE_TRAIN_PURPOSE = 0  # which clients train this round (server/nodes.py)
SAMPLE_EVALUATE_PURPOSE = 1  # which clients are scored this round
# DP's Poisson sample of the training clients: the same purpose as the train sample on
# purpose (it replaces that sample), drawn from the noise key instead of the seed.
SAMPLE_PURPOSE = SAMPLE_TRAIN_PURPOSE
NOISE_PURPOSE = 2  # the server's Gaussian noise on the mean update (server/privacy.py)
# A node's sampling, rounding and noise under distributed DP, with dp-reproducible-noise
# only (otherwise OS entropy): [seed, round, purpose, *partitions] (client/secagg.py).
# Padding makes a node of partition [0] draw what a node of none would; every node hosts
# clients, so the two never meet.
NODE_NOISE_PURPOSE = 3
COLLUSION_STREAM = 0xBAD  # the colluding attackers' shared vector (client/attacks.py)
ROUND_PURPOSES = {
    "sample-train": SAMPLE_TRAIN_PURPOSE,
    "sample-evaluate": SAMPLE_EVALUATE_PURPOSE,
    "dp-noise": NOISE_PURPOSE,
    "node-noise": NODE_NOISE_PURPOSE,
    "collusion": COLLUSION_STREAM,
}

# ---- a run's streams: [seed, purpose, ...] (the data layer, the attackers) ---------------
DIRICHLET_STREAM = 1  # Flower's Dirichlet partitioner's int seed (common/data/partition.py)
PATHOLOGICAL_STREAM = 2  # the pathological partitioner's int seed
PERFEDAVG_STREAM = 3  # the Per-FedAvg partition's per-class shuffles
SPLIT_STREAM = 4  # a client's own train/test split: [seed, purpose, partition]
# The held-out pool of new clients; one purpose for the registry's datasets and for user
# tables on purpose: the same role, and a run reads one or the other.
NEW_CLIENT_POOL = 7
ROLE_ORDER_STREAM = 11  # Shakespeare's seeded permutation of speaking roles
# The int seed of Flower's shard/IID partitioners on user tables. Shares 11 with
# ROLE_ORDER_STREAM by accident (already published); a run reads Shakespeare or a user
# table, never both, so the two never meet.
USER_PARTITIONER_STREAM = 11
ATTACKER_STREAM = 0xA77AC  # which partitions are attackers: [seed, purpose]
RUN_PURPOSES = {
    "dirichlet": DIRICHLET_STREAM,
    "pathological": PATHOLOGICAL_STREAM,
    "perfedavg": PERFEDAVG_STREAM,
    "split": SPLIT_STREAM,
    "new-client-pool": NEW_CLIENT_POOL,
    "role-order": ROLE_ORDER_STREAM,
    "attackers": ATTACKER_STREAM,
}

# ---- generated datasets: [seed, stream, client index, draw] (sinusoid, synthetic) -------
TRAIN_STREAM = 0  # the training population's tasks
NEW_CLIENT_STREAM = 1  # the new clients' tasks, never seen in training
TASK_DRAW = 0  # sinusoid: the task itself (amplitude, phase)
POINTS_DRAW = 1  # sinusoid: the task's x points (synthetic draws both from one stream)

# ---- derived streams --------------------------------------------------------------------
# A client's torch seed: a child of its numpy generator's SeedSequence with this spawn key,
# far above any child the project spawns (common/batching.py). Evaluation splits it per
# episode with [torch seed, episode] (common/scoring.py), keyed by the episode only.
TORCH_STREAM = 2**31 - 1
