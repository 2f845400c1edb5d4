"""A client's personalised model on its own disk, for use on the device without the server.

One folder (a SuperNode's ``model-dir``, or the ``--out`` of ``python -m client.personalize``):

    personalized.pt        the personalised theta as a plain state_dict:
                           ``model.load_state_dict(torch.load(path, weights_only=True))``
    personalized.json      where it came from: round, partition, scores before and after
                           personalising, and the run's settings (enough to rebuild the model)
    personalized.torchscript.pt
                           (``client.personalize`` only) the model with those weights as
                           TorchScript: ``torch.jit.load(path)`` needs torch and nothing else

Files are written to a temporary name and renamed, so a node that dies mid-write leaves the
previous model intact rather than a truncated one.

Whatever device the node computes on, both files hold CPU tensors only (the TorchScript
export stores its weights and its traced example input): a file saved from CUDA tensors would
load only where CUDA exists, and there onto the GPU.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

STATE_FILE = "personalized.pt"
INFO_FILE = "personalized.json"
EXPORT_FILE = "personalized.torchscript.pt"


class ModelStoreError(OSError):
    """The model folder cannot be written, or an export does not reproduce the model."""


def save_personalized(
    folder: str | Path, params: Mapping[str, Tensor], info: Mapping[str, Any]
) -> Path:
    """Write ``params`` (state_dict) and ``info`` (JSON) atomically into ``folder``.

    ``params`` may live on any device; the file holds detached CPU copies of them.
    """
    path = Path(folder).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in params.items()}
        _atomic(path / STATE_FILE, lambda tmp: torch.save(state, tmp))
        text = json.dumps(dict(info), indent=2, sort_keys=True)
        _atomic(path / INFO_FILE, lambda tmp: tmp.write_text(text))
    except OSError as err:
        raise ModelStoreError(
            f"cannot write the personalised model into model-dir '{path}': {err}. "
            "Point the node's model-dir at a writable folder."
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
    module = copy.deepcopy(model).cpu().eval()  # the caller's skeleton stays untouched
    module.load_state_dict({k: v.detach().cpu() for k, v in params.items()}, strict=True)
    example = example.detach().cpu()
    with torch.no_grad():
        traced = torch.jit.trace(module, example)
        out = Path(path)
        _atomic(out, lambda tmp: torch.jit.save(traced, str(tmp)))
        expected, got = module(example), torch.jit.load(str(out))(example)
    if not torch.allclose(expected, got, rtol=1e-5, atol=1e-6):
        raise ModelStoreError(
            f"the TorchScript export {out} does not reproduce the model (max abs diff "
            f"{(expected - got).abs().max():.3g}); the model likely has input-dependent "
            "control flow that tracing cannot capture"
        )
    return out


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
