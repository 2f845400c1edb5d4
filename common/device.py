"""Device choice: the ``device`` key, with a rule for ``auto``.

``auto`` picks CUDA when it is available *and* the model has at least
``AUTO_CUDA_MIN_PARAMS`` parameters. Tiny models (the 1.7k-parameter sinusoid MLP, the
610-parameter Synthetic logistic regression) spend their time launching kernels: on an
H100 the sinusoid MLP ran slower on CUDA than on CPU (38 s vs 23 s for 3 x 30 rounds,
docs/performance.md). ``cpu`` and ``cuda`` are taken as given.

Whatever device computes, what is stored, exported or sent is on the CPU: replies and
checkpoints are numpy arrays, saved models are CPU tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from common.config import ConfigError

AUTO_CUDA_MIN_PARAMS = 10_000


def select_device(name: str, model: nn.Module | None = None) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "'auto' or 'cpu' (no CUDA device is visible here)")
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        size = None if model is None else sum(p.numel() for p in model.parameters())
        small = size is not None and size < AUTO_CUDA_MIN_PARAMS
        return torch.device("cpu" if small else "cuda")
    return torch.device(name)
