"""Strict JSON for every file the project writes.

Python's ``json`` writes ``NaN`` and ``Infinity`` by default, which are not JSON: strict
parsers (JavaScript's ``JSON.parse``, jq, most other languages) reject the whole file. A
figure that is not a number is written as ``null``; the record says elsewhere why (e.g.
``diverged-at-round``), so a reader never takes it for a measurement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every non-finite float (Python or NumPy) replaced by None, recursively;
    NumPy scalars become Python numbers."""
    if isinstance(obj, Mapping):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite_or_none(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` that maps NaN/inf to null and refuses anything else that is not JSON."""
    return json.dumps(finite_or_none(obj), allow_nan=False, **kwargs)
