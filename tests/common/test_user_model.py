"""A user's own model and loss by import path (issue 16): checked before round 1, trained
by the same code as the built-ins, and run client by client where vmap cannot batch it."""

from __future__ import annotations

import json
import logging
import sys

import numpy as np
import pytest
import torch
from torch import nn

from client.train import train_cohort
from common.batching import probe_key, vmap_problem
from common.config import BUILT_IN_MODELS, ConfigError, Task, parse_settings
from common.data.types import ClientData
from common.models import BUILT_IN, ModelError, model_for, without_running_stats
from common.plugins import PluginError
from common.scoring import evaluate_cohort
from simulations.loop import run_in_loop
from tests.user_code import write_user_module

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """The name of a user's module in a folder outside the project, importable here."""
    folder = tmp_path_factory.mktemp("user-project")
    name = write_user_module(folder)
    sys.path.insert(0, str(folder))
    yield name
    sys.path.remove(str(folder))
    sys.modules.pop(name, None)


def _settings(**config):
    return parse_settings({"hidden-sizes": "8", "local-steps": 2, "batch-size": 4} | config)


def _clients(count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for i in range(count):
        r = np.random.default_rng(100 + i)
        x = r.uniform(-5, 5, (8 + 2 * i, 1)).astype(np.float32)
        out.append((x, (np.sin(x + i) * (1 + i)).astype(np.float32)))
    return out


def _rngs(count: int, offset: int = 0) -> list[np.random.Generator]:
    return [np.random.default_rng([7, offset + i]) for i in range(count)]


def _theta(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---------------------------------------------------------------- checks before round 1


@pytest.mark.parametrize(
    ("model", "config", "says"),
    [
        ("no_such_package_q7.models:net", {}, ["'no_such_package_q7.models'", "PYTHONPATH"]),
        ("{user}:nope", {}, ["has no attribute 'nope'", "small_mlp"]),
        ("{user}:NOT_CALLABLE", {}, ["is a int, not a function"]),
        ("{user}:not_a_module", {}, ["returned a dict, not an nn.Module"]),
        ("{user}:batchnorm", {}, ["buffers", "track_running_stats=False", "without_running_stats"]),
        ("{user}:wrong_outputs", {"dataset": "synthetic"}, ["shape [2, 13]", "[batch, 10]"]),
        ("{user}:small_mlp", {"model-args": '{"hiden": 3}'}, ["TypeError", "hiden", "model-args"]),
        ("{user}:small_mlp", {"loss": "{user}:per_sample_loss"}, ["'loss'", "scalar tensor"]),
    ],
)  # fmt: skip
def test_a_model_that_cannot_train_is_refused_with_one_line_naming_the_fix(
    user, model, config, says
):
    config = {k: v.replace("{user}", user) for k, v in config.items()}
    settings = _settings(model=model.replace("{user}", user), **config)
    with pytest.raises(ConfigError) as err:
        model_for(settings)
    message = str(err.value)
    assert "\n" not in message and message.startswith("config key '")
    for part in says:
        assert part in message


def test_a_bad_import_path_is_refused_when_the_config_is_read():
    with pytest.raises(ConfigError, match="package.module:function"):
        parse_settings({"model": "my_models.make_net"})
    with pytest.raises(ConfigError, match="JSON object"):
        parse_settings({"model-args": "hidden=3"})


def test_without_running_stats_turns_batchnorm_into_batch_statistics(user):
    model = model_for(_settings(model=f"{user}:batchnorm_fixed"))
    assert list(model.named_buffers()) == []
    bn = nn.BatchNorm1d(4)
    assert without_running_stats(bn) is bn and not bn.track_running_stats
    x = torch.randn(16, 4) * 3 + 2
    expected = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + bn.eps)
    torch.testing.assert_close(bn(x), expected * bn.weight + bn.bias)
    bn.eval()  # batch statistics in eval mode too: nothing was kept to use instead
    torch.testing.assert_close(bn(x), expected * bn.weight + bn.bias)


def test_plugin_errors_are_config_errors_for_the_cli():
    assert issubclass(PluginError, ConfigError) and issubclass(ModelError, ConfigError)


# ------------------------------------------------------------ built-ins: the same door


def test_built_in_names_are_the_factory_table_the_config_accepts():
    assert tuple(BUILT_IN) == BUILT_IN_MODELS


@pytest.mark.parametrize(
    ("by_name", "by_path"),
    [
        ({"model": "mlp", "hidden-sizes": "40,40"}, {"model": "common.models:mlp"}),
        (
            {"model": "mlp", "hidden-sizes": "32,16", "activation": "elu"},
            {"model": "common.models:mlp",
             "model-args": '{"hidden": [32, 16], "activation": "elu"}'},
        ),
        ({"model": "logreg", "dataset": "synthetic"},
         {"model": "common.models:logreg", "dataset": "synthetic"}),
        (
            {"model": "cnn", "dataset": "digits", "partition": "dirichlet", "hidden-sizes": "4,4"},
            {"model": "common.models:cnn", "dataset": "digits", "partition": "dirichlet",
             "model-args": '{"hidden": [4, 4]}'},
        ),
    ],
)  # fmt: skip
def test_a_built_in_model_by_import_path_is_the_same_model_as_by_name(by_name, by_path):
    a = model_for(parse_settings(by_name), seed=3)
    b = model_for(parse_settings(by_path), seed=3)
    assert type(a) is type(b)
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_model_args_override_a_built_in_names_settings():
    model = model_for(parse_settings({"model": "mlp", "model-args": '{"hidden": [5]}'}))
    assert [p.shape[0] for n, p in model.named_parameters() if n.endswith("weight")] == [5, 1]


# ------------------------------------------------------------------------ task and loss


def test_task_follows_the_data_unless_set():
    assert parse_settings({}).task is Task.REGRESSION  # sinusoid
    assert parse_settings({"dataset": "synthetic"}).task is Task.CLASSIFICATION
    assert parse_settings({"task": "regression"}).task is Task.REGRESSION
    with pytest.raises(ConfigError, match="'auto' or 'classification' for dataset 'digits'"):
        parse_settings({"dataset": "digits", "partition": "dirichlet", "task": "regression"})


def test_a_users_loss_drives_training_double_loss_is_double_step(user):
    """SGD on 2 L with step beta is SGD on L with step 2 beta: the loss reaches the gradient."""
    clients = _clients(3)
    base = _settings(algorithm="fedavg", **{"outer-lr": 0.02})
    doubled = _settings(algorithm="fedavg", **{"outer-lr": 0.01, "loss": f"{user}:double_mse"})
    model = model_for(base, seed=0)
    theta = _theta(model)
    a = train_cohort(model, theta, 0.1, clients, _rngs(3), base, CPU, meta=False)
    b = train_cohort(model, theta, 0.1, clients, _rngs(3), doubled, CPU, meta=False)
    for name in theta:
        torch.testing.assert_close(a.params[name], b.params[name], rtol=1e-5, atol=1e-6)


def test_a_users_loss_is_what_evaluation_reports():
    """MSE by import path scores as the built-in MSE; per-example, so padding is masked."""
    clients = [_client_data(x, y) for x, y in _clients(3)]
    s = _settings()
    model = model_for(s, seed=0)

    def scores(loss: str) -> list[float]:
        results = evaluate_cohort(
            model, _theta(model), 0.1, clients, _rngs(3), steps=(2,), batch_size=4,
            task=s.task, device=CPU, loss=loss,
        )  # fmt: skip
        return [r.by_steps[k].loss for r in results for k in (0, 2)]

    np.testing.assert_allclose(scores("torch.nn.functional:mse_loss"), scores(""), rtol=1e-5)


def _client_data(x: np.ndarray, y: np.ndarray) -> ClientData:
    cut = len(x) // 2
    return ClientData(x[:cut], y[:cut], x[cut:], y[cut:])


def test_a_regression_output_of_shape_batch_trains_like_batch_by_one(user):
    """[batch] outputs take the target's shape: no silent [batch, batch] broadcast."""
    flat = model_for(_settings(model=f"{user}:flat_output"), seed=0)
    column = nn.Sequential(*list(flat)[:-1])  # the same layers without the final Flatten(0)
    theta = _theta(flat)
    s = _settings(algorithm="maml")
    a = train_cohort(flat, theta, 0.1, _clients(2), _rngs(2), s, CPU, meta=True)
    b = train_cohort(column, theta, 0.1, _clients(2), _rngs(2), s, CPU, meta=True)
    for name in theta:
        torch.testing.assert_close(a.params[name], b.params[name])


# ------------------------------------------------------- models vmap cannot batch


class Plain(nn.Module):
    def __init__(self, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Synced(Plain):
    """The same math, plus a host sync (``.item()``) that vmap refuses."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum().item() > 1e30:  # data-dependent control flow: never true here
            raise AssertionError
        return self.net(x)


def _pair(dropout: float = 0.0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    batched = Plain(dropout)
    looped = Synced(dropout)
    looped.load_state_dict(batched.state_dict())
    return batched, looped


@pytest.mark.parametrize("algorithm", ["maml", "perfedavg-hf", "metasgd", "fedavg"])
def test_a_model_both_paths_run_gives_equal_theta_on_both(algorithm):
    batched, looped = _pair()
    s = _settings(algorithm=algorithm)
    theta = _theta(batched)
    meta = s.meta_order is not None
    lr = {n: torch.full_like(p, 0.1) for n, p in theta.items()} if s.learns_inner_lr else 0.1
    a = train_cohort(batched, theta, lr, _clients(4), _rngs(4), s, CPU, meta=meta)
    b = train_cohort(looped, theta, lr, _clients(4), _rngs(4), s, CPU, meta=meta)
    kind = f"train-{s.meta_order.value}" if meta else "train-sgd"
    assert vmap_problem(probe_key(kind, batched, "")) is None
    assert vmap_problem(probe_key(kind, looped, "")) is not None
    for name in theta:
        torch.testing.assert_close(a.params[name], b.params[name], rtol=1e-6, atol=1e-7)
    for key in a.metrics:
        np.testing.assert_allclose(a.metrics[key], b.metrics[key], rtol=1e-6, atol=1e-7)


def test_personalisation_gives_equal_scores_on_both_paths():
    batched, looped = _pair()
    clients = [_client_data(x, y) for x, y in _clients(3)]

    def run(model: nn.Module) -> list[tuple]:
        results = evaluate_cohort(
            model, _theta(batched), 0.1, clients, _rngs(3), steps=(1, 3), batch_size=4,
            task=Task.REGRESSION, device=CPU,
        )  # fmt: skip
        return [(r.by_steps[0].loss, r.by_steps[1].loss, r.by_steps[3].loss) for r in results]

    np.testing.assert_allclose(run(batched), run(looped), rtol=1e-6)


def test_the_fallback_warns_once_naming_the_reason(caplog):
    class OneOff(Synced):  # a class of its own: this process has not probed it yet
        pass

    model = OneOff()
    s = _settings(algorithm="maml")
    with caplog.at_level(logging.WARNING, logger="flwr"):
        for _ in range(3):
            train_cohort(model, _theta(model), 0.1, _clients(2), _rngs(2), s, CPU, meta=True)
    said = [r.getMessage() for r in caplog.records if "torch.func.vmap" in r.getMessage()]
    assert len(said) == 1 and "item" in said[0] and "one after another" in said[0]


def test_a_gru_trains_client_by_client_and_each_client_as_if_alone(user):
    s = _settings(model=f"{user}:gru", algorithm="maml")
    model = model_for(s, seed=0)
    theta = _theta(model)
    cohort = train_cohort(model, theta, 0.05, _clients(3), _rngs(3), s, CPU, meta=True)
    assert "GRU" in type(model).__name__
    assert vmap_problem(probe_key("train-second-order", model, "")) is not None
    for j in range(3):
        alone = train_cohort(
            model, theta, 0.05, _clients(3)[j : j + 1], _rngs(3)[j : j + 1], s, CPU, meta=True
        )
        for name in theta:
            assert torch.equal(cohort.params[name][j], alone.params[name][0])
        # trained (sinusoid inputs are sequences of length 1, so the GRU's h->h weights,
        # which only ever see h0 = 0, keep their values)
        assert not torch.equal(cohort.params["head.weight"][j], theta["head.weight"])


@pytest.mark.parametrize("model_class", [Plain, Synced], ids=["vmap", "loop"])
def test_dropout_draws_from_the_clients_seeds_and_leaves_torchs_generator_alone(model_class):
    torch.manual_seed(0)
    model = model_class(dropout=0.5)
    theta = _theta(model)
    s = _settings(algorithm="fedavg")
    state = torch.get_rng_state()
    a = train_cohort(model, theta, 0.1, _clients(3), _rngs(3), s, CPU, meta=False)
    b = train_cohort(model, theta, 0.1, _clients(3), _rngs(3), s, CPU, meta=False)
    assert torch.equal(torch.get_rng_state(), state)
    other = train_cohort(model, theta, 0.1, _clients(3), _rngs(3, offset=50), s, CPU, meta=False)
    for name in theta:
        assert torch.equal(a.params[name], b.params[name])  # reproducible
        assert not torch.equal(a.params[name][0], a.params[name][1])
    # other seeds, other dropout masks (and batches)
    assert not torch.equal(a.params["net.0.weight"], other.params["net.0.weight"])


def test_in_the_loop_a_clients_dropout_does_not_depend_on_its_cohort():
    torch.manual_seed(0)
    model = Synced(dropout=0.5)
    theta = _theta(model)
    s = _settings(algorithm="fedavg")
    clients, rngs = _clients(3), _rngs(3)
    with_b = train_cohort(model, theta, 0.1, clients[:2], rngs[:2], s, CPU, meta=False)
    rngs = _rngs(3)
    with_c = train_cohort(
        model, theta, 0.1, [clients[0], clients[2]], [rngs[0], rngs[2]], s, CPU, meta=False
    )
    for name in theta:
        assert torch.equal(with_b.params[name][0], with_c.params[name][0])


# ------------------------------------------------------------------- end to end (loop)

FAST = {"num-rounds": 2, "local-steps": 2, "fraction-train": 0.5, "fraction-evaluate": 0.5}


def test_a_factory_outside_the_project_trains_end_to_end_in_the_loop_engine(user, tmp_path):
    config = FAST | {
        "model": f"{user}:small_mlp",
        "model-args": json.dumps({"hidden": 12}),
        "new-clients": 3,
        "run-dir": str(tmp_path),
    }
    summary = run_in_loop(config, num_nodes=4)
    assert np.isfinite(summary["mse-after-mean"]) and np.isfinite(summary["new-mse-k10-mean"])
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["theta"]["1.weight"].shape == (12, 1)  # the user's layers, the user's args
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["accepted"] == 2 for r in rows)


def test_a_gru_trains_through_the_fallback_end_to_end_in_the_loop_engine(user, tmp_path):
    config = FAST | {"model": f"{user}:gru", "algorithm": "maml", "run-dir": str(tmp_path)}
    summary = run_in_loop(config, num_nodes=4)
    assert np.isfinite(summary["mse-after-mean"])
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(r["accepted"] == 2 for r in rows)
    first = model_for(parse_settings(config), seed=0).state_dict()
    trained = torch.load(tmp_path / "model.pt", weights_only=True)["theta"]
    assert set(trained) == set(first) and any(not torch.equal(trained[n], first[n]) for n in first)


def test_model_args_travel_through_flowers_run_config_unchanged():
    """``flwr run --run-config`` and ``--node-config`` carry the JSON as it was written."""
    from flwr.common.config import parse_config_args

    from common.processes import run_config_arg

    config = {"model-args": '{"hidden": [8, 4], "name": "a b"}', "model": "m.n:f", "seed": 3}
    assert parse_config_args([run_config_arg(config)]) == config
    with pytest.raises(ValueError, match="both quote kinds"):
        run_config_arg({"model-args": """{"name": "it's"}"""})
