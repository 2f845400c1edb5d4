"""Everything a run leaves on disk, in one folder (``run-dir``):

config.json      the exact settings of the run
metrics.jsonl    one JSON object per round: train metrics, evaluation statistics,
                 dropped replies, wall time
clients.jsonl    per-client evaluation rows of every round (for distributions/plots)
checkpoint.npz   theta (+ alpha) and the server optimizer's state after the last
                 completed round, written atomically: a crash costs at most one round
model.pt         the final theta (+ alpha) as torch tensors (``torch.load`` it with
                 ``weights_only=True``), with the settings that produced it
summary.json     final personalised scores, including clients never seen in training
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.arrays import split_state
from server.aggregate import OptimizerState

CHECKPOINT_FORMAT = 1


class CheckpointMismatch(ValueError):
    """A checkpoint that does not belong to this model or run."""


@dataclass(frozen=True)
class Checkpoint:
    server_round: int
    state: dict[str, np.ndarray]
    optimizer: OptimizerState


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)

    def file(self, name: str) -> Path:
        return self.path / name

    # ---- logs --------------------------------------------------------------------------
    def write_json(self, name: str, obj: Any) -> None:
        _atomic_write(self.file(name), json.dumps(obj, indent=2, sort_keys=True).encode())

    def append_jsonl(self, name: str, obj: Any) -> None:
        with self.file(name).open("a") as f:
            f.write(json.dumps(obj, sort_keys=True) + "\n")

    def truncate_jsonl_after(self, name: str, server_round: int) -> None:
        """Drop rows of rounds after ``server_round`` (written before a crash, not checkpointed)."""
        path = self.file(name)
        if not path.exists():
            return
        rows = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [r for r in rows if json.loads(r).get("round", 0) <= server_round]
        _atomic_write(path, ("\n".join(kept) + ("\n" if kept else "")).encode())

    # ---- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self, ckpt: Checkpoint) -> None:
        arrays = {f"state/{k}": v for k, v in ckpt.state.items()}
        arrays |= {f"m/{k}": v for k, v in ckpt.optimizer.m.items()}
        arrays |= {f"v/{k}": v for k, v in ckpt.optimizer.v.items()}
        meta = {
            "format": CHECKPOINT_FORMAT,
            "round": ckpt.server_round,
            "step": ckpt.optimizer.step,
        }
        tmp = self.file("checkpoint.tmp.npz")
        with tmp.open("wb") as f:
            np.savez(f, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **arrays)
        os.replace(tmp, self.file("checkpoint.npz"))

    def load_checkpoint(self, expected: dict[str, np.ndarray]) -> Checkpoint | None:
        """The last checkpoint, checked against the model's state; None when there is none."""
        path = self.file("checkpoint.npz")
        if not path.exists():
            return None
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(z["__meta__"].tobytes())
            group = {
                p: {k[len(p) + 1 :]: z[k] for k in z.files if k.startswith(p + "/")}
                for p in ("state", "m", "v")
            }
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointMismatch(
                f"{path} has format {meta.get('format')}, expected {CHECKPOINT_FORMAT}"
            )
        _check_matches(path, group["state"], expected)
        return Checkpoint(
            server_round=int(meta["round"]),
            state=group["state"],
            optimizer=OptimizerState(step=int(meta["step"]), m=group["m"], v=group["v"]),
        )

    def save_model(self, state: dict[str, np.ndarray], settings: dict[str, Any]) -> Path:
        theta, alpha = split_state(state)
        payload: dict[str, Any] = {
            "theta": {k: torch.from_numpy(np.array(v)) for k, v in theta.items()},
            "settings": json.dumps(settings, sort_keys=True),
        }
        if alpha is not None:
            payload["alpha"] = {k: torch.from_numpy(np.array(v)) for k, v in alpha.items()}
        tmp = self.file("model.tmp.pt")
        torch.save(payload, tmp)
        os.replace(tmp, self.file("model.pt"))
        return self.file("model.pt")


def _check_matches(path: Path, got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
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


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
