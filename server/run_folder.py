"""Everything a run leaves on disk, in one folder (``run-dir``):

config.json      the exact settings of the run; a resumed run must keep every one of
                 them that decides theta (see :data:`RESUMABLE`)
metrics.jsonl    one JSON object per round: train metrics, evaluation statistics,
                 dropped replies, wall time
clients.jsonl    per-client evaluation rows of every round (for distributions/plots)
checkpoint.npz   theta (+ alpha) and the server optimizer's state after the last
                 completed round, written atomically: a crash costs at most one round
model.pt         the final theta (+ alpha) as torch tensors (``torch.load`` it with
                 ``weights_only=True``), with the settings that produced it
summary.json     final personalised scores, including clients never seen in training

model.pt and summary.json exist only for a run that finished having accepted at least
one client update: they are what marks a run as done.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import strict_json
from common.arrays import split_state
from common.config import ConfigError
from server.aggregate import OptimizerState

CHECKPOINT_FORMAT = 1

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


class RunFolderError(ValueError):
    """A run folder whose checkpoint or record cannot be used."""


class CheckpointMismatch(RunFolderError):
    """A checkpoint that does not belong to this model or run."""


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    state: dict[str, np.ndarray]
    optimizer: OptimizerState
    privacy: dict | None = None  # DP's clip bound and accountant ledger (server/privacy.py)


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- logs --------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        text = strict_json.dumps(obj, indent=2, sort_keys=True)  # NaN/inf: null (strict JSON)
        _atomic_write(self.file(name), text.encode())

    def append_jsonl(self, name: str, obj: Any) -> None:
        with self.file(name).open("a") as f:
            f.write(strict_json.dumps(obj, sort_keys=True) + "\n")

    def truncate_jsonl_after(self, name: str, server_round: int) -> None:
        """Drop rows of rounds after ``server_round`` (written before a crash, not checkpointed).

        A row that is not JSON was cut short by the crash and goes too.
        """
        path = self.file(name)
        if not path.exists():
            return
        kept = [
            line
            for line in path.read_text().splitlines()
            if (row := _json_or_none(line)) is not None and row.get("round", 0) <= server_round
        ]
        _atomic_write(path, ("\n".join(kept) + ("\n" if kept else "")).encode())

    def start_over(self) -> None:
        """Clear what an earlier, untrained or abandoned start in this folder left behind.

        Called only when no checkpoint with an accepted update exists, so nothing trained
        is lost; a failed fresh run then leaves no model.pt or summary.json claiming one.
        """
        for name in ("metrics.jsonl", "clients.jsonl"):
            self.truncate_jsonl_after(name, 0)
        for name in ("summary.json", "model.pt", "checkpoint.npz"):
            self.file(name).unlink(missing_ok=True)

    # ---- the record of a resumed run -----------------------------------------------------
    def check_resumable(self, run_config: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict:
        """Refuse a resume whose settings differ from config.json where theta depends on them.

        A key config.json lacks (recorded before the key existed) counts as its default.
        Raises ConfigError naming the key and both values, before anything is written;
        returns the changes it allows, key -> (recorded, now).
        """
        path = self.file("config.json")
        if not path.exists():
            return {}
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise RunFolderError(
                f"{path} is unreadable ({err}); it records the settings of the checkpoint "
                "to resume. Restore it, or start over with resume=false and a new run-dir."
            ) from err
        changed = {
            key: (recorded.get(key, defaults.get(key)), value)
            for key, value in run_config.items()
            if recorded.get(key, defaults.get(key)) != value
        }
        refused = {k: v for k, v in changed.items() if k not in RESUMABLE}
        if refused:
            (key, (was, now)), *others = refused.items()
            also = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in others)
            also = f"; also changed: {also}" if also else ""
            raise ConfigError(
                key, now,
                f"{was!r}, the value recorded in {path} for the checkpoint being resumed "
                "(a resumed run keeps every setting theta was trained with; to change it, "
                f"start a new run-dir with resume=false){also}",
            )  # fmt: skip
        return changed

    # ---- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self, ckpt: Checkpoint) -> None:
        arrays = {f"state/{k}": v for k, v in ckpt.state.items()}
        arrays |= {f"m/{k}": v for k, v in ckpt.optimizer.m.items()}
        arrays |= {f"v/{k}": v for k, v in ckpt.optimizer.v.items()}
        meta: dict[str, object] = {
            "format": CHECKPOINT_FORMAT,
            "round": ckpt.server_round,
            "step": ckpt.optimizer.step,
        }
        if ckpt.privacy is not None:
            meta["privacy"] = ckpt.privacy
        tmp = self.file("checkpoint.tmp.npz")
        with tmp.open("wb") as f:
            header = np.frombuffer(strict_json.dumps(meta).encode(), np.uint8)
            np.savez(f, __meta__=header, **arrays)
        os.replace(tmp, self.file("checkpoint.npz"))

    def load_checkpoint(self, expected: dict[str, np.ndarray] | None = None) -> Checkpoint | None:
        """The last checkpoint (checked against the model's state when ``expected`` is
        given); None when there is none."""
        path = self.file("checkpoint.npz")
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(z["__meta__"].tobytes())
                group = {
                    p: {k[len(p) + 1 :]: z[k] for k in z.files if k.startswith(p + "/")}
                    for p in ("state", "m", "v")
                }
            ckpt = Checkpoint(
                server_round=int(meta["round"]),
                state=group["state"],
                optimizer=OptimizerState(step=int(meta["step"]), m=group["m"], v=group["v"]),
                privacy=meta.get("privacy"),
            )
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
            raise RunFolderError(
                f"checkpoint {path} is unreadable, cut short or corrupt ({type(err).__name__}: "
                f"{err}); it cannot be resumed. Delete it to run this run-dir again from round "
                "1, or keep it and start a new run-dir with resume=false."
            ) from err
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointMismatch(
                f"{path} has format {meta.get('format')}, expected {CHECKPOINT_FORMAT}"
            )
        if expected is not None:
            check_matches(ckpt, path, expected)
        return ckpt

    def save_model(self, state: dict[str, np.ndarray], settings: dict[str, Any]) -> Path:
        theta, alpha = split_state(state)
        payload: dict[str, Any] = {
            "theta": {k: torch.from_numpy(np.array(v)) for k, v in theta.items()},
            "settings": strict_json.dumps(settings, sort_keys=True),
        }
        if alpha is not None:
            payload["alpha"] = {k: torch.from_numpy(np.array(v)) for k, v in alpha.items()}
        tmp = self.file("model.tmp.pt")
        torch.save(payload, tmp)
        os.replace(tmp, self.file("model.pt"))
        return self.file("model.pt")


def check_matches(ckpt: Checkpoint, path: Path, expected: dict[str, np.ndarray]) -> None:
    """CheckpointMismatch unless the checkpoint holds exactly the arrays of this model."""
    got = ckpt.state
    if set(got) != set(expected):
        raise CheckpointMismatch(
            f"checkpoint {path} holds arrays {sorted(got)} but this model has {sorted(expected)}; "
            "it was written by a different model or algorithm. Use another run-dir or "
            "set resume=false with a fresh run-dir."
        )
    for k, v in expected.items():
        if got[k].shape != v.shape or got[k].dtype != v.dtype:
            raise CheckpointMismatch(
                f"checkpoint {path}: '{k}' is {got[k].dtype}{list(got[k].shape)}, "
                f"this model needs {v.dtype}{list(v.shape)}"
            )


def _json_or_none(line: str) -> Any:
    try:
        return json.loads(line)
    except ValueError:
        return None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
