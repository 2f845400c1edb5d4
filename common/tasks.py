"""Where a client's batches come from: plain batches or N-way K-shot episodes, drawn on the host.

Local training (client/train.py) asks a :class:`TaskSampler` for the batches of all its
``steps`` local steps at once, as numpy arrays with a leading step axis:
``meta_batches`` gives D, D' and D'' (Per-FedAvg HF's Hessian batch) of every step,
``batches`` one batch per step for plain SGD. For plain datasets these are independent
draws of ``batch-size`` distinct samples from the train split (D'' of
``hessian-batch-size`` when set). For episodic datasets (Omniglot) D and D' are the
support and query of one episode (same N classes, labels 0..N-1, no shared sample), so
the inner step adapts to the classes the outer step scores on; D'' is a fresh support set
of the same classes (K shots per class, or ``hessian-batch-size`` shots when set).

Every draw reads only the client's own ``numpy.random.Generator``, so a client gets the
same batches whether it trains alone or inside a cohort of many. Batches of one client
have fixed shapes (``batch-size`` samples, or N x K and N x Q for episodes), which is
what lets clients with different amounts of data be stacked and trained together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from common.config import MetaOrder, Settings
from common.data.episodes import EpisodeSpec, by_class, draw_episode

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


def draw_meta_indices(
    rng: np.random.Generator, n: int, size: int, hessian_size: int, steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positions of D, D' (``size`` each) and D'' (``hessian_size``) for ``steps`` steps.

    One key per (step, batch, sample) ranks the samples of each batch independently, so
    D and D' do not depend on ``hessian_size``, and with ``hessian_size == size`` this is
    exactly ``draw_indices(rng, n, size, 3 * steps)`` reshaped to (steps, 3, size).
    """
    if n <= min(size, hessian_size):
        every = np.broadcast_to(np.arange(n), (steps, n)).copy()
        return every, every.copy(), every.copy()
    order = np.argsort(rng.random((steps, 3, n)), axis=2)

    def first(j: int, k: int) -> np.ndarray:
        return order[:, j, :k] if n > k else np.broadcast_to(np.arange(n), (steps, n)).copy()

    return first(0, size), first(1, size), first(2, hessian_size)


class BatchSampler:
    """Independent batches of ``size`` samples (D'' of ``hessian_size``) from (x, y)."""

    def __init__(
        self, x: np.ndarray, y: np.ndarray, size: int, hessian_size: int | None = None
    ) -> None:
        self.x, self.y, self.size = x, y, size
        self.hessian_size = hessian_size or size

    def meta_batches(self, rng: np.random.Generator, steps: int) -> MetaBatches:
        idx = draw_meta_indices(rng, len(self.x), self.size, self.hessian_size, steps)
        d, d_prime, d_second = ((self.x[i], self.y[i]) for i in idx)
        return MetaBatches(d, d_prime, d_second)

    def batches(self, rng: np.random.Generator, steps: int) -> HostBatch:
        idx = draw_indices(rng, len(self.x), self.size, steps)
        return self.x[idx], self.y[idx]


class EpisodeSampler:
    """Episodes from (x, y) where y is the client's class id of each sample."""

    def __init__(
        self, x: np.ndarray, y: np.ndarray, spec: EpisodeSpec, hessian_shots: int | None = None
    ) -> None:
        self.x, self.spec = x, spec
        self.hessian_shots = hessian_shots or spec.k_shot
        self.pool = by_class(y)

    def _take(self, positions: np.ndarray, labels: np.ndarray) -> HostBatch:
        return self.x[positions], labels

    def _one(self, rng: np.random.Generator) -> tuple[HostBatch, HostBatch, HostBatch]:
        s = self.spec
        e = draw_episode(self.pool, None, s.n_way, s.k_shot, s.query_shots, rng)
        # D'': K (or hessian-batch-size) fresh shots of the same classes, labelled as in D.
        h = self.hessian_shots
        extra = [rng.choice(self.pool[int(c)], h, replace=False) for c in e.classes]
        extra_labels = np.repeat(np.arange(s.n_way, dtype=np.int64), h)
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


@dataclass(frozen=True)
class BatchConfig:
    """What a client's batches are: ``batch_size`` samples (D'' of ``hessian_size``), or
    N-way K-shot episodes (D'' of ``hessian_size`` shots per class) when ``episode`` is set."""

    batch_size: int
    hessian_size: int
    episode: EpisodeSpec | None = None

    @classmethod
    def from_settings(cls, s: Settings) -> BatchConfig:
        episode = EpisodeSpec.from_settings(s) if s.episodic else None
        return cls(s.batch_size, s.hessian_size, episode)


def task_sampler(x: np.ndarray, y: np.ndarray, cfg: BatchConfig) -> TaskSampler:
    if cfg.episode is not None:
        return EpisodeSampler(x, y, cfg.episode, cfg.hessian_size)
    return BatchSampler(x, y, cfg.batch_size, cfg.hessian_size)


def batch_warnings(settings: Settings, smallest_train: int | None = None) -> list[str]:
    """Start-up warnings about batches that cannot do what the settings intend.

    ``smallest_train`` is the fewest train samples a client holds, where known
    (``common.data.registry.smallest_train_split``). A client with fewer samples than a batch is
    skipped every round; one with exactly a batch gets its whole split as D, as D' and as
    D'', so the meta-objective adapts and scores on the same points.
    """
    s, out = settings, []
    if smallest_train is not None and not s.episodic:
        sizes = {"batch-size": s.batch_size}
        if s.meta_order is MetaOrder.HESSIAN_FREE and s.hessian_batch_size:
            sizes["hessian-batch-size"] = s.hessian_batch_size
        for key, size in sizes.items():
            if smallest_train < size:
                out.append(
                    f"clients with {smallest_train} train samples have fewer than {key}="
                    f"{size}: they are skipped every round (lower {key} or give them more data)"
                )
            elif smallest_train == size and s.meta_order is not None:
                batches = "D, D' and D'' are" if key == "batch-size" else "D'' is"
                out.append(
                    f"clients with {smallest_train} train samples, as many as {key}={size}: "
                    f"{batches} their whole train split at every step, so the meta-objective "
                    f"adapts and scores on the same points; use {key} < {smallest_train} for "
                    "distinct batches"
                )
    scored = max(s.eval_steps, *(s.new_client_step_list if s.new_clients else (0,)))
    if s.learns_inner_lr and s.alpha_bounds is None and scored > s.inner_steps:
        out.append(
            f"metasgd learns alpha for inner-steps={s.inner_steps} but is scored after up to "
            f"{scored} steps with alpha unbounded (it can diverge there): score at "
            f"{s.inner_steps} step(s) or bound alpha with metasgd-alpha-max "
            "(docs/benchmarks.md, 'Stability options')"
        )
    return out
