"""`python -m client.personalize`: a saved global model, personalised offline, exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from client.model_store import EXPORT_FILE, INFO_FILE, STATE_FILE
from client.personalize import main, personalize_saved_model
from common.config import parse_settings, settings_to_run_config
from common.data.registry import load_client_data
from common.models import model_for
from server.app import initial_state
from server.run_folder import RunFolder
from tests.torch_files import storage_locations

SINUSOID = {"hidden-sizes": "40,40", "inner-lr": 0.01}


def _saved_model(folder: Path, config: dict) -> Path:
    """A model.pt exactly as the server writes it at the end of a run."""
    settings = parse_settings(config)
    return RunFolder(folder).save_model(initial_state(settings), settings_to_run_config(settings))


def test_personalising_lowers_the_held_out_loss_and_writes_three_files(tmp_path):
    model_path = _saved_model(tmp_path / "run", SINUSOID)
    out = tmp_path / "out"
    result = personalize_saved_model(model_path, 3, 10, out, steps=20)
    assert result.after.loss < result.before.loss  # adaptation on train lowers test loss
    assert sorted(p.name for p in out.iterdir()) == sorted([STATE_FILE, INFO_FILE, EXPORT_FILE])
    info = json.loads((out / INFO_FILE).read_text())
    assert info["scores"]["loss-after"] == pytest.approx(result.after.loss)
    assert info["steps"] == 20 and info["partition-id"] == 3
    state = torch.load(out / STATE_FILE, weights_only=True)
    for name, value in result.params.items():
        torch.testing.assert_close(state[name], value, rtol=0, atol=0)


def test_zero_steps_keep_the_global_model(tmp_path):
    model_path = _saved_model(tmp_path / "run", SINUSOID)
    result = personalize_saved_model(model_path, 0, 4, tmp_path / "out", steps=0)
    theta = torch.load(model_path, weights_only=True)["theta"]
    assert result.after == result.before
    for name, value in theta.items():
        torch.testing.assert_close(result.params[name], value, rtol=0, atol=0)


PROJECT_PACKAGES = ("common", "client", "server", "simulations", "deploy")
# Runs with plain torch only: no site hooks (the project's editable install lives there) and
# none of the folders that hold this project, so nothing of the project can be imported.
PLAIN_TORCH = """
import importlib.util, os, sys
sys.path = [p for p in sys.path if p] + sys.argv[1].split(os.pathsep)
for name in sys.argv[5].split(","):
    assert importlib.util.find_spec(name) is None, name + " is importable"
import torch
model = torch.jit.load(sys.argv[2])
torch.save(model(torch.load(sys.argv[3])), sys.argv[4])
"""


def _import_path_without_the_project() -> str:
    """This interpreter's import path less every folder that holds one of our packages.

    Torch and what it imports are found wherever they are installed (one site-packages here,
    several on a GPU image); the project is not. Entries that are no folder (an editable
    install's path-hook marker) are left out too: the child has no hook to read them.
    """
    ours = [p for p in sys.path if any((Path(p) / name).exists() for name in PROJECT_PACKAGES)]
    return os.pathsep.join(p for p in sys.path if Path(p).exists() and p not in ours)


# Tracing BatchNorm warns that its batch-size-1 check becomes a constant; the model here is
# always called on batches, and the outputs are compared below.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_the_export_runs_with_plain_torch_and_matches_the_model(tmp_path, device):
    config = {"dataset": "digits", "partition": "dirichlet", "model": "cnn", "hidden-sizes": "8,8"}
    model_path = _saved_model(tmp_path / "run", config)
    out = tmp_path / "out"
    result = personalize_saved_model(model_path, 1, 5, out, steps=3, device=device)
    # Whatever device personalised, both files hold CPU tensors only: they load anywhere.
    assert storage_locations(out / STATE_FILE) == {"cpu"} == storage_locations(out / EXPORT_FILE)
    settings = parse_settings(config)
    x = torch.as_tensor(load_client_data(settings, 1, 5).x_test[:17], dtype=torch.float32)
    torch.save(x, tmp_path / "x.pt")
    subprocess.run(
        [sys.executable, "-S", "-I", "-c", PLAIN_TORCH, _import_path_without_the_project(),
         str(out / EXPORT_FILE), str(tmp_path / "x.pt"), str(tmp_path / "y.pt"),
         ",".join(PROJECT_PACKAGES)],
        check=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    model = model_for(settings)
    model.load_state_dict(result.params)  # copies the (possibly CUDA) params onto the CPU
    with torch.no_grad():
        expected = model(x)
    # Another process runs the TorchScript graph: equal up to float32 summation order.
    torch.testing.assert_close(torch.load(tmp_path / "y.pt"), expected, rtol=1e-5, atol=1e-5)


def test_a_file_that_is_not_a_run_model_is_refused_with_the_fix(tmp_path, capsys):
    bare = tmp_path / "personalized.pt"
    torch.save({"net.1.weight": torch.zeros(2)}, bare)
    args = ["--partition-id", "0", "--num-partitions", "2", "--out", str(tmp_path / "o")]
    assert main(["--model", str(bare), *args]) == 2
    assert "pass the model.pt a run wrote" in capsys.readouterr().err
    assert main(["--model", str(tmp_path / "missing.pt"), *args]) == 2
    assert "missing.pt does not exist" in capsys.readouterr().err


def test_metasgd_models_personalise_with_their_learned_step_sizes(tmp_path):
    model_path = _saved_model(tmp_path / "run", SINUSOID | {"algorithm": "metasgd"})
    saved = torch.load(model_path, weights_only=True)
    saved["alpha"] = {k: torch.zeros_like(v) for k, v in saved["alpha"].items()}
    torch.save(saved, model_path)  # zero step sizes: adaptation must not move theta
    result = personalize_saved_model(model_path, 0, 4, tmp_path / "out", steps=5)
    for name, value in saved["theta"].items():
        torch.testing.assert_close(result.params[name], value, rtol=0, atol=0)


ARGS = ["--partition-id", "0", "--num-partitions", "4"]


def _edited(model_path: Path, change) -> None:
    payload = torch.load(model_path, weights_only=True)
    change(payload)
    torch.save(payload, model_path)


def _settings_edited(payload: dict) -> None:
    payload["settings"] = json.dumps(json.loads(payload["settings"]) | {"hidden-sizes": "16"})


def _settings_and_hash_edited(payload: dict) -> None:
    from common.settings_hash import settings_hash

    _settings_edited(payload)
    payload["settings-hash"] = settings_hash(json.loads(payload["settings"]))


def _theta_of_another_model(payload: dict) -> None:
    payload["theta"] = {k: torch.zeros(3, *v.shape[1:]) for k, v in payload["theta"].items()}


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (_settings_edited, "its settings are not the ones its theta was trained with"),
        (_settings_and_hash_edited, "its theta does not fit the model its settings describe"),
        (_theta_of_another_model, "its theta does not fit the model its settings describe"),
    ],
    ids=["settings edited", "settings and hash edited", "theta of another model"],
)
def test_a_model_whose_settings_do_not_match_theta_is_one_error_and_no_files(
    tmp_path, capsys, change, problem
):
    model_path = _saved_model(tmp_path / "run", SINUSOID)
    _edited(model_path, change)
    out = tmp_path / "out"
    assert main(["--model", str(model_path), *ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and problem in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_failure_after_adapting_leaves_no_files_and_no_old_file_is_replaced(
    tmp_path, monkeypatch
):
    """The export fails after personalized.pt and .json were written: before, they stayed
    behind and looked like a success."""
    model_path = _saved_model(tmp_path / "run", SINUSOID)
    out = tmp_path / "out"
    personalize_saved_model(model_path, 0, 4, out, steps=2)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("client.personalize.export_torchscript", full_disk)
    with pytest.raises(OSError, match="No space left"):
        personalize_saved_model(model_path, 1, 4, out, steps=5)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # no staging left


def test_an_out_that_is_a_file_is_one_error(tmp_path, capsys):
    model_path = _saved_model(tmp_path / "run", SINUSOID)
    (tmp_path / "out").write_text("a file")
    assert main(["--model", str(model_path), *ARGS, "--out", str(tmp_path / "out")]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err


def test_a_full_disk_is_one_error_and_no_files(tmp_path, capsys, monkeypatch):
    model_path = _saved_model(tmp_path / "run", SINUSOID)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("client.personalize.export_torchscript", full_disk)
    out = tmp_path / "out"
    assert main(["--model", str(model_path), *ARGS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: no space left on the device of --out {out}; nothing was written. "
        "Free some space or give --out on another disk\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_a_real_full_disk_is_one_error_and_no_files(tmp_path, capsys):
    """Torch's own file writer aborted the process on a full disk (a 16 KiB tmpfs here,
    where root may mount one): no error line, and the outputs half written."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root and the permission to mount")
    try:
        model_path = _saved_model(tmp_path / "run", SINUSOID)
        assert main(["--model", str(model_path), *ARGS, "--out", str(disk / "out")]) == 2
        assert "error: no space left on the device of --out" in capsys.readouterr().err
        assert not list(disk.iterdir())
    finally:
        subprocess.run(["umount", str(disk)], check=True)
