"""Where a client's batches come from: plain batches or N-way K-shot episodes, drawn on the host.

Local training (client/train.py) asks a :class:`TaskSampler` for the batches of all its
``steps`` local steps at once, as numpy arrays with a leading step axis:
``meta_batches`` gives D, D' and D'' (Per-FedAvg HF's Hessian batch) of every step,
``batches`` one batch per step for plain SGD. For plain datasets these are independent
draws of ``batch-size`` distinct samples from the train split. For episodic datasets
(Omniglot) D and D' are the support and query of one episode (same N classes, labels
0..N-1, no shared sample), so the inner step adapts to the classes the outer step scores
on; D'' is a fresh support set of the same classes.

Every draw reads only the client's own ``numpy.random.Generator``, so a client gets the
same batches whether it trains alone or inside a cohort of many. Batches of one client
have fixed shapes (``batch-size`` samples, or N x K and N x Q for episodes), which is
what lets clients with different amounts of data be stacked and trained together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.config import Settings
from common.data.episodes import EpisodeSpec, by_class, draw_episode, episode_spec

HostBatch = tuple[np.ndarray, np.ndarray]  # (x, y) with leading axes, e.g. (steps, batch, ...)


@dataclass(frozen=True)
class MetaBatches:
    """D, D', D'' of every local step; each (x, y) has a leading ``steps`` axis."""

    support: HostBatch
    query: HostBatch
    hessian: HostBatch


def draw_indices(rng: np.random.Generator, n: int, size: int, count: int) -> np.ndarray:
    """``count`` independent draws of ``size`` distinct positions out of ``n``: (count, size).

    All ``n`` positions, in order, when ``n <= size``. One vectorised call per client:
    ranking i.i.d. uniform keys gives every ``size``-subset the same probability.
    """
    if n <= size:
        return np.broadcast_to(np.arange(n), (count, n)).copy()
    return np.argsort(rng.random((count, n)), axis=1)[:, :size]


class TaskSampler(Protocol):
    def meta_batches(self, rng: np.random.Generator, steps: int) -> MetaBatches: ...

    def batches(self, rng: np.random.Generator, steps: int) -> HostBatch: ...


class BatchSampler:
    """Independent batches of ``size`` samples from (x, y)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, size: int) -> None:
        self.x, self.y, self.size = x, y, size

    def meta_batches(self, rng: np.random.Generator, steps: int) -> MetaBatches:
        idx = draw_indices(rng, len(self.x), self.size, 3 * steps).reshape(steps, 3, -1)
        d, d_prime, d_second = ((self.x[idx[:, j]], self.y[idx[:, j]]) for j in range(3))
        return MetaBatches(d, d_prime, d_second)

    def batches(self, rng: np.random.Generator, steps: int) -> HostBatch:
        idx = draw_indices(rng, len(self.x), self.size, steps)
        return self.x[idx], self.y[idx]


class EpisodeSampler:
    """Episodes from (x, y) where y is the client's class id of each sample."""

    def __init__(self, x: np.ndarray, y: np.ndarray, spec: EpisodeSpec) -> None:
        self.x, self.spec = x, spec
        self.pool = by_class(y)

    def _take(self, positions: np.ndarray, labels: np.ndarray) -> HostBatch:
        return self.x[positions], labels

    def _one(self, rng: np.random.Generator) -> tuple[HostBatch, HostBatch, HostBatch]:
        s = self.spec
        e = draw_episode(self.pool, None, s.n_way, s.k_shot, s.query_shots, rng)
        # D'': K fresh shots of the same classes, labelled as in D.
        extra = [rng.choice(self.pool[int(c)], s.k_shot, replace=False) for c in e.classes]
        extra_labels = np.repeat(np.arange(s.n_way, dtype=np.int64), s.k_shot)
        return (
            self._take(e.support, e.support_labels),
            self._take(e.query, e.query_labels),
            self._take(np.concatenate(extra).astype(np.int64), extra_labels),
        )

    def meta_batches(self, rng: np.random.Generator, steps: int) -> MetaBatches:
        per_step = [self._one(rng) for _ in range(steps)]
        return MetaBatches(*(stack_batches([step[j] for step in per_step]) for j in range(3)))

    def batches(self, rng: np.random.Generator, steps: int) -> HostBatch:
        """Support and query of one episode together: an N-way batch for plain SGD."""
        s, out = self.spec, []
        for _ in range(steps):
            e = draw_episode(self.pool, None, s.n_way, s.k_shot, s.query_shots, rng)
            out.append(
                self._take(
                    np.concatenate([e.support, e.query]),
                    np.concatenate([e.support_labels, e.query_labels]),
                )
            )
        return stack_batches(out)


def stack_batches(batches: list[HostBatch]) -> HostBatch:
    """Batches of equal shapes stacked on a new leading axis."""
    return np.stack([x for x, _ in batches]), np.stack([y for _, y in batches])


def task_sampler(x: np.ndarray, y: np.ndarray, settings: Settings) -> TaskSampler:
    if settings.episodic:
        return EpisodeSampler(x, y, episode_spec(settings))
    return BatchSampler(x, y, settings.batch_size)
