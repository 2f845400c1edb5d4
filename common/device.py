"""Device choice: CUDA when available, CPU otherwise, overridable by the ``device`` key."""

from __future__ import annotations

import torch

from common.config import ConfigError


def select_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", name, "'auto' or 'cpu' (no CUDA device is visible here)")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
