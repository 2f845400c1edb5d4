"""N-way K-shot episodes: the unit of data of few-shot classification (Omniglot).

A client of an episodic dataset holds many classes (characters). Its ``x_train`` /
``y_train`` are the drawings it may adapt and train on, ``x_test`` / ``y_test`` held-out
drawings of the same classes, labelled by the client's class id. An episode picks N of
those classes at random, relabels them 0..N-1 in a random order, and draws a support set
(K per class) and a query set from them. Support and query never share a sample, and in
evaluation the query comes from the test split only, so no score is taken on data the
model adapted on (MAML, Finn et al. 2017, Sec. 5.2 and Appendix A.1).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.config import Settings
from common.data.types import ClientData, DataError


@dataclass(frozen=True)
class EpisodeSpec:
    n_way: int
    k_shot: int  # support examples per class
    query_shots: int  # query examples per class in a training episode
    eval_episodes: int  # episodes averaged per evaluation

    @classmethod
    def from_settings(cls, s: Settings) -> EpisodeSpec:
        return cls(s.n_way, s.k_shot, s.query_shots, s.eval_episodes)


@dataclass(frozen=True)
class EpisodicData(ClientData):
    """A client whose tasks are episodes drawn from its classes (see module doc)."""

    spec: EpisodeSpec = EpisodeSpec(5, 1, 5, 1)


def by_class(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Class id -> the positions of its samples, in order.

    One stable sort, not one pass per class: a client with MAML's rotations holds 128 classes,
    and its sampler is built every round."""
    order = np.argsort(labels, kind="stable")
    classes, starts = np.unique(labels[order], return_index=True)
    ends = [*starts[1:], len(labels)]
    return {int(c): order[a:b] for c, a, b in zip(classes, starts, ends, strict=True)}


@dataclass(frozen=True)
class Episode:
    """Positions into the source arrays and the episode's labels 0..N-1."""

    classes: np.ndarray  # the source class id of label 0, 1, ..., N-1
    support: np.ndarray
    support_labels: np.ndarray
    query: np.ndarray
    query_labels: np.ndarray


def draw_episode(
    support_pool: dict[int, np.ndarray],
    query_pool: dict[int, np.ndarray] | None,
    n_way: int,
    k_shot: int,
    query_shots: int | None,
    rng: np.random.Generator,
) -> Episode:
    """N classes, K support and ``query_shots`` query samples of each, relabelled 0..N-1.

    With ``query_pool=None`` both sets come from ``support_pool`` without replacement
    (training: disjoint by construction). Otherwise the query comes from ``query_pool``
    (evaluation: the held-out split); ``query_shots=None`` takes all of a class's samples.
    """
    need = k_shot + (query_shots or 0) if query_pool is None else k_shot
    eligible = [c for c, idx in support_pool.items() if len(idx) >= need]
    if query_pool is not None:
        eligible = [c for c in eligible if len(query_pool.get(c, ())) >= (query_shots or 1)]
    if len(eligible) < n_way:
        raise DataError(
            f"a {n_way}-way episode needs {n_way} classes with {need} samples each; "
            f"only {len(eligible)} of this client's {len(support_pool)} classes qualify"
        )
    classes = rng.choice(np.array(eligible), size=n_way, replace=False)
    parts: dict[str, list[np.ndarray]] = {"s": [], "sl": [], "q": [], "ql": []}
    for label, c in enumerate(classes):
        if query_pool is None:
            picked = rng.choice(support_pool[int(c)], size=need, replace=False)
            support, query = picked[:k_shot], picked[k_shot:]
        else:
            support = rng.choice(support_pool[int(c)], size=k_shot, replace=False)
            pool = query_pool[int(c)]
            query = pool if query_shots is None else rng.choice(pool, query_shots, replace=False)
        parts["s"].append(support)
        parts["q"].append(query)
        parts["sl"].append(np.full(len(support), label))
        parts["ql"].append(np.full(len(query), label))
    s, sl, q, ql = (np.concatenate(parts[k]).astype(np.int64) for k in ("s", "sl", "q", "ql"))
    return Episode(classes.astype(np.int64), s, sl, q, ql)


def evaluation_episodes(data: EpisodicData, rng: np.random.Generator) -> list[ClientData]:
    """``eval_episodes`` tasks as plain ClientData: train = K-shot support, test = query.

    The support comes from the client's train split, the query (every held-out drawing
    of the N classes) from its test split.
    """
    spec = data.spec
    train_pool, test_pool = by_class(data.y_train), by_class(data.y_test)
    tasks = []
    for _ in range(spec.eval_episodes):
        e = draw_episode(train_pool, test_pool, spec.n_way, spec.k_shot, None, rng)
        tasks.append(
            ClientData(
                x_train=data.x_train[e.support],
                y_train=e.support_labels,
                x_test=data.x_test[e.query],
                y_test=e.query_labels,
                client_id=data.client_id,
            )
        )
    return tasks
