"""Evaluation adapts on the train split only and never on the data it scores; a cohort
scores every client as it would be scored alone."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from common.config import Task
from common.data.episodes import EpisodeSpec, EpisodicData, evaluation_episodes
from common.data.types import ClientData
from common.scoring import evaluate_cohort, personalize_and_score

CPU = torch.device("cpu")


def _data(seed: int = 0, n_test: int = 7) -> ClientData:
    rng = np.random.default_rng(seed)
    x_tr = rng.random((12, 2)).astype(np.float32)
    x_te = (10 + rng.random((n_test, 2))).astype(np.float32)
    return ClientData(x_tr, x_tr[:, :1] * 2, x_te, x_te[:, :1] * 2)


def _linear() -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    return model, {n: p.detach() for n, p in model.named_parameters()}


def _run(data: ClientData, steps: int = 5, seed: int = 1):
    model, params = _linear()
    return personalize_and_score(
        model,
        params,
        0.05,
        data,
        steps=steps,
        batch_size=4,
        task=Task.REGRESSION,
        rng=np.random.default_rng(seed),
        device=CPU,
    )


def test_adaptation_never_reads_the_test_split():
    """A NaN anywhere the adaptation reads makes the adapted model NaN: poison the test
    split and the adapted parameters stay finite (the score on it, of course, is NaN)."""
    d = _data()
    poisoned_test = dataclasses.replace(d, x_test=np.full_like(d.x_test, np.nan))
    result = _run(poisoned_test)
    assert all(torch.isfinite(p).all() for p in result.params.values())
    assert np.isnan(result.after.loss)
    # The check can fail: poisoning the train split does reach the adapted model.
    poisoned_train = dataclasses.replace(d, x_train=np.full_like(d.x_train, np.nan))
    assert not all(torch.isfinite(p).all() for p in _run(poisoned_train).params.values())


def test_personalised_params_do_not_depend_on_the_test_split_and_theta_is_untouched():
    model, params = _linear()
    before = {n: p.clone() for n, p in params.items()}
    d = _data()
    other_test = dataclasses.replace(d, x_test=d.x_test + 5, y_test=d.y_test - 3)
    a, b = _run(d, steps=3, seed=3), _run(other_test, steps=3, seed=3)
    for n in a.params:
        assert torch.equal(a.params[n], b.params[n])
        assert not torch.equal(a.params[n], before[n])
    _run(d)
    for n in params:
        assert torch.equal(params[n], before[n])
    assert a.after.loss < a.before.loss  # adapting on the train split helps this task


def test_a_cohort_scores_each_client_as_if_it_were_alone():
    model, params = _linear()
    # different test sizes: padded and masked in the cohort
    clients = [_data(seed, n_test=4 + seed) for seed in range(5)]
    cohort = evaluate_cohort(
        model,
        params,
        0.05,
        clients,
        [np.random.default_rng([7, i]) for i in range(5)],
        steps=(1, 5),
        batch_size=4,
        task=Task.REGRESSION,
        device=CPU,
        cohort_size=2,
    )
    for i, data in enumerate(clients):
        alone = evaluate_cohort(
            model,
            params,
            0.05,
            [data],
            [np.random.default_rng([7, i])],
            steps=(1, 5),
            batch_size=4,
            task=Task.REGRESSION,
            device=CPU,
        )[0]
        for k in (0, 1, 5):
            assert cohort[i].by_steps[k].loss == pytest.approx(alone.by_steps[k].loss, rel=1e-5)
        for n in alone.params:
            torch.testing.assert_close(cohort[i].params[n], alone.params[n])
        # paired along one adaptation: the 5-step score continues the 1-step one
        assert cohort[i].after == cohort[i].by_steps[5]


def test_episodic_clients_average_their_episodes_and_match_alone():
    def client(seed: int) -> EpisodicData:
        r = np.random.default_rng(seed)
        return EpisodicData(
            x_train=r.random((8 * 6, 3)).astype(np.float32),
            y_train=np.repeat(np.arange(8), 6),
            x_test=r.random((8 * 2, 3)).astype(np.float32),
            y_test=np.repeat(np.arange(8), 2),
            spec=EpisodeSpec(n_way=3, k_shot=2, query_shots=2, eval_episodes=4),
        )

    torch.manual_seed(0)
    model = nn.Linear(3, 3)
    params = {n: p.detach() for n, p in model.named_parameters()}
    clients = [client(s) for s in range(3)]
    cohort = evaluate_cohort(
        model,
        params,
        0.5,
        clients,
        [np.random.default_rng(i) for i in range(3)],
        steps=(2,),
        batch_size=5,
        task=Task.CLASSIFICATION,
        device=CPU,
    )
    for i, data in enumerate(clients):
        alone = evaluate_cohort(
            model,
            params,
            0.5,
            [data],
            [np.random.default_rng(i)],
            steps=(2,),
            batch_size=5,
            task=Task.CLASSIFICATION,
            device=CPU,
        )[0]
        assert cohort[i].after.loss == pytest.approx(alone.after.loss, rel=1e-5)
        assert cohort[i].after.accuracy == pytest.approx(alone.after.accuracy)
        assert 0.0 <= cohort[i].after.accuracy <= 1.0
        # Before adapting, by hand: each episode's share of test rows whose largest logit is
        # the label, averaged over the same episodes (a wrong metric moves this number).
        episodes = evaluation_episodes(clients[i], np.random.default_rng(i))
        shares = [
            float((model(torch.as_tensor(e.x_test)).argmax(1).numpy() == e.y_test).mean())
            for e in episodes
        ]
        assert cohort[i].before.accuracy == pytest.approx(np.mean(shares))


def test_per_client_starting_params_are_used_row_by_row():
    model, params = _linear()
    shifted = {n: p + 1.0 for n, p in params.items()}
    stacked = {n: torch.stack([params[n], shifted[n]]) for n in params}
    d = _data()
    both = evaluate_cohort(
        model,
        stacked,
        0.05,
        [d, d],
        [np.random.default_rng(0), np.random.default_rng(0)],
        steps=(0,),
        batch_size=4,
        task=Task.REGRESSION,
        device=CPU,
        per_client_params=True,
    )
    alone = evaluate_cohort(
        model,
        shifted,
        0.05,
        [d],
        [np.random.default_rng(0)],
        steps=(0,),
        batch_size=4,
        task=Task.REGRESSION,
        device=CPU,
    )[0]
    assert both[0].before.loss != both[1].before.loss
    assert both[1].before.loss == pytest.approx(alone.before.loss, rel=1e-6)


def test_scores_are_paired_across_step_counts_one_adaptation_scored_at_each_k():
    """k = 1 of a (1, 3, 10) evaluation is exactly a 1-step-only evaluation with the same rng:
    every k reads the same batches (the first k of one draw), so per-k curves are paired."""
    model, params = _linear()
    clients = [_data(seed) for seed in range(3)]

    def scores(steps):
        return evaluate_cohort(
            model, params, 0.05, clients, [np.random.default_rng([5, i]) for i in range(3)],
            steps=steps, batch_size=4, task=Task.REGRESSION, device=CPU,
        )  # fmt: skip

    together = scores((1, 3, 10))
    for k in (1, 3):
        alone = scores((k,))
        for i in range(3):
            assert together[i].by_steps[k].loss == pytest.approx(alone[i].by_steps[k].loss)
            assert together[i].by_steps[0] == alone[i].by_steps[0]
