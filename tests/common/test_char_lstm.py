"""The char-LSTM (Shakespeare) under the meta core: its recurrence is nn.LSTM's, its
second-order meta-gradient matches central finite differences in float64, and a vmapped
cohort of clients gets what each client gets alone, for every order."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from common.config import MetaOrder
from common.meta import adapt, meta_gradient, task_loss
from common.models import CharLSTM, LSTMLayer

VOCAB, T, BATCH = 11, 5, 3


def _model(dtype=torch.float32) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = CharLSTM(VOCAB, (4, 3), embedding=3).to(dtype)
    return model, {n: p.detach().clone() for n, p in model.named_parameters()}


def _batch(seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (BATCH, T), generator=g).to(dtype)  # ids, as the data has
    return x, torch.randint(0, VOCAB, (BATCH,), generator=g)


def test_the_recurrence_is_torchs_lstm():
    torch.manual_seed(1)
    ours = LSTMLayer(3, 4)
    ref = nn.LSTM(3, 4, batch_first=True)
    with torch.no_grad():
        ref.weight_ih_l0.copy_(ours.input_gates.weight)
        ref.bias_ih_l0.copy_(ours.input_gates.bias)
        ref.weight_hh_l0.copy_(ours.hidden_gates.weight)
        ref.bias_hh_l0.zero_()
    x = torch.randn(2, 6, 3)
    expected, _ = ref(x)
    torch.testing.assert_close(ours(x), expected)
    torch.testing.assert_close(ours(x, last_only=True), expected[:, -1])
    # the forget gate starts open (LEAF's forget bias 1), the other gates do not
    assert (ours.input_gates.bias[4:8] >= 0.5).all()


def _meta_objective(model, params, support, query, alpha):
    adapted = adapt(model, params, [support], F.cross_entropy, alpha, 1, create_graph=True)
    return task_loss(model, adapted, query, F.cross_entropy)


def test_second_order_meta_gradient_through_time_matches_finite_differences():
    model, params = _model(torch.float64)
    support, query = _batch(0, torch.float64), _batch(1, torch.float64)
    alpha = 0.5
    g = meta_gradient(
        model, params, support, query, F.cross_entropy, order=MetaOrder.SECOND, inner_lr=alpha
    )
    gen = torch.Generator().manual_seed(3)
    eps = 1e-6
    for _ in range(3):
        v = {n: torch.randn(p.shape, generator=gen, dtype=p.dtype) for n, p in params.items()}
        plus = _meta_objective(model, {n: p + eps * v[n] for n, p in params.items()},
                               support, query, alpha)  # fmt: skip
        minus = _meta_objective(model, {n: p - eps * v[n] for n, p in params.items()},
                                support, query, alpha)  # fmt: skip
        numeric = (plus - minus) / (2 * eps)
        analytic = sum((g.params[n] * v[n]).sum() for n in params)
        assert float(analytic) == pytest.approx(float(numeric), rel=1e-6, abs=1e-9)
    # ... and it is not the first-order gradient: the graph reaches theta through time
    fo = meta_gradient(
        model, params, support, query, F.cross_entropy, order=MetaOrder.FIRST, inner_lr=alpha
    )
    assert any(not torch.allclose(g.params[n], fo.params[n], atol=1e-8) for n in params)


@pytest.mark.parametrize("order", list(MetaOrder))
def test_a_vmapped_cohort_gets_what_each_client_gets_alone(order):
    model, params = _model()
    clients = [(_batch(10 + i), _batch(20 + i), _batch(30 + i)) for i in range(4)]

    def one(support, query, hessian):
        g = meta_gradient(
            model, params, support, query, F.cross_entropy,
            order=order, inner_lr=0.3, hessian_batch=hessian,
        )  # fmt: skip
        return g.params, g.query_loss

    stacked = [tuple(torch.stack([c[j][k] for c in clients]) for k in range(2)) for j in range(3)]
    cohort, losses = vmap(one)(*stacked)
    for i, (s, q, h) in enumerate(clients):
        alone, loss = one(s, q, h)
        assert float(losses[i]) == pytest.approx(float(loss), rel=1e-5)
        for n in params:
            torch.testing.assert_close(cohort[n][i], alone[n], rtol=1e-4, atol=1e-6)


def test_the_model_reads_ids_of_any_dtype_and_predicts_the_next_character():
    model, params = _model()
    x, _ = _batch(0)
    out = functional_call(model, params, (x,))
    assert out.shape == (BATCH, VOCAB)
    torch.testing.assert_close(out, functional_call(model, params, (x.long(),)))
