"""Episodes: support and query come from the same N classes, relabelled, never shared."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import parse_settings
from common.data.episodes import (
    EpisodeSpec,
    EpisodicData,
    by_class,
    draw_episode,
    evaluation_episodes,
)
from common.personalize import sample_batch
from common.tasks import BatchSampler, EpisodeSampler, task_sampler


def _labels(classes: int = 12, per_class: int = 15) -> np.ndarray:
    return np.repeat(np.arange(classes) * 10 + 3, per_class)  # class ids need not be 0..C-1


@pytest.mark.parametrize("seed", range(5))
def test_training_episode_support_and_query_disjoint_same_classes_relabelled(seed):
    labels = _labels()
    e = draw_episode(by_class(labels), None, 5, 2, 4, np.random.default_rng(seed))
    assert not set(e.support) & set(e.query)
    assert sorted(set(e.support_labels)) == sorted(set(e.query_labels)) == list(range(5))
    assert np.bincount(e.support_labels).tolist() == [2] * 5
    assert np.bincount(e.query_labels).tolist() == [4] * 5
    for positions, relabelled in ((e.support, e.support_labels), (e.query, e.query_labels)):
        np.testing.assert_array_equal(labels[positions], e.classes[relabelled])


def test_evaluation_episodes_adapt_on_train_split_score_on_test_split():
    x_train = np.arange(12 * 15, dtype=np.float32)[:, None]  # value = position: traceable
    x_test = 1000 + np.arange(12 * 5, dtype=np.float32)[:, None]
    data = EpisodicData(
        x_train=x_train, y_train=np.repeat(np.arange(12), 15),
        x_test=x_test, y_test=np.repeat(np.arange(12), 5),
        spec=EpisodeSpec(n_way=5, k_shot=1, query_shots=5, eval_episodes=3),
    )  # fmt: skip
    episodes = evaluation_episodes(data, np.random.default_rng(0))
    assert len(episodes) == 3
    for ep in episodes:
        assert ep.num_train == 5 and (ep.x_train < 1000).all() and (ep.x_test >= 1000).all()
        # the query's class behind label j is the support's class behind label j
        support_class = {
            int(lbl): int(x // 15) for x, lbl in zip(ep.x_train[:, 0], ep.y_train, strict=True)
        }
        query_class = {
            int(lbl): int((x - 1000) // 5)
            for x, lbl in zip(ep.x_test[:, 0], ep.y_test, strict=True)
        }
        assert support_class == query_class and sorted(support_class) == list(range(5))


def test_episode_sampler_meta_batches_share_classes_and_labels():
    labels = torch.from_numpy(_labels())
    x = torch.arange(len(labels), dtype=torch.float32)[:, None]
    sampler = EpisodeSampler(x, labels, EpisodeSpec(5, 1, 3, 1))
    d, d_prime, d_second = sampler.meta_batches(np.random.default_rng(1))
    assert not set(d[0][:, 0].tolist()) & set(d_prime[0][:, 0].tolist())
    for xs, ys in (d, d_prime, d_second):
        assert sorted(set(ys.tolist())) == list(range(5))
        original = {int(y): int(labels[int(v)]) for v, y in zip(xs[:, 0], ys, strict=True)}
        assert original == {int(y): int(labels[int(d[0][i, 0])]) for i, y in enumerate(d[1])}


def test_plain_sampler_draws_exactly_what_the_old_code_drew():
    x, y = torch.randn(40, 3), torch.randint(0, 4, (40,))
    settings = parse_settings({"dataset": "digits", "partition": "dirichlet", "batch-size": 7})
    sampler = task_sampler(x, y, settings)
    assert isinstance(sampler, BatchSampler)
    got = sampler.meta_batches(np.random.default_rng(3))
    rng = np.random.default_rng(3)
    for batch in got:
        expected = sample_batch(x, y, 7, rng)
        torch.testing.assert_close(batch[0], expected[0])


def test_too_few_classes_for_the_way_is_a_named_error():
    from common.data.types import DataError

    with pytest.raises(DataError, match="5-way"):
        draw_episode(by_class(np.repeat(np.arange(3), 10)), None, 5, 1, 1, np.random.default_rng(0))
