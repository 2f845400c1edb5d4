"""Episodes: support and query come from the same N classes, relabelled, never shared."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import parse_settings
from common.data.episodes import (
    EpisodeSpec,
    EpisodicData,
    by_class,
    draw_episode,
    evaluation_episodes,
)
from common.data.registry import smallest_train_split
from common.tasks import (
    BatchConfig,
    BatchSampler,
    EpisodeSampler,
    batch_warnings,
    draw_indices,
    draw_meta_indices,
    task_sampler,
)


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
    labels = _labels()
    x = np.arange(len(labels), dtype=np.float32)[:, None]
    sampler = EpisodeSampler(x, labels, EpisodeSpec(5, 1, 3, 1))
    got = sampler.meta_batches(np.random.default_rng(1), steps=4)
    assert got.support[0].shape == (4, 5, 1) and got.query[0].shape == (4, 15, 1)
    for t in range(4):
        d, d_prime, d_second = ((b[0][t], b[1][t]) for b in (got.support, got.query, got.hessian))
        assert not set(d[0][:, 0].tolist()) & set(d_prime[0][:, 0].tolist())
        for xs, ys in (d, d_prime, d_second):
            assert sorted(set(ys.tolist())) == list(range(5))
            original = {int(y): int(labels[int(v)]) for v, y in zip(xs[:, 0], ys, strict=True)}
            assert original == {int(y): int(labels[int(d[0][i, 0])]) for i, y in enumerate(d[1])}


def test_plain_sampler_draws_distinct_rows_independently_and_reproducibly():
    x = np.arange(40, dtype=np.float32)[:, None]  # value = row: traceable
    y = np.arange(40) % 4
    settings = parse_settings({"dataset": "digits", "partition": "dirichlet", "batch-size": 7})
    sampler = task_sampler(x, y, BatchConfig.from_settings(settings))
    assert isinstance(sampler, BatchSampler)
    got = sampler.meta_batches(np.random.default_rng(3), steps=5)
    again = sampler.meta_batches(np.random.default_rng(3), steps=5)
    rows = [got.support[0], got.query[0], got.hessian[0]]
    for b, b_again in zip(rows, [again.support[0], again.query[0], again.hessian[0]], strict=True):
        assert b.shape == (5, 7, 1)
        np.testing.assert_array_equal(b, b_again)  # same rng, same batches
        for step in b[..., 0]:
            assert len(set(step.tolist())) == 7  # distinct rows within a batch
    np.testing.assert_array_equal(got.support[1], y[got.support[0][..., 0].astype(int)])
    assert not np.array_equal(rows[0], rows[1])  # D and D' are independent draws
    plain = sampler.batches(np.random.default_rng(4), steps=3)
    assert plain[0].shape == (3, 7, 1)


def test_draw_indices_is_uniform_over_rows():
    counts = np.bincount(
        draw_indices(np.random.default_rng(0), 10, 3, 20_000).ravel(), minlength=10
    )
    expected = 20_000 * 3 / 10
    assert np.all(np.abs(counts - expected) < 5 * np.sqrt(expected))


def test_a_split_no_larger_than_the_batch_is_taken_whole_in_order():
    np.testing.assert_array_equal(
        draw_indices(np.random.default_rng(0), 5, 5, 2), [list(range(5))] * 2
    )


def test_too_few_classes_for_the_way_is_a_named_error():
    from common.data.types import DataError

    with pytest.raises(DataError, match="5-way"):
        draw_episode(by_class(np.repeat(np.arange(3), 10)), None, 5, 1, 1, np.random.default_rng(0))


# ---- stability options: D'' of its own size; warnings when D, D', D'' cannot differ


@pytest.mark.parametrize("n", [3, 5, 9, 40])
def test_equal_hessian_size_draws_exactly_what_one_size_for_all_three_drew(n):
    """hessian-batch-size = batch-size keeps every run's batches as they were."""
    d, d1, d2 = draw_meta_indices(np.random.default_rng(n), n, 5, 5, 4)
    before = draw_indices(np.random.default_rng(n), n, 5, 3 * 4).reshape(4, 3, -1)
    for j, got in enumerate((d, d1, d2)):
        np.testing.assert_array_equal(got, before[:, j])


def test_a_larger_hessian_batch_is_drawn_independently_with_distinct_rows():
    x = np.arange(30, dtype=np.float32)[:, None]
    b = BatchSampler(x, x, 5, hessian_size=12).meta_batches(np.random.default_rng(0), 6)
    assert b.support[0].shape == (6, 5, 1) and b.hessian[0].shape == (6, 12, 1)
    for step in b.hessian[0]:
        assert len(set(step.ravel())) == 12  # distinct samples
    # same D and D' as without the option
    same = BatchSampler(x, x, 5).meta_batches(np.random.default_rng(0), 6)
    np.testing.assert_array_equal(b.support[0], same.support[0])
    np.testing.assert_array_equal(b.query[0], same.query[0])


def test_episodic_hessian_batch_takes_its_shots_per_class():
    labels = _labels(classes=6, per_class=15)
    x = np.arange(len(labels), dtype=np.float32)[:, None]
    s = parse_settings(
        {"dataset": "omniglot", "data-path": "x", "n-way": 3, "k-shot": 1, "query-shots": 2,
         "hessian-batch-size": 4}
    )  # fmt: skip
    b = task_sampler(x, labels, BatchConfig.from_settings(s)).meta_batches(
        np.random.default_rng(1), 2
    )
    assert b.support[1].shape == (2, 3) and b.hessian[1].shape == (2, 12)
    for step in range(2):
        assert np.bincount(b.hessian[1][step]).tolist() == [4, 4, 4]
        # D'' is labelled as D: the same source class behind each label
        d, d_second = b.support[0][step].ravel(), b.hessian[0][step].ravel()
        for label in range(3):
            source = {int(labels[int(i)]) for i in d_second[b.hessian[1][step] == label]}
            assert source == {int(labels[int(i)]) for i in d[b.support[1][step] == label]}


def _warnings(**config):
    s = parse_settings({k.replace("_", "-"): v for k, v in config.items()})
    return batch_warnings(s, smallest_train_split(s))


def test_warns_when_d_d_prime_and_d_second_must_be_one_batch():
    (w,) = _warnings(sinusoid_train_points=5, batch_size=5)
    assert "D, D' and D''" in w and "batch-size" in w
    (w,) = _warnings(sinusoid_train_points=4, batch_size=5)
    assert "skipped every round" in w
    (w,) = _warnings(algorithm="perfedavg-hf", sinusoid_train_points=20, hessian_batch_size=20)
    assert "D''" in w and "hessian-batch-size=20" in w
    assert _warnings(sinusoid_train_points=20, batch_size=5) == []
    assert _warnings(algorithm="fedavg", sinusoid_train_points=5, batch_size=5) == []


def test_warns_when_metasgd_is_scored_beyond_its_trained_steps_with_alpha_unbounded():
    (w,) = _warnings(algorithm="metasgd", eval_steps=10)
    assert "metasgd-alpha-max" in w and "10 steps" in w
    assert _warnings(algorithm="metasgd", eval_steps=1) == []
    assert _warnings(algorithm="metasgd", eval_steps=10, metasgd_alpha_max=0.05) == []
    (w,) = _warnings(algorithm="metasgd", eval_steps=1, new_clients=5, new_client_steps="1,10")
    assert "10 steps" in w


def test_by_class_lists_each_class_positions_in_order():
    labels = np.random.default_rng(3).integers(0, 40, 500)
    pool = by_class(labels)
    assert sorted(pool) == sorted(set(labels.tolist()))
    for c, positions in pool.items():
        np.testing.assert_array_equal(positions, np.flatnonzero(labels == c))
