"""A cohort trains every client exactly as that client trains alone: vmapped == one by one,
for every algorithm (theta, Meta-SGD's alpha, losses), to float tolerance."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from client.train import TrainConfig, train_cohort
from common import batching
from common.config import MetaOrder, parse_settings
from common.meta import loss_and_gradients, meta_gradient, sgd_step
from common.models import model_for
from common.scoring import loss_fn_for
from common.tasks import BatchConfig, task_sampler

CPU = torch.device("cpu")
CASES = {
    "maml": {},
    "maml-2-inner-steps": {"algorithm": "maml", "inner-steps": 2},
    "perfedavg-fo": {},
    "perfedavg-hf": {},
    "perfedavg-hf-fd": {"algorithm": "perfedavg-hf", "hessian-free-mode": "finite-difference"},
    "metasgd": {},
    "metasgd-fo": {"algorithm": "metasgd", "metasgd-order": "first-order"},
    # stability options: D'' of its own size; alpha kept in a range (starts outside it)
    "perfedavg-hf-hessian-batch": {"algorithm": "perfedavg-hf", "hessian-batch-size": 6},
    "metasgd-bounded": {
        "algorithm": "metasgd",
        "metasgd-alpha-min": 0.08,
        "metasgd-alpha-max": 0.12,
    },
    "fedavg": {},
    "fedavg-ft": {},
}


def _settings(name: str, **extra):
    overrides = {"algorithm": name} | CASES.get(name, {}) | extra
    return parse_settings(
        {
            "hidden-sizes": "8,8",
            "local-steps": 3,
            "batch-size": 4,
            "inner-lr": 0.1,
            "outer-lr": 0.05,
            **overrides,
        }
    )


def _clients(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Train splits of different sizes (6..15 points): fixed-size batches stack anyway."""
    out = []
    for i in range(count):
        r = np.random.default_rng(100 + i)
        x = r.uniform(-5, 5, (6 + 3 * i, 1)).astype(np.float32)
        out.append((x, (np.sin(x + i) * (1 + i)).astype(np.float32)))
    return out


def _theta(settings) -> dict[str, torch.Tensor]:
    model = model_for(settings, seed=0)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _alpha(settings, theta):
    if not settings.learns_inner_lr:
        return settings.inner_lr
    r = np.random.default_rng(5)
    return {
        n: torch.from_numpy(r.uniform(0.05, 0.15, p.shape).astype(np.float32))
        for n, p in theta.items()
    }


def _reference(settings, theta, lr, x, y, rng):
    """One client by hand: a Python loop over meta_gradient / plain gradients, no vmap."""
    model, loss_fn = model_for(settings), loss_fn_for(settings.task)
    sampler = task_sampler(x, y, BatchConfig.from_settings(settings))
    params, losses = dict(theta), []
    if settings.meta_order is None:
        xs, ys = sampler.batches(rng, settings.local_steps)
        for t in range(settings.local_steps):
            g, loss = loss_and_gradients(
                model, params, (torch.from_numpy(xs[t]), torch.from_numpy(ys[t])), loss_fn
            )
            params = sgd_step(params, g, settings.outer_lr)
            losses.append(float(loss))
        return params, None, [np.mean(losses)]
    b = sampler.meta_batches(rng, settings.local_steps)
    support, query = [], []
    bounds = settings.alpha_bounds
    if bounds is not None:
        lr = {n: a.clamp(*bounds) for n, a in lr.items()}
    for t in range(settings.local_steps):
        d, d1, d2 = (
            (torch.from_numpy(v[0][t]), torch.from_numpy(v[1][t]))
            for v in (b.support, b.query, b.hessian)
        )
        g = meta_gradient(
            model,
            params,
            d,
            d1,
            loss_fn,
            order=settings.meta_order,
            inner_lr=lr,
            inner_steps=settings.inner_steps,
            hessian_batch=d2,
            hessian_mode=settings.hessian_free_mode,
            fd_delta=settings.hessian_free_delta,
        )
        params = sgd_step(params, g.params, settings.outer_lr)
        if g.inner_lr is not None:
            lr = sgd_step(lr, g.inner_lr, settings.outer_lr)
            if bounds is not None:
                lr = {n: a.clamp(*bounds) for n, a in lr.items()}
        support.append(float(g.support_loss))
        query.append(float(g.query_loss))
    return params, lr if settings.learns_inner_lr else None, [np.mean(support), np.mean(query)]


@pytest.mark.parametrize("name", list(CASES))
def test_cohort_equals_each_client_trained_alone_by_hand(name):
    settings = _settings(name)
    cfg = TrainConfig.from_settings(settings)
    theta = _theta(settings)
    lr = _alpha(settings, theta)
    clients = _clients(4)
    meta = settings.meta_order is not None
    # eq. 10's finite difference divides float32 rounding by 2 * delta = 2e-3
    atol = 2e-5 if settings.hessian_free_mode == "finite-difference" else 1e-6
    rngs = [np.random.default_rng([9, i]) for i in range(4)]
    cohort = train_cohort(model_for(settings), theta, lr, clients, rngs, cfg, CPU)
    for i, (x, y) in enumerate(clients):
        params, alpha, losses = _reference(settings, theta, lr, x, y, np.random.default_rng([9, i]))
        for n in theta:
            torch.testing.assert_close(cohort.params[n][i], params[n], rtol=1e-5, atol=atol)
        if alpha is not None:
            assert cohort.inner_lr is not None
            for n in theta:
                torch.testing.assert_close(cohort.inner_lr[n][i], alpha[n], rtol=1e-5, atol=1e-6)
        else:
            assert cohort.inner_lr is None
        keys = ["train-support-loss", "train-query-loss"] if meta else ["train-loss"]
        for key, expected in zip(keys, losses, strict=True):
            assert cohort.metrics[key][i] == pytest.approx(expected, rel=1e-5)
        # the client really trained: its state moved away from theta
        assert any(not torch.equal(cohort.params[n][i], theta[n]) for n in theta)


@pytest.mark.parametrize("name", ["maml", "metasgd", "perfedavg-hf"])
def test_chunked_cohorts_equal_one_cohort(name):
    settings = _settings(name)
    cfg = TrainConfig.from_settings(settings)
    theta = _theta(settings)
    lr = _alpha(settings, theta)
    clients = _clients(5)
    whole = train_cohort(
        model_for(settings),
        theta,
        lr,
        clients,
        [np.random.default_rng(i) for i in range(5)],
        cfg,
        CPU,
    )
    # chunks of 2 (three calls: 2 + 2 + 1) and of 3 (two calls: 3 + 2)
    for size in (2, 3):
        _check_chunks_equal_one_cohort(settings, theta, lr, clients, whole, size)


def _check_chunks_equal_one_cohort(settings, theta, lr, clients, whole, size):
    chunked_cfg = TrainConfig.from_settings(dataclasses.replace(settings, cohort_size=size))
    chunked = train_cohort(
        model_for(settings),
        theta,
        lr,
        clients,
        [np.random.default_rng(i) for i in range(5)],
        chunked_cfg,
        CPU,
    )
    for n in theta:
        torch.testing.assert_close(chunked.params[n], whole.params[n], rtol=1e-5, atol=1e-6)
    assert chunked.metrics.keys() == whole.metrics.keys() == {
        "train-support-loss", "train-query-loss"
    }  # fmt: skip
    for key, values in whole.metrics.items():
        assert values.shape == (5,) and values.dtype == np.float64
        np.testing.assert_allclose(chunked.metrics[key], values, rtol=1e-5)
    if settings.learns_inner_lr:  # Meta-SGD's alpha of every client, in client order
        for n in theta:
            assert chunked.inner_lr[n].shape == (5, *theta[n].shape)
            torch.testing.assert_close(chunked.inner_lr[n], whole.inner_lr[n], rtol=1e-5, atol=1e-6)
    else:
        assert chunked.inner_lr is None and whole.inner_lr is None


def test_each_client_starts_from_its_own_row_when_given():
    settings = _settings("fedavg")
    cfg = TrainConfig.from_settings(settings)
    theta = _theta(settings)
    start = {n: torch.stack([p, p + 0.5]) for n, p in theta.items()}
    clients = _clients(2)
    out = train_cohort(
        model_for(settings),
        theta,
        settings.inner_lr,
        clients,
        [np.random.default_rng(0), np.random.default_rng(1)],
        cfg,
        CPU,
        start=start,
    )
    shifted = {n: p + 0.5 for n, p in theta.items()}
    params, _, _ = _reference(settings, shifted, None, *clients[1], np.random.default_rng(1))
    for n in theta:
        torch.testing.assert_close(out.params[n][1], params[n], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("algorithm", "order"),
    [("maml", MetaOrder.SECOND), ("perfedavg-fo", MetaOrder.FIRST),
     ("perfedavg-hf", MetaOrder.HESSIAN_FREE), ("metasgd", MetaOrder.SECOND),
     ("fedavg", None), ("fedavg-ft", None), ("local", None)],
)  # fmt: skip
def test_the_train_config_carries_a_meta_step_exactly_for_the_meta_learners(algorithm, order):
    bounds = {"metasgd-alpha-min": 1e-4, "metasgd-alpha-max": 0.5}
    cfg = TrainConfig.from_settings(parse_settings({"algorithm": algorithm, **bounds}))
    assert (cfg.meta_step.order if cfg.meta_step else None) is order
    # only Meta-SGD learns alpha, so only its config bounds it
    assert cfg.alpha_bounds == ((1e-4, 0.5) if algorithm == "metasgd" else None)
    assert cfg.outer_lr == 0.001 and cfg.batches.batch_size == 5 and cfg.batches.episode is None


def test_the_one_by_one_reference_is_itself_exact_second_order():
    """Guard against a reference that silently went first-order: FO and SO must differ."""
    s_so, s_fo = _settings("maml"), _settings("perfedavg-fo")
    theta = _theta(s_so)
    x, y = _clients(1)[0]
    so, _, _ = _reference(s_so, theta, 0.1, x, y, np.random.default_rng(0))
    fo, _, _ = _reference(s_fo, theta, 0.1, x, y, np.random.default_rng(0))
    assert s_so.meta_order is MetaOrder.SECOND
    assert any(not torch.allclose(so[n], fo[n], rtol=1e-6, atol=1e-7) for n in theta)


def test_the_hessian_batch_has_its_own_size_and_leaves_d_and_d_prime_alone():
    base, own = _settings("perfedavg-hf"), _settings("perfedavg-hf-hessian-batch")
    base_cfg, own_cfg = TrainConfig.from_settings(base), TrainConfig.from_settings(own)
    x, y = _clients(4)[3]  # 15 points
    a = task_sampler(x, y, base_cfg.batches).meta_batches(np.random.default_rng(0), 3)
    b = task_sampler(x, y, own_cfg.batches).meta_batches(np.random.default_rng(0), 3)
    assert a.hessian[0].shape == (3, 4, 1) and b.hessian[0].shape == (3, 6, 1)
    for got, expected in ((b.support, a.support), (b.query, a.query)):
        np.testing.assert_array_equal(got[0], expected[0])
    # and it changes the meta-gradient (the option is wired through to the cohort)
    theta = _theta(base)
    rngs = lambda: [np.random.default_rng(0)]  # noqa: E731
    ta = train_cohort(model_for(base), theta, 0.1, [(x, y)], rngs(), base_cfg, CPU)
    tb = train_cohort(model_for(own), theta, 0.1, [(x, y)], rngs(), own_cfg, CPU)
    assert any(not torch.allclose(ta.params[n], tb.params[n]) for n in theta)


def test_bounded_metasgd_alpha_stays_in_range_however_far_it_is_pushed():
    settings = _settings("metasgd-bounded", **{"outer-lr": 1.0})
    cfg = TrainConfig.from_settings(settings)
    theta = _theta(settings)
    lr = _alpha(settings, theta)
    out = train_cohort(
        model_for(settings), theta, lr, _clients(3),
        [np.random.default_rng(i) for i in range(3)], cfg, CPU,
    )  # fmt: skip
    assert out.inner_lr is not None
    values = torch.cat([a.flatten() for a in out.inner_lr.values()])
    assert values.min() >= 0.08 and values.max() <= 0.12
    assert values.min() == 0.08 or values.max() == 0.12  # the bound was needed
    unbounded = _settings("metasgd", **{"outer-lr": 1.0})
    unbounded_cfg = TrainConfig.from_settings(unbounded)
    free = train_cohort(
        model_for(unbounded), theta, lr, _clients(3),
        [np.random.default_rng(i) for i in range(3)], unbounded_cfg, CPU,
    )  # fmt: skip
    assert free.inner_lr is not None
    spread = torch.cat([a.flatten() for a in free.inner_lr.values()])
    assert spread.min() < 0.08 or spread.max() > 0.12


def _text_clients(count: int, seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Character-id windows (float32, as common/data/shakespeare.py gives) of different sizes."""
    out = []
    for i in range(count):
        r = np.random.default_rng(200 + i)
        n = 6 + 2 * i
        out.append((r.integers(0, 81, (n, seq_len)).astype(np.float32), r.integers(0, 81, n)))
    return out


@pytest.mark.parametrize("name", ["maml", "perfedavg-hf", "metasgd-bounded", "fedavg"])
def test_char_lstm_cohort_equals_each_client_trained_alone_by_hand(name):
    settings = _settings(
        name, dataset="shakespeare", model="lstm", **{"data-path": "unused",
        "hidden-sizes": "6,5", "shakespeare-seq-len": 4, "local-steps": 2},
    )  # fmt: skip
    cfg = TrainConfig.from_settings(settings)
    theta = _theta(settings)
    lr = _alpha(settings, theta)
    clients = _text_clients(3, 4)
    cohort = train_cohort(
        model_for(settings), theta, lr, clients,
        [np.random.default_rng([4, i]) for i in range(3)], cfg, CPU,
    )  # fmt: skip
    for i, (x, y) in enumerate(clients):
        params, alpha, _ = _reference(settings, theta, lr, x, y, np.random.default_rng([4, i]))
        for n in theta:
            torch.testing.assert_close(cohort.params[n][i], params[n], rtol=1e-4, atol=1e-6)
        if alpha is not None:
            for n in theta:
                torch.testing.assert_close(cohort.inner_lr[n][i], alpha[n], rtol=1e-4, atol=1e-6)


def test_a_cohort_needs_a_client():
    settings = _settings("fedavg")
    cfg = TrainConfig.from_settings(settings)
    with pytest.raises(ValueError, match="train_cohort needs at least one client"):
        train_cohort(model_for(settings), _theta(settings), 0.1, [], [], cfg, CPU)


def test_a_configured_loss_is_the_one_trained_on():
    """fedavg with loss = torch.nn.functional:l1_loss: one SGD step equals
    theta - lr * grad of the mean absolute error on the drawn batch, by autograd."""
    settings = _settings("fedavg", **{"local-steps": 1, "loss": "torch.nn.functional:l1_loss"})
    theta = _theta(settings)
    x, y = _clients(2)[1]
    cfg = TrainConfig.from_settings(settings)
    out = train_cohort(
        model_for(settings), theta, 0.1, [(x, y)], [np.random.default_rng(3)], cfg, CPU
    )
    xs, ys = task_sampler(x, y, cfg.batches).batches(np.random.default_rng(3), 1)
    xb, yb = torch.from_numpy(xs[0]), torch.from_numpy(ys[0])
    leaves = {n: p.clone().requires_grad_(True) for n, p in theta.items()}
    pred = torch.func.functional_call(model_for(settings), leaves, (xb,))
    loss = (pred.reshape(yb.shape) - yb).abs().mean()  # l1_loss, written out
    grads = torch.autograd.grad(loss, list(leaves.values()))
    for (n, p), g in zip(theta.items(), grads, strict=True):
        torch.testing.assert_close(out.params[n][0], p - 0.05 * g, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.metrics["train-loss"], [loss.item()], rtol=1e-5)


@pytest.mark.parametrize("name", ["maml", "perfedavg-hf", "metasgd", "fedavg"])
def test_every_training_tensor_is_made_on_the_device_it_is_given(name):
    """A GPU node's trap without a GPU: with torch's default device set to 'meta', a tensor
    made without naming ``device`` lands on 'meta' and the step fails. Given device='cpu',
    the cohort's params, α and metrics are the same as without the default."""
    settings = _settings(name)
    cfg, theta = TrainConfig.from_settings(settings), _theta(settings)
    lr, clients, model = _alpha(settings, theta), _clients(3), model_for(settings)

    def run():
        rngs = [np.random.default_rng([4, i]) for i in range(3)]
        return train_cohort(model, theta, lr, clients, rngs, cfg, CPU)

    plain = run()
    with torch.device("meta"):
        on_meta_default = run()
    for n in theta:
        assert on_meta_default.params[n].device == CPU
        assert torch.equal(on_meta_default.params[n], plain.params[n])
        if plain.inner_lr is not None:
            assert torch.equal(on_meta_default.inner_lr[n], plain.inner_lr[n])
    for key, values in plain.metrics.items():
        np.testing.assert_array_equal(on_meta_default.metrics[key], values)


def test_the_train_config_reads_each_key_from_the_settings():
    s = _settings("maml", **{"cohort-size": 3, "local-steps": 2, "outer-lr": 0.07})
    cfg = TrainConfig.from_settings(s)
    assert (cfg.cohort_size, cfg.local_steps, cfg.outer_lr) == (3, 2, 0.07)
    assert (cfg.task, cfg.loss, cfg.batches) == (s.task, s.loss, BatchConfig.from_settings(s))


@pytest.mark.parametrize(
    ("name", "kind"), [("maml", "train-second-order"), ("fedavg", "train-sgd")]
)
def test_training_runs_the_cohort_under_vmap_one_probe_per_kind_of_work(name, kind, monkeypatch):
    """The probe records no problem for the MLP under the key naming its kind of work and
    loss: the cohort, from theta or from each client's own row ('local'), ran as one
    batched call, not client by client (slower, same numbers)."""
    monkeypatch.setattr(batching, "_VMAP_PROBLEM", {})
    settings = _settings(name)
    cfg, theta, model = TrainConfig.from_settings(settings), _theta(settings), model_for(settings)
    rows = {n: torch.stack([p, 2 * p, -p]) for n, p in theta.items()}
    for start in (rows, None):
        rngs = [np.random.default_rng(i) for i in range(3)]
        train_cohort(model, theta, settings.inner_lr, _clients(3), rngs, cfg, CPU, start=start)
    assert {batching.probe_key(kind, model, settings.loss): None} == batching._VMAP_PROBLEM
