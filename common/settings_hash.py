"""Which settings decide theta, and their fingerprint.

A checkpoint or a model.pt is theta trained under some settings; the server records them
in config.json and model.pt. :func:`settings_hash` goes into checkpoint.npz and model.pt
beside theta, so settings that were edited or replaced afterwards no longer match it:
the server refuses to resume such a checkpoint (server/run_folder.py) and
``client.personalize`` refuses such a model.pt.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

# Settings a resumed run may change: none of them changes what theta is or how the rounds
# so far trained it (how long to run, where and how fast, how it is scored). Every other
# key, including keys added later, must equal the value recorded in config.json.
RESUMABLE = frozenset(
    {
        "num-rounds", "run-dir", "resume", "device", "cohort-size",
        "round-timeout", "node-wait-timeout", "min-available-nodes",
        "evaluate-every", "fraction-evaluate", "eval-steps", "eval-episodes",
        "new-client-steps", "new-client-train-points",
        "data-path",  # the same data moved elsewhere; logged as a warning
    }
)  # fmt: skip


def settings_hash(run_config: Mapping[str, Any]) -> str:
    """sha256 of the settings that decide theta: every key but the :data:`RESUMABLE` ones,
    as canonical JSON (the same from a Settings object and from the config.json it wrote)."""
    fixed = {k: v for k, v in run_config.items() if k not in RESUMABLE}
    text = json.dumps(fixed, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
