"""Where a client's training batches come from: plain batches or N-way K-shot episodes.

Local training (client/train.py) asks a :class:`TaskSampler` for the batches of one step:
``meta_batches`` gives D, D' (and D'' for Per-FedAvg HF), ``batch`` one batch for plain
SGD. For plain datasets these are independent draws of ``batch-size`` samples from the
train split, exactly as before. For episodic datasets (Omniglot) D and D' are the support
and query of one episode (same N classes, labels 0..N-1, no shared sample), so the inner
step adapts to the classes the outer step scores on; D'' is a fresh support set of the
same classes.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from common.config import Settings
from common.data.episodes import EpisodeSpec, by_class, draw_episode, episode_spec
from common.meta import Batch
from common.personalize import sample_batch


class TaskSampler(Protocol):
    def meta_batches(self, rng: np.random.Generator) -> tuple[Batch, Batch, Batch]: ...

    def batch(self, rng: np.random.Generator) -> Batch: ...


class BatchSampler:
    """Independent batches of ``size`` samples from (x, y)."""

    def __init__(self, x: Tensor, y: Tensor, size: int) -> None:
        self.x, self.y, self.size = x, y, size

    def meta_batches(self, rng: np.random.Generator) -> tuple[Batch, Batch, Batch]:
        d, d_prime, d_second = (sample_batch(self.x, self.y, self.size, rng) for _ in range(3))
        return d, d_prime, d_second

    def batch(self, rng: np.random.Generator) -> Batch:
        return sample_batch(self.x, self.y, self.size, rng)


class EpisodeSampler:
    """Episodes from (x, y) where y is the client's class id of each sample."""

    def __init__(self, x: Tensor, y: Tensor, spec: EpisodeSpec) -> None:
        self.x, self.spec = x, spec
        self.pool = by_class(y.cpu().numpy())

    def _take(self, positions: np.ndarray, labels: np.ndarray) -> Batch:
        idx = torch.from_numpy(positions).to(self.x.device)
        return self.x[idx], torch.from_numpy(labels).to(self.x.device)

    def meta_batches(self, rng: np.random.Generator) -> tuple[Batch, Batch, Batch]:
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

    def batch(self, rng: np.random.Generator) -> Batch:
        """Support and query of one episode together: an N-way batch for plain SGD."""
        s = self.spec
        e = draw_episode(self.pool, None, s.n_way, s.k_shot, s.query_shots, rng)
        return self._take(
            np.concatenate([e.support, e.query]), np.concatenate([e.support_labels, e.query_labels])
        )


def task_sampler(x: Tensor, y: Tensor, settings: Settings) -> TaskSampler:
    if settings.episodic:
        return EpisodeSampler(x, y, episode_spec(settings))
    return BatchSampler(x, y, settings.batch_size)
