"""Scores against numbers computed by hand in NumPy (common/scoring.py): the default and a
configured loss, accuracy, padded cohorts, episodic means, the per-task seeds; and the
cohort machinery's contracts (every tensor on the device it is given, vmap actually used,
chunks and groups, no autograd graph kept)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from common import batching
from common.config import Task
from common.data.types import ClientData
from common.plugins import PluginError
from common.scoring import (
    _by_support_shape,
    _chunks,
    _client_result,
    _stack_padded_test,
    _Task,
    _task_seeds,
    evaluate_cohort,
    loss_fn_for,
    personalize_and_score,
    personalize_scores,
    stack_to_device,
    tensors_of,
)

CPU = torch.device("cpu")


def _linear(d_in: int, d_out: int, seed: int = 0) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Linear(d_in, d_out)
    return model, {n: p.detach().clone() for n, p in model.named_parameters()}


def _np(params: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    return params["weight"].double().numpy(), params["bias"].double().numpy()


def _regression_client(seed: int, n_train: int, n_test: int, d_out: int = 1) -> ClientData:
    r = np.random.default_rng(seed)
    x_tr, x_te = r.normal(size=(n_train, 2)), r.normal(size=(n_test, 2))
    w = r.normal(size=(2, d_out))
    y_tr, y_te = x_tr @ w + r.normal(size=(n_train, d_out)), x_te @ w
    return ClientData(*(a.astype(np.float32) for a in (x_tr, y_tr, x_te, y_te)))


def _classification_client(seed: int, n_train: int, n_test: int) -> ClientData:
    r = np.random.default_rng(seed)
    x_tr, x_te = r.normal(size=(n_train, 2)), r.normal(size=(n_test, 2))
    return ClientData(
        x_tr.astype(np.float32), r.integers(0, 3, n_train), x_te.astype(np.float32),
        r.integers(0, 3, n_test),
    )  # fmt: skip


def _cohort(model, params, clients, task, *, steps=(1,), loss="", batch_size=64, **kw):
    return evaluate_cohort(
        model, params, 0.1, clients, [np.random.default_rng([5, i]) for i in range(len(clients))],
        steps=steps, batch_size=batch_size, task=task, device=CPU, loss=loss, **kw,
    )  # fmt: skip


def _cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    top = logits.max(1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(1)) + top[:, 0]
    return float(np.mean(lse - logits[np.arange(len(y)), y]))


def test_default_classification_scores_are_each_client_s_own_cross_entropy_and_accuracy():
    """Three clients of different test sizes in one padded call: each loss and accuracy is
    the client's own, by hand, never the padding's."""
    model, params = _linear(2, 3)
    clients = [_classification_client(s, 8, n) for s, n in ((0, 3), (1, 7), (2, 5))]
    w, b = _np(params)
    for c, got in zip(clients, _cohort(model, params, clients, Task.CLASSIFICATION), strict=True):
        logits = c.x_test.astype(np.float64) @ w.T + b
        assert got.before.loss == pytest.approx(_cross_entropy(logits, c.y_test), rel=1e-5)
        assert got.before.accuracy == pytest.approx(np.mean(logits.argmax(1) == c.y_test))


def test_default_regression_scores_mean_squared_error_over_every_output():
    """Two outputs per example: MSE is the mean over examples and outputs (the per-row mean
    of a [rows, 2] error, not a reshape to one column)."""
    model, params = _linear(2, 2)
    clients = [_regression_client(0, 8, 3, d_out=2), _regression_client(1, 8, 6, d_out=2)]
    w, b = _np(params)
    for c, got in zip(clients, _cohort(model, params, clients, Task.REGRESSION), strict=True):
        err = c.x_test.astype(np.float64) @ w.T + b - c.y_test
        assert got.before.loss == pytest.approx(np.mean(err**2), rel=1e-5)
        assert got.before.accuracy is None


def test_a_configured_loss_adapts_and_scores_by_hand():
    """``loss = torch.nn.functional:l1_loss``: the support batch is the whole train split
    (batch-size above it), so one step is θ - lr * mean(sign(r) x) written out; the scores
    before and after are mean |r| on each client's own test split, padded in the cohort."""
    model, params = _linear(2, 1)
    clients = [_regression_client(0, 6, 3), _regression_client(1, 6, 8)]
    loss = "torch.nn.functional:l1_loss"
    got = _cohort(model, params, clients, Task.REGRESSION, loss=loss)
    w, b = _np(params)
    for c, g in zip(clients, got, strict=True):
        x_tr, x_te = c.x_train.astype(np.float64), c.x_test.astype(np.float64)
        sign = np.sign(x_tr @ w.T + b - c.y_train)
        w1, b1 = w - 0.1 * (sign * x_tr).mean(0), b - 0.1 * sign.mean(0)
        assert g.before.loss == pytest.approx(np.abs(x_te @ w.T + b - c.y_test).mean(), rel=1e-5)
        assert g.after.loss == pytest.approx(np.abs(x_te @ w1.T + b1 - c.y_test).mean(), rel=1e-5)
        np.testing.assert_allclose(g.params["weight"].numpy(), w1, rtol=1e-5)
        np.testing.assert_allclose(g.params["bias"].numpy(), b1, rtol=1e-5)
    # one client alone, through personalize_and_score, is scored the same way
    alone = personalize_and_score(
        model, params, 0.1, clients[1], steps=1, batch_size=64, task=Task.REGRESSION,
        rng=np.random.default_rng([5, 1]), device=CPU, loss=loss,
    )  # fmt: skip
    assert alone.after.loss == pytest.approx(got[1].after.loss, rel=1e-6)


@pytest.mark.filterwarnings("ignore:There is a performance drop")  # vmap over a torch op
def test_a_configured_classification_loss_scores_by_hand():
    """``multi_margin_loss``: sum over wrong classes of max(0, 1 - o_y + o_i), over C."""
    model, params = _linear(2, 3)
    clients = [_classification_client(3, 8, 4), _classification_client(4, 8, 9)]
    got = _cohort(
        model, params, clients, Task.CLASSIFICATION, loss="torch.nn.functional:multi_margin_loss"
    )
    w, b = _np(params)
    for c, g in zip(clients, got, strict=True):
        o = c.x_test.astype(np.float64) @ w.T + b
        margins = np.maximum(0.0, 1.0 - o[np.arange(len(o)), c.y_test][:, None] + o)
        margins[np.arange(len(o)), c.y_test] = 0.0
        assert g.before.loss == pytest.approx(np.mean(margins.sum(1) / 3), rel=1e-5)
        assert g.before.accuracy == pytest.approx(np.mean(o.argmax(1) == c.y_test))


def test_a_loss_that_cannot_be_imported_is_named_by_its_config_key():
    with pytest.raises(PluginError, match=r"^config key 'loss' = 'no_such_module_x:l1'"):
        loss_fn_for(Task.REGRESSION, "no_such_module_x:l1")


def test_the_losses_default_to_mse_and_cross_entropy():
    pred, target = torch.tensor([1.0, 2.0, 4.0]), torch.tensor([[1.0], [0.0], [1.0]])
    assert loss_fn_for(Task.REGRESSION)(pred, target).item() == pytest.approx((0 + 4 + 9) / 3)
    logits, labels = torch.tensor([[0.0, np.log(3.0)]]), torch.tensor([1])
    assert loss_fn_for(Task.CLASSIFICATION)(logits, labels).item() == pytest.approx(-np.log(3 / 4))
    # personalize_scores without a loss uses the task's own: MSE of theta on (x, y)
    model, params = _linear(1, 1)
    x, y = torch.tensor([[1.0], [2.0]]), torch.tensor([[0.0], [1.0]])
    losses, _, _ = personalize_scores(
        model, params, 0.1, (x[None], y[None]), (x, y, torch.ones(2)), steps=(0,),
        task=Task.REGRESSION,
    )  # fmt: skip
    w, b = params["weight"].item(), params["bias"].item()
    expected = ((w * 1 + b - 0) ** 2 + (w * 2 + b - 1) ** 2) / 2
    assert losses[0].item() == pytest.approx(expected, rel=1e-6)


def test_an_episodic_client_reports_the_mean_of_its_episodes_at_each_step_count():
    losses = np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 9.0]])
    accuracies = np.array([[0.1, 0.2], [0.3, 0.5], [0.9, 0.9]])
    adapted = [{"w": torch.tensor(float(i))} for i in range(3)]
    two = _client_result([0, 1], losses, accuracies, adapted, (0, 5), Task.CLASSIFICATION)
    assert (two.before.loss, two.after.loss) == (2.0, 3.0)
    assert two.before.accuracy == pytest.approx(0.2) and two.after.accuracy == pytest.approx(0.35)
    assert two.params["w"].item() == 1.0  # the last episode's params
    one = _client_result([2], losses, accuracies, adapted, (0, 5), Task.REGRESSION)
    assert (one.before.loss, one.after.loss) == (5.0, 9.0)
    assert one.before.accuracy is None and one.after.accuracy is None  # regression


def test_each_task_of_a_client_gets_its_own_seed_from_the_client_s_seed_and_its_index():
    empty = (np.zeros((1, 1, 1)), np.zeros((1, 1)))
    tasks = [_Task(c, empty, empty) for c in (0, 1, 0, 0)]
    seeds = _task_seeds(tasks, [11, 22])

    def by_hand(client_seed: int, j: int) -> int:
        word = np.random.SeedSequence([client_seed, j]).generate_state(1, np.uint64)[0]
        return int(word) // 2  # a non-negative int64 for torch.manual_seed

    assert seeds == [by_hand(11, 0), by_hand(22, 0), by_hand(11, 1), by_hand(11, 2)]
    assert all(0 <= s < 2**63 for s in seeds) and len(set(seeds)) == 4


def test_host_batches_become_float32_inputs_and_the_task_s_label_dtype():
    batches = [(np.ones((2, 3)), np.array([0, 2], np.int32)) for _ in range(2)]
    x, y = stack_to_device(batches, Task.CLASSIFICATION, CPU)
    assert (x.dtype, y.dtype, tuple(x.shape), tuple(y.shape)) == (
        torch.float32, torch.int64, (2, 2, 3), (2, 2),
    )  # fmt: skip
    _, y = stack_to_device([(np.ones((2, 3)), np.ones((2, 1)))], Task.REGRESSION, CPU)
    assert y.dtype == torch.float32


def test_test_splits_are_zero_padded_with_a_float32_mask_of_the_real_rows():
    # int32 labels (as a user's loader may give) become the int64 cross-entropy needs
    labels = np.array([1, 2], np.int32), np.array([0, 1, 1], np.int32)
    short = _Task(0, (np.zeros(0), np.zeros(0)), (np.ones((2, 2)), labels[0]))
    long = _Task(1, (np.zeros(0), np.zeros(0)), (2 * np.ones((3, 2)), labels[1]))
    x, y, mask = _stack_padded_test([short, long], Task.CLASSIFICATION, CPU)
    assert mask.dtype == torch.float32 and x.dtype == torch.float32 and y.dtype == torch.int64
    assert mask.tolist() == [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]]
    assert y.tolist() == [[1, 2, 0], [0, 1, 1]]
    assert x[0, 2].tolist() == [0.0, 0.0] and x[1, 2].tolist() == [2.0, 2.0]


def test_tasks_group_by_support_shape_ordered_by_test_size_and_chunk_in_order():
    def task(n_support: int, n_test: int) -> _Task:
        return _Task(0, (np.zeros((1, n_support, 2)), np.zeros((1, n_support))),
                     (np.zeros((n_test, 2)), np.zeros(n_test)))  # fmt: skip

    tasks = [task(4, 6), task(2, 1), task(4, 3), task(4, 9)]
    assert _by_support_shape(tasks) == [[2, 0, 3], [1]]
    groups = [[2, 0, 3], [1]]
    assert _chunks(groups, 2) == [[2, 0], [3], [1]]
    assert _chunks(groups, 1) == [[2], [0], [3], [1]]
    assert _chunks(groups, 0) == groups


def test_a_cohort_of_different_support_sizes_scores_each_client_as_alone():
    """A client with fewer train examples than batch-size adapts on a smaller batch: its
    task is stacked apart from the others, and every score is the client's own."""
    model, params = _linear(2, 1)
    clients = [_regression_client(s, n, t) for s, n, t in ((0, 12, 4), (1, 3, 5), (2, 12, 2))]
    together = _cohort(model, params, clients, Task.REGRESSION, steps=(2,), batch_size=4)
    for i, c in enumerate(clients):
        alone = evaluate_cohort(
            model, params, 0.1, [c], [np.random.default_rng([5, i])], steps=(2,), batch_size=4,
            task=Task.REGRESSION, device=CPU,
        )[0]  # fmt: skip
        assert together[i].after.loss == pytest.approx(alone.after.loss, rel=1e-5)


def test_scoring_a_plain_model_runs_the_cohort_under_vmap(monkeypatch):
    """The probe records no problem for an MLP's scoring under its key: the cohort ran as
    one batched call, not client by client (slower, same numbers)."""
    monkeypatch.setattr(batching, "_VMAP_PROBLEM", {})
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 1))
    params = {n: p.detach() for n, p in model.named_parameters()}
    clients = [_regression_client(s, 8, 3) for s in range(3)]
    # each client from its own row of a stack ('local'): the rows are vmapped over too
    rows = {n: torch.stack([p, 2 * p, -p]) for n, p in params.items()}
    _cohort(model, rows, clients, Task.REGRESSION, batch_size=4, per_client_params=True)
    _cohort(model, params, clients, Task.REGRESSION, batch_size=4)
    probed = batching._VMAP_PROBLEM
    assert list(probed) == [batching.probe_key("personalize", model, "")]
    assert probed[batching.probe_key("personalize", model, "")] is None


def test_no_autograd_graph_reaches_the_adapted_params_or_the_scores():
    """theta and a learned alpha that require grad (as in training) are detached first:
    the adapted params keep no graph back to them."""
    model, params = _linear(2, 1)
    theta = {n: p.clone().requires_grad_(True) for n, p in params.items()}
    alpha = {n: torch.full_like(p, 0.05).requires_grad_(True) for n, p in params.items()}
    out = evaluate_cohort(
        model, theta, alpha, [_regression_client(0, 8, 3)], [np.random.default_rng(0)],
        steps=(2,), batch_size=4, task=Task.REGRESSION, device=CPU,
    )[0]  # fmt: skip
    for p in out.params.values():
        assert not p.requires_grad and p.grad_fn is None


def test_every_tensor_is_made_on_the_device_it_is_given():
    """A GPU node's trap without a GPU: with torch's default device set to 'meta', a tensor
    made without naming ``device`` lands on 'meta' and cannot be scored. Given
    device='cpu', every score, param and tensor must be the same as without the default."""
    model, params = _linear(2, 3)
    clients = [_classification_client(s, 8, 3 + s) for s in range(3)]
    rows = {n: torch.stack([p, 2 * p, -p]) for n, p in params.items()}

    def everything():
        return (
            _cohort(model, params, clients, Task.CLASSIFICATION, steps=(1, 2), cohort_size=2),
            _cohort(model, rows, clients, Task.CLASSIFICATION, per_client_params=True),
            personalize_and_score(
                model,
                params,
                0.1,
                clients[0],
                steps=1,
                batch_size=4,
                task=Task.CLASSIFICATION,
                rng=np.random.default_rng(0),
                device=CPU,
            ),  # fmt: skip
            tensors_of(clients[1], Task.CLASSIFICATION, CPU),
        )

    plain = everything()
    with torch.device("meta"):
        on_meta_default = everything()
    for a, b in zip(plain[0] + plain[1] + [plain[2]], on_meta_default[0] + on_meta_default[1]
                    + [on_meta_default[2]], strict=True):  # fmt: skip
        assert a.by_steps == b.by_steps
        assert all(p.device == CPU and torch.equal(p, b.params[n]) for n, p in a.params.items())
    assert [t.device for t in on_meta_default[3]] == [CPU] * 4
    assert all(torch.equal(a, b) for a, b in zip(plain[3], on_meta_default[3], strict=True))
