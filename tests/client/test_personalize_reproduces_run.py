"""`client.personalize` on a run's model.pt gives each client the scores the run logged for it
in its final round (same steps, same batches), and says so; otherwise it says why not.
Its errors name its own flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from client.personalize import main, personalize_saved_model
from simulations.loop import run_in_loop

NODES = 3
RUN = {
    "dataset": "digits", "partition": "dirichlet", "algorithm": "perfedavg-fo",
    "hidden-sizes": "16", "num-rounds": 2, "local-steps": 2, "eval-steps": 4,
    "fraction-train": 1.0, "fraction-evaluate": 1.0, "min-available-nodes": 1,
}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("run")
    previous = torch.get_num_threads()
    try:
        run_in_loop(RUN | {"run-dir": str(folder)}, NODES)
    finally:
        torch.set_num_threads(previous)
    return folder


def _final_scores(run_dir: Path) -> dict[int, dict[str, float]]:
    last = [json.loads(r) for r in (run_dir / "clients.jsonl").read_text().splitlines()][-1]
    assert last["round"] == RUN["num-rounds"]
    return {int(c["partition-id"]): c for c in last["clients"]}


@pytest.mark.parametrize("partition", range(NODES))
def test_scores_are_the_runs_final_scores(run_dir: Path, tmp_path: Path, partition: int):
    logged = _final_scores(run_dir)[partition]
    result = personalize_saved_model(run_dir / "model.pt", partition, NODES, tmp_path / "o")
    assert result.before.loss == pytest.approx(logged["loss-before"], rel=1e-5)
    assert result.after.loss == pytest.approx(logged["loss-after"], rel=1e-5)
    assert result.after.accuracy == pytest.approx(logged["acc-after"], abs=1e-6)
    info = json.loads((tmp_path / "o" / "personalized.json").read_text())
    assert info["same-as-run"] == "yes"


def test_other_steps_say_why_the_scores_differ(run_dir: Path, tmp_path: Path, capsys):
    args = ["--model", str(run_dir / "model.pt"), "--partition-id", "0",
            "--num-partitions", str(NODES), "--out", str(tmp_path / "o")]  # fmt: skip
    assert main([*args, "--steps", "7"]) == 0
    assert "not the run's scores for this client: --steps 7 differs from the 4" in (
        capsys.readouterr().out
    )
    assert main(args) == 0
    assert "the run's final-round scores for this client" in capsys.readouterr().out


def test_errors_name_the_commands_own_flags(run_dir: Path, tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    base = ["--model", str(run_dir / "model.pt"), "--num-partitions", str(NODES)]
    assert main([*base, "--partition-id", "0", "--out", str(blocker / "o")]) == 2
    err = capsys.readouterr().err
    assert "Point --out at a writable folder" in err and "model-dir" not in err
    with pytest.raises(SystemExit):
        main([*base, "--partition-id", str(NODES), "--out", str(tmp_path / "o")])
    assert f"--partition-id {NODES} is not a client of --num-partitions {NODES}" in (
        capsys.readouterr().err
    )
