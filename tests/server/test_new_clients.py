"""New clients: data no training client holds, scored and summarised by the server."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import parse_settings
from common.data.registry import load_client_data, load_new_client_data
from simulations.loop import run_in_loop


def _require(data_dir, relative: str):
    path = data_dir / relative
    if not path.exists():
        pytest.skip(f"real data not found at '{path}' (set FEDMETA_DATA_DIR)")
    return path


def _rows(data) -> set[bytes]:
    return {row.tobytes() for row in np.concatenate([data.x_train, data.x_test])}


def _disjoint(settings, num_partitions: int) -> None:
    train = set().union(
        *(_rows(load_client_data(settings, i, num_partitions)) for i in range(num_partitions))
    )
    for j in range(settings.new_clients):
        new = load_new_client_data(settings, j)
        assert new.num_train > 0 and new.num_test > 0
        assert not _rows(new) & train, f"new client {j} shares samples with a training client"


@pytest.mark.parametrize("partition", ["dirichlet", "pathological"])
def test_digits_new_clients_never_overlap_training_clients(partition):
    # digits has a few duplicate images; compare positions through a unique marker instead
    s = parse_settings({"dataset": "digits", "partition": partition, "new-clients": 3})
    from common.data import registry

    split = registry._Split.from_settings(s, 8)
    _, train = registry._client_indices(split)
    _, new = registry._new_client_indices(split)
    train_pos = set(np.concatenate([np.concatenate(h) for h in train]).tolist())
    new_pos = np.concatenate([np.concatenate(h) for h in new]).tolist()
    assert len(new) == 3 and new_pos and not train_pos & set(new_pos)


def test_synthetic_and_sinusoid_new_clients_are_a_separate_stream():
    for config in ({"dataset": "synthetic"}, {"dataset": "sinusoid"}):
        _disjoint(parse_settings(config | {"new-clients": 3}), 5)


def test_femnist_new_clients_are_writers_after_the_trained_ones(data_dir):
    femnist_npz = _require(data_dir, "femnist/femnist105.npz")
    s = parse_settings({"dataset": "femnist", "data-path": str(femnist_npz), "new-clients": 5})
    trained = {load_client_data(s, i, 100).client_id for i in range(100)}
    new = {load_new_client_data(s, j).client_id for j in range(5)}
    assert len(new) == 5 and not trained & new
    with pytest.raises(ValueError, match="writers"):
        load_client_data(s, 0, 101)  # 101 + 5 > 105 writers


def test_omniglot_new_clients_come_from_the_evaluation_characters(data_dir):
    omniglot_dir = _require(data_dir, "omniglot")
    s = parse_settings(
        {"dataset": "omniglot", "data-path": str(omniglot_dir), "new-clients": 2, "model": "cnn"}
    )
    train = load_client_data(s, 0, 30)
    new = load_new_client_data(s, 0)
    assert "background" in train.client_id and "evaluation" in new.client_id
    assert train.x_train.shape[1:] == (1, 28, 28) and new.spec.n_way == 5
    assert set(np.unique(train.y_test)) == set(np.unique(train.y_train))  # same characters


def test_new_client_metrics_in_the_summary_on_digits(tmp_path):
    config = {
        "dataset": "digits",
        "partition": "dirichlet",
        "hidden-sizes": "16",
        "num-rounds": 1,
        "local-steps": 2,
        "batch-size": 8,
        "fraction-train": 0.5,
        "fraction-evaluate": 0.5,
        "new-clients": 3,
        "new-client-steps": "1,5",
        "algorithm": "perfedavg-fo",
        "run-dir": str(tmp_path),
    }
    summary = run_in_loop(config, num_nodes=6)
    assert summary["new-clients"] == 3
    for k in (0, 1, 5):
        for stat in ("mean", "std", "worst10"):
            assert 0.0 <= summary[f"new-acc-k{k}-{stat}"] <= 1.0
    assert "new-mse-k1-mean" not in summary
    # k = 0 is theta as saved, unadapted: each new client's share of test rows whose
    # largest logit is the label, counted here by hand and averaged over the clients.
    import torch
    from torch.func import functional_call

    from common.data.registry import load_new_client_data
    from common.models import model_for

    s = parse_settings(config)
    theta = torch.load(tmp_path / "model.pt", weights_only=True)["theta"]
    shares = []
    for index in range(3):
        data = load_new_client_data(s, index)
        logits = functional_call(model_for(s), theta, (torch.as_tensor(data.x_test),))
        shares.append(float((logits.argmax(1).numpy() == data.y_test).mean()))
    assert summary["new-acc-k0-mean"] == pytest.approx(np.mean(shares), abs=1e-6)


@pytest.mark.parametrize("dataset", ["sinusoid", "omniglot"])
def test_new_client_scores_are_paired_across_step_counts(dataset, data_dir):
    """One adaptation per new client, scored at every k: the score after 1 step is the one
    a run asking for 1 step only gets (same batches or episodes), and so on for 3."""
    import torch

    from common.models import model_for
    from server.new_clients import evaluate_new_clients

    extra = {}
    if dataset == "omniglot":
        path = _require(data_dir, "omniglot/images_evaluation.npz")
        extra = {"data-path": str(path.parent), "model": "cnn", "hidden-sizes": "4,4",
                 "eval-episodes": 2}  # fmt: skip
    base = {"dataset": dataset, "new-clients": 4, "inner-lr": 0.05, **extra}
    results = {}
    for steps in ("1,3,10", "1", "3"):
        s = parse_settings(base | {"new-client-steps": steps})
        model = model_for(s, seed=0)
        theta = {n: p.detach() for n, p in model.named_parameters()}
        results[steps] = evaluate_new_clients(s, model, theta, s.inner_lr, torch.device("cpu"))
    metric = "mse" if dataset == "sinusoid" else "acc"
    for k in ("1", "3"):
        paired, alone = results["1,3,10"], results[k]
        assert paired[f"new-{metric}-k{k}-mean"] == pytest.approx(alone[f"new-{metric}-k{k}-mean"])
        assert paired[f"new-{metric}-k{k}-std"] == pytest.approx(alone[f"new-{metric}-k{k}-std"])
    loss = "new-mse" if metric == "mse" else "new-loss"
    assert results["1,3,10"][f"{loss}-k1-mean"] != results["1,3,10"][f"{loss}-k10-mean"]
