"""Personalise a saved global model on one client's local data, offline.

    python -m client.personalize --model runs/latest/model.pt \\
        --partition-id 3 --num-partitions 10 [--data-path PATH] [--steps 10] [--onnx] \\
        --out my-model/

loads the server's final model (``model.pt``: ``{"theta", "alpha"?, "settings"}``), reads
this client's data exactly as its SuperNode would (same dataset, partition and seeded
train/test split), adapts ``--steps`` gradient steps on the train split, reports loss (and
accuracy) before and after on the held-out test split, and writes into ``--out``

    personalized.pt              the personalised state_dict
    personalized.json            scores, source model and settings
    personalized.torchscript.pt  a TorchScript export: ``torch.jit.load`` it with plain torch
    personalized.onnx            with --onnx: an ONNX export, checked with onnxruntime
                                 (needs the ``onnx`` extra)

all or none of them: they are written under temporary names beside ``--out`` and moved
into it only when every step succeeded. A model.pt whose settings are not the ones its
theta was trained with (edited, or their hash differs) is refused before any work.

The adaptation is the evaluation path the federation itself uses
(:func:`common.scoring.personalize_and_score`) on the batches of the run's final
evaluation (the client's RNG stream of (seed, client, final round, evaluate)), so with the
run's eval-steps the scores are the ones the run logged for this client in its last round
(``clients.jsonl``; a test checks it). They differ, and the output says why, when --steps
is not the run's, when the run's algorithm does not adapt at evaluation (fedavg scores
theta as it is) or keeps personal models on the nodes (local), or when --num-partitions
is not the run's number of clients.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from client.app import EVALUATE_PURPOSE
from client.model_store import (
    EXPORT_FILE,
    INFO_FILE,
    ONNX_FILE,
    STATE_FILE,
    ModelStoreError,
    export_onnx,
    export_torchscript,
    save_personalized,
)
from common.config import Algorithm, Settings, parse_settings, settings_to_run_config
from common.data.registry import load_client_data
from common.device import select_device
from common.folders import temporary_name
from common.messages import ACC_AFTER, ACC_BEFORE, LOSS_AFTER, LOSS_BEFORE
from common.meta import bounded_step_sizes
from common.models import model_for
from common.scoring import Personalized, personalize_and_score, tensors_of
from common.settings_hash import settings_hash


class ModelFileError(ValueError):
    """The --model file is not a model saved by this project's server."""


@dataclass(frozen=True)
class GlobalModel:
    settings: Settings
    theta: dict[str, torch.Tensor]
    alpha: dict[str, torch.Tensor] | None  # Meta-SGD's learned step sizes


def load_global_model(path: Path) -> GlobalModel:
    """Read the server's ``model.pt`` (server/run_folder.py ``save_model``), tensors only."""
    if not path.is_file():
        raise ModelFileError(f"--model {path} does not exist; the server writes run-dir/model.pt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a foreign or corrupt file
        raise ModelFileError(f"--model {path} is not a readable torch file: {err}") from err
    if not isinstance(payload, dict) or not {"theta", "settings"} <= payload.keys():
        raise ModelFileError(
            f"--model {path} lacks 'theta' and 'settings'; pass the model.pt a run wrote "
            "(not personalized.pt, which is a bare state_dict)"
        )
    try:
        run_config = json.loads(payload["settings"])
        settings = parse_settings(run_config)
    except (TypeError, ValueError) as err:  # not JSON, or a ConfigError naming the key
        raise ModelFileError(f"--model {path}: its settings are not valid ({err})") from err
    recorded = payload.get("settings-hash")
    if recorded is not None and recorded != settings_hash(run_config):
        raise ModelFileError(
            f"--model {path}: its settings are not the ones its theta was trained with "
            "(their hash differs from the one saved with theta): the file was edited. Use "
            "the model.pt the run wrote"
        )
    return GlobalModel(
        settings=settings,
        theta=dict(payload["theta"]),
        alpha=dict(payload["alpha"]) if payload.get("alpha") is not None else None,
    )


def check_fits(saved: GlobalModel, model: torch.nn.Module, path: Path) -> None:
    """ModelFileError unless theta (and alpha) hold exactly the arrays of the settings' model."""
    wanted = {k: tuple(p.shape) for k, p in model.named_parameters()}
    for name, arrays in (("theta", saved.theta), ("alpha", saved.alpha or {})):
        got = {k: tuple(v.shape) for k, v in arrays.items()}
        if name == "alpha" and not got:
            continue
        if got != wanted:
            diff = sorted(set(got.items()) ^ set(wanted.items()))[:3]
            raise ModelFileError(
                f"--model {path}: its {name} does not fit the model its settings describe "
                f"(differs at {diff}); the settings or the arrays were changed. Use the "
                "model.pt the run wrote"
            )


def personalize_saved_model(
    model_path: Path,
    partition_id: int,
    num_partitions: int,
    out: Path,
    *,
    steps: int | None = None,
    data_path: str | None = None,
    device: str = "cpu",
    onnx: bool = False,
) -> Personalized:
    """Adapt the saved model on one client's train split; write state_dict, JSON, exports.

    Every file goes into a folder of this process's own beside ``out`` first; only when
    all of them are written are they moved into ``out``. A failure leaves nothing there.
    """
    if out.exists() and not out.is_dir():
        raise ModelFileError(f"--out {out} is a file; give a folder for the outputs")
    saved = load_global_model(model_path)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ModelStoreError(
            f"cannot write the personalised model into '{out}': {err}. Point --out at a "
            "writable folder."
        ) from err
    staging = temporary_name(out.parent / f".{out.name}")
    try:
        result = _personalize_into(
            staging, saved, model_path, partition_id, num_partitions,
            steps=steps, data_path=data_path, device=device, onnx=onnx,
        )  # fmt: skip
        out.mkdir(exist_ok=True)
        for file in staging.iterdir():
            os.replace(file, out / file.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def _personalize_into(
    folder: Path, saved: GlobalModel, model_path: Path, partition_id: int,
    num_partitions: int, *, steps: int | None, data_path: str | None, device: str,
    onnx: bool,
) -> Personalized:  # fmt: skip
    settings = saved.settings
    if data_path is not None:  # this device's own copy of the data
        settings = dataclasses.replace(settings, data_path=data_path)
    steps = settings.eval_steps if steps is None else steps
    model = model_for(settings)
    check_fits(saved, model, model_path)
    data = load_client_data(settings, partition_id, num_partitions)
    torch_device = select_device(device, model)  # 'auto': CUDA only for a large enough model
    model = model.to(torch_device)
    theta = {k: v.to(torch_device) for k, v in saved.theta.items()}
    lr: Any = settings.inner_lr
    if saved.alpha is not None:
        alpha = {k: v.to(torch_device) for k, v in saved.alpha.items()}
        lr = bounded_step_sizes(alpha, settings.alpha_bounds)  # as the federation used it
    # The stream of this client's evaluation in the run's final round (ClientRuntime.rng).
    rng = np.random.default_rng(
        [settings.seed, partition_id, settings.num_rounds, EVALUATE_PURPOSE]
    )
    result = personalize_and_score(
        model, theta, lr, data, steps=steps, batch_size=settings.batch_size,
        task=settings.task, rng=rng, device=torch_device, loss=settings.loss,
    )  # fmt: skip
    info = {
        "source-model": str(model_path.resolve()),
        "partition-id": partition_id,
        "num-partitions": num_partitions,
        "steps": steps,
        "num-train": data.num_train,
        "num-test": data.num_test,
        "scores": _scores(result),
        "same-as-run": same_as_run(settings, steps) or "yes",
        "input-shape": list(data.x_test.shape[1:]),
        "settings": settings_to_run_config(settings),
    }
    save_personalized(folder, result.params, info, folder_flag="--out")
    _, _, x_test, _ = tensors_of(data, settings.task, torch.device("cpu"))
    export_torchscript(model, result.params, x_test, folder / EXPORT_FILE)
    if onnx:
        export_onnx(model, result.params, x_test, folder / ONNX_FILE)
    return result


def same_as_run(settings: Settings, steps: int) -> str:
    """'' when these scores are the run's for this client in its last round, else why not."""
    if settings.algo is Algorithm.LOCAL:
        return "the local baseline's personal models lived on the nodes, not in model.pt"
    run_steps = settings.eval_steps if settings.adapts_at_evaluation else 0
    if steps != run_steps:
        return f"--steps {steps} differs from the {run_steps} steps the run's evaluation took"
    return ""


def _scores(result: Personalized) -> dict[str, float]:
    scores = {LOSS_BEFORE: result.before.loss, LOSS_AFTER: result.after.loss}
    if result.before.accuracy is not None and result.after.accuracy is not None:
        scores |= {ACC_BEFORE: result.before.accuracy, ACC_AFTER: result.after.accuracy}
    return scores


def _report(result: Personalized, out: Path, why_not_same: str, onnx: bool) -> str:
    lines = ["                 before    after"]
    lines.append(f"test loss      {result.before.loss:8.4f} {result.after.loss:8.4f}")
    if result.before.accuracy is not None and result.after.accuracy is not None:
        lines.append(f"test accuracy  {result.before.accuracy:8.4f} {result.after.accuracy:8.4f}")
    if why_not_same:
        lines.append(f"(not the run's scores for this client: {why_not_same})")
    else:
        lines.append("(the run's final-round scores for this client, given its --num-partitions)")
    files = [STATE_FILE, INFO_FILE, EXPORT_FILE] + ([ONNX_FILE] if onnx else [])
    lines.append("wrote " + ", ".join(str(out / f) for f in files))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m client.personalize", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", type=Path, required=True, help="run-dir/model.pt of a run")
    parser.add_argument("--partition-id", type=int, required=True)
    parser.add_argument("--num-partitions", type=int, required=True)
    parser.add_argument("--data-path", default=None, help="overrides the run's data-path")
    parser.add_argument("--steps", type=int, default=None, help="default: the run's eval-steps")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--out", type=Path, required=True, help="folder for the outputs")
    parser.add_argument(
        "--onnx", action="store_true",
        help="also write personalized.onnx (needs the onnx extra: onnx, onnxruntime)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 0:
        parser.error(f"--steps must be >= 0, got {args.steps}")
    if args.num_partitions < 1:
        parser.error(f"--num-partitions must be >= 1, got {args.num_partitions}")
    if not 0 <= args.partition_id < args.num_partitions:
        parser.error(
            f"--partition-id {args.partition_id} is not a client of --num-partitions "
            f"{args.num_partitions}; give 0..{args.num_partitions - 1}"
        )
    try:
        result = personalize_saved_model(
            args.model, args.partition_id, args.num_partitions, args.out,
            steps=args.steps, data_path=args.data_path, device=args.device, onnx=args.onnx,
        )  # fmt: skip
    except (ValueError, OSError) as err:  # our errors name the input and the fix
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            err = OSError(
                f"no space left on the device of --out {args.out}; nothing was written. "
                "Free some space or give --out on another disk"
            )
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    info = json.loads((args.out / INFO_FILE).read_text())
    why_not = "" if info["same-as-run"] == "yes" else info["same-as-run"]
    print(_report(result, args.out, why_not, args.onnx))
    return 0


if __name__ == "__main__":
    sys.exit(main())
