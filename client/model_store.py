"""A client's personalised model on its own disk, for use on the device without the server.

One folder (a SuperNode's ``model-dir``, or the ``--out`` of ``python -m client.personalize``):

    personalized.pt        the personalised theta as a plain state_dict:
                           ``model.load_state_dict(torch.load(path, weights_only=True))``
    personalized.json      where it came from: round, partition, scores before and after
                           personalising, and the run's settings (enough to rebuild the model)
    personalized.torchscript.pt
                           (``client.personalize`` only) the model with those weights as
                           TorchScript: ``torch.jit.load(path)`` needs torch and nothing else
    personalized.onnx      (``client.personalize --onnx``, or a node whose node config has
                           ``model-onnx=true``) the same as ONNX, for onnxruntime or any ONNX
                           runtime: no torch at all; needs the ``onnx`` extra to be written

Files are written to a temporary name and renamed, so a node that dies mid-write leaves the
previous model intact rather than a truncated one.

Whatever device the node computes on, both files hold CPU tensors only (the TorchScript
export stores its weights and its traced example input): a file saved from CUDA tensors would
load only where CUDA exists, and there onto the GPU.
"""

from __future__ import annotations

import copy
import io
import json
import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

STATE_FILE = "personalized.pt"
INFO_FILE = "personalized.json"
EXPORT_FILE = "personalized.torchscript.pt"
ONNX_FILE = "personalized.onnx"
ONNX_EXTRA_HINT = "pip install 'fedmeta-flower[onnx]' (onnx and onnxruntime)"


class ModelStoreError(OSError):
    """The model folder cannot be written, or an export does not reproduce the model."""


def save_personalized(
    folder: str | Path, params: Mapping[str, Tensor], info: Mapping[str, Any],
    *, folder_flag: str = "the node's model-dir",
) -> Path:  # fmt: skip
    """Write ``params`` (state_dict) and ``info`` (JSON) atomically into ``folder``.

    ``params`` may live on any device; the file holds detached CPU copies of them.
    ``folder_flag`` names where ``folder`` came from, for the error message.
    """
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in params.items()}
        _atomic(path / STATE_FILE, lambda tmp: tmp.write_bytes(_serialised(torch.save, state)))
        text = json.dumps(dict(info), indent=2, sort_keys=True)
        _atomic(path / INFO_FILE, lambda tmp: tmp.write_text(text))
    except OSError as err:
        raise ModelStoreError(
            f"cannot write the personalised model into '{path}': {err}. "
            f"Point {folder_flag} at a writable folder."
        ) from err
    return path / STATE_FILE


def export_torchscript(
    model: nn.Module, params: Mapping[str, Tensor], example: Tensor, path: str | Path
) -> Path:
    """Trace ``model`` with ``params`` loaded and save it; check the saved file reproduces it.

    Tracing (not scripting) works for any module without data-dependent control flow, which
    holds for the model zoo; the check below catches a model for which it would not. The
    model, ``params`` and ``example`` may live on any device: a CPU copy of each is traced,
    so no device is baked into the graph or the file.
    """
    module, example = _cpu_copy(model, params), example.detach().cpu()
    with torch.no_grad():
        traced = torch.jit.trace(module, example)
        out = Path(path)
        _atomic(out, lambda tmp: tmp.write_bytes(_serialised(torch.jit.save, traced)))
        expected, got = module(example), torch.jit.load(str(out))(example)
    if not torch.allclose(expected, got, rtol=1e-5, atol=1e-6):
        raise ModelStoreError(
            f"the TorchScript export {out} does not reproduce the model (max abs diff "
            f"{(expected - got).abs().max():.3g}); the model likely has input-dependent "
            "control flow that tracing cannot capture"
        )
    return out


def export_onnx(
    model: nn.Module, params: Mapping[str, Tensor], example: Tensor, path: str | Path
) -> Path:
    """Export ``model`` with ``params`` to ONNX (any batch size); check it with onnxruntime.

    Uses torch's TorchScript-based exporter (``dynamo=False``: no onnxscript needed, and
    seconds instead of minutes for the char-LSTM, whose 80 steps it unrolls). The conv net's
    BatchNorm normalises with the batch's own statistics (no running stats, as in MAML);
    that exporter takes such a BatchNorm only with a fixed batch size, so it is exported
    as the same arithmetic written out (:class:`_BatchStatisticsNorm`). The saved file is
    run with onnxruntime on ``example`` and on a smaller batch and must match the model.
    """
    try:
        import onnxruntime
    except ImportError as err:
        raise ModelStoreError(f"the ONNX export needs onnxruntime: {ONNX_EXTRA_HINT}") from err
    module, example = _cpu_copy(model, params), example.detach().cpu()
    exportable = _batch_statistics_written_out(module)
    out = Path(path)

    def write(tmp: Path) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
            torch.onnx.export(
                exportable, (example,), str(tmp), dynamo=False,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
            )  # fmt: skip

    try:
        _atomic(out, write)
    except ModuleNotFoundError as err:
        raise ModelStoreError(f"the ONNX export needs onnx: {ONNX_EXTRA_HINT}") from err
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (example, example[: max(1, len(example) // 2)]):
        with torch.no_grad():
            expected = module(batch).numpy()
        got = session.run(None, {"input": batch.numpy()})[0]
        if got.shape != expected.shape or not np.allclose(expected, got, rtol=1e-4, atol=1e-5):
            raise ModelStoreError(
                f"the ONNX export {out} does not reproduce the model on a batch of "
                f"{len(batch)} (max abs diff {np.abs(expected - got).max():.3g})"
            )
    return out


class _BatchStatisticsNorm(nn.Module):
    """What ``BatchNorm(track_running_stats=False)`` computes, in plain tensor operations."""

    def __init__(self, norm: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.weight, self.bias, self.eps = norm.weight, norm.bias, norm.eps

    def forward(self, x: Tensor) -> Tensor:
        dims = [0, *range(2, x.dim())]  # every axis but the channels
        shape = [1, -1] + [1] * (x.dim() - 2)
        mean = x.mean(dim=dims, keepdim=True)
        var = x.var(dim=dims, unbiased=False, keepdim=True)  # as BatchNorm normalises
        y = (x - mean) / torch.sqrt(var + self.eps)
        if self.weight is not None:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _batch_statistics_written_out(module: nn.Module) -> nn.Module:
    """A copy of ``module`` whose batch-statistics BatchNorms are :class:`_BatchStatisticsNorm`."""
    out = copy.deepcopy(module)
    for name, child in list(out.named_modules()):
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and child.running_mean is None:
            parent_name, _, attr = name.rpartition(".")
            setattr(out.get_submodule(parent_name), attr, _BatchStatisticsNorm(child))
    return out


def _cpu_copy(model: nn.Module, params: Mapping[str, Tensor]) -> nn.Module:
    """A CPU copy of ``model`` in eval mode with ``params`` loaded; the skeleton stays as is."""
    module = copy.deepcopy(model).cpu().eval()
    module.load_state_dict({k: v.detach().cpu() for k, v in params.items()}, strict=True)
    return module


def _serialised(save: Callable[[Any, io.BytesIO], object], obj: Any) -> bytes:
    """``obj`` as ``save`` writes it, in memory. Torch's own file writer aborts the whole
    process on a full disk (a C++ exception in a destructor); Python's write raises an
    OSError naming the cause, which the caller reports in one line."""
    buffer = io.BytesIO()
    save(obj, buffer)
    return buffer.getvalue()


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
