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

A run writes only into a folder that is empty or already one of its run-dirs, and holds
its lock while it runs (common/folders.py). checkpoint.npz and model.pt carry the hash of
the settings that decide theta (:func:`settings_hash`): a checkpoint resumes only beside
the config.json it was trained with, so deleting or editing config.json cannot make it
continue, or be recorded, under other settings.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import strict_json
from common.arrays import split_state
from common.config import ConfigError
from common.folders import FolderLock, claim, temporary_name
from common.settings_hash import RESUMABLE, settings_hash
from server.optimizer import OptimizerState

CHECKPOINT_FORMAT = 1


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
    settings_hash: str | None = None  # of the settings that trained it; None: written before


class RunFolder:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        self.settings_hash: str | None = None  # set by record_config, written with theta

    @classmethod
    @contextmanager
    def for_run(cls, path: str | Path) -> Iterator[RunFolder]:
        """The run-dir of a run about to write into it: claimed (refused when not empty and
        not a run-dir) and locked against a second writer until the block ends."""
        folder = claim(path, "run-dir")
        with FolderLock(folder, "run-dir"):
            yield cls(folder)

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
    def record_config(self, run_config: Mapping[str, Any]) -> None:
        """Write config.json; checkpoints and model.pt written after it carry its hash."""
        self.write_json("config.json", dict(run_config))
        self.settings_hash = settings_hash(run_config)

    def check_resumable(
        self, run_config: Mapping[str, Any], defaults: Mapping[str, Any],
        ckpt: Checkpoint | None = None,
    ) -> dict:  # fmt: skip
        """Refuse a resume whose settings differ from config.json where theta depends on them.

        With ``ckpt``, config.json must exist and hash to the settings ``ckpt`` was trained
        with (RunFolderError otherwise). A key config.json lacks (recorded before the key
        existed) counts as its default. Raises ConfigError naming the key and both values,
        before anything is written; returns the changes it allows, key -> (recorded, now).
        """
        path = self.file("config.json")
        if not path.exists() and ckpt is None:
            return {}
        recorded = self._recorded_config(path, ckpt)
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

    def _recorded_config(self, path: Path, ckpt: Checkpoint | None) -> dict[str, Any]:
        fix = (
            "restore it from a backup, or keep this run-dir as it is and start a new one with "
            "resume=false"
        )
        where = f"the checkpoint at round {ckpt.server_round}" if ckpt else "the checkpoint"
        try:
            recorded = json.loads(path.read_text())
        except FileNotFoundError:
            raise RunFolderError(
                f"{path} is missing: it records the settings {where} was trained with, and "
                f"without it the run could continue under other settings; {fix}"
            ) from None
        except (OSError, ValueError) as err:
            raise RunFolderError(
                f"{path} is unreadable ({err}); it records the settings of {where}; {fix}"
            ) from err
        if not isinstance(recorded, dict):
            raise RunFolderError(f"{path} is not a mapping of settings; {fix}")
        if ckpt is not None and ckpt.settings_hash not in (None, settings_hash(recorded)):
            raise RunFolderError(
                f"{path} does not hold the settings {where} was trained with (their hash "
                f"differs from the one recorded in {self.file('checkpoint.npz')}): it was "
                f"edited or replaced; {fix}"
            )
        return recorded

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
        if (fingerprint := ckpt.settings_hash or self.settings_hash) is not None:
            meta["settings-hash"] = fingerprint
        blob = np.frombuffer(strict_json.dumps(meta).encode(), np.uint8)

        def write(tmp: Path) -> None:
            with tmp.open("wb") as f:
                np.savez(f, __meta__=blob, **arrays)

        _atomic(self.file("checkpoint.npz"), write)

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
                settings_hash=meta.get("settings-hash"),
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
            "settings-hash": settings_hash(settings),
        }
        if alpha is not None:
            payload["alpha"] = {k: torch.from_numpy(np.array(v)) for k, v in alpha.items()}
        buffer = io.BytesIO()  # torch's own writer reports a full disk as a RuntimeError
        torch.save(payload, buffer)
        _atomic(self.file("model.pt"), lambda tmp: tmp.write_bytes(buffer.getvalue()))
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
    _atomic(path, lambda tmp: tmp.write_bytes(data))


def _atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` a temporary file of this process's own, then rename it over ``path``: a
    reader sees the old file or the new one, and a failed write (full disk, Ctrl-C) leaves
    the old one and no temporary file."""
    tmp = temporary_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is None:  # a write through a file object: name the file
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)
