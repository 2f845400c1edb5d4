"""The ONNX export beside TorchScript: onnxruntime gives the PyTorch model's outputs, for the
MLP, the conv net (BatchNorm on batch statistics) and the char-LSTM, at any batch size.
Skipped where the optional `onnx` extra (onnx, onnxruntime) is not installed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from client.model_store import ONNX_FILE, ModelStoreError, export_onnx
from client.personalize import main
from common.config import parse_settings, settings_to_run_config
from common.models import model_for
from server.app import initial_state
from server.run_folder import RunFolder

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

MODELS = {
    "mlp": ({"dataset": "digits", "partition": "dirichlet", "hidden-sizes": "16,16"}, (1, 8, 8)),
    "cnn": (
        {"dataset": "digits", "partition": "dirichlet", "model": "cnn", "hidden-sizes": "8,8"},
        (1, 8, 8),
    ),
    "lstm": (
        {"dataset": "shakespeare", "data-path": "unused", "model": "lstm", "hidden-sizes": "16",
         "shakespeare-seq-len": 12},
        (12,),
    ),
}  # fmt: skip


def _inputs(name: str, shape: tuple[int, ...], batch: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if name == "lstm":  # character ids
        return torch.randint(0, 80, (batch, *shape), generator=gen)
    return torch.rand((batch, *shape), generator=gen)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_onnxruntime_reproduces_the_model_at_other_batch_sizes(name: str, tmp_path: Path):
    config, shape = MODELS[name]
    model = model_for(parse_settings(config))
    torch.manual_seed(1)
    params = {k: v + 0.1 * torch.randn_like(v) for k, v in model.state_dict().items()}
    path = export_onnx(model, params, _inputs(name, shape, 8, 0), tmp_path / ONNX_FILE)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    reference = model_for(parse_settings(config)).eval()
    reference.load_state_dict(params)
    for batch in (1, 3, 20):
        x = _inputs(name, shape, batch, seed=batch)
        with torch.no_grad():
            expected = reference(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_an_export_that_disagrees_is_refused(tmp_path: Path, monkeypatch):
    config, shape = MODELS["mlp"]
    model = model_for(parse_settings(config))
    params = model.state_dict()
    real_run = ort.InferenceSession.run
    monkeypatch.setattr(
        ort.InferenceSession, "run", lambda self, *a, **k: [real_run(self, *a, **k)[0] + 1.0]
    )
    with pytest.raises(ModelStoreError, match="does not reproduce the model"):
        export_onnx(model, params, _inputs("mlp", shape, 4, 0), tmp_path / ONNX_FILE)


def test_personalize_writes_the_onnx_file_on_request(tmp_path: Path, capsys):
    settings = parse_settings(MODELS["cnn"][0])
    model_path = RunFolder(tmp_path / "run").save_model(
        initial_state(settings), settings_to_run_config(settings)
    )
    out = tmp_path / "out"
    args = ["--model", str(model_path), "--partition-id", "1", "--num-partitions", "3"]
    assert main([*args, "--steps", "2", "--onnx", "--out", str(out)]) == 0
    assert str(out / ONNX_FILE) in capsys.readouterr().out
    assert (out / ONNX_FILE).is_file()
    assert json.loads((out / "personalized.json").read_text())["partition-id"] == 1


def test_a_node_with_model_onnx_keeps_an_export_that_matches_its_kept_model(tmp_path: Path):
    from client.app import app as client_app
    from server.app import run_federation
    from simulations.loop import LoopGrid

    config = {"num-rounds": 1, "local-steps": 1, "hidden-sizes": "8", "eval-steps": 2,
              "fraction-evaluate": 1.0, "run-dir": str(tmp_path / "run")}  # fmt: skip
    grid = LoopGrid(client_app, config, 2)
    for node_id, context in grid.contexts.items():
        context.node_config |= {"model-dir": str(tmp_path / f"n{node_id}"), "model-onnx": True}
    run_federation(parse_settings(config), grid)
    settings = parse_settings(config)
    for node_id in grid.contexts:
        folder = tmp_path / f"n{node_id}"
        model = model_for(settings).eval()
        model.load_state_dict(torch.load(folder / "personalized.pt", weights_only=True))
        x = torch.linspace(-5, 5, 11).reshape(-1, 1)
        session = ort.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])
        with torch.no_grad():
            expected = model(x).numpy()
        np.testing.assert_allclose(session.run(None, {"input": x.numpy()})[0], expected, rtol=1e-5)


def test_model_onnx_must_be_a_boolean():
    from flwr.app import Context, RecordDict

    from client.app import _keeps_onnx

    context = Context(1, 1, {"model-onnx": "yes"}, RecordDict(), {})
    with pytest.raises(ValueError, match="model-onnx='yes' is not a boolean"):
        _keeps_onnx(context)
