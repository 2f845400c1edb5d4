"""The runner keeps a diverged run as its outcome: a single run exits 3, a sweep exits 0,
both show "diverged (r)" and reuse the cell instead of rerunning it."""

from __future__ import annotations

import json
from pathlib import Path

from simulations.run import DIVERGED_EXIT, main

EXPERIMENT = """
name: blow-up
engine: loop
num-supernodes: 1
seeds: [0]
base:
  clients-per-node: 100
  min-available-nodes: 1
  num-rounds: 12
  evaluate-every: 4
algorithms:
  lr1: {algorithm: maml, server-lr: 1.0}
  fine: {algorithm: maml}
"""


def _experiment(tmp_path: Path) -> Path:
    path = tmp_path / "blow-up.yaml"
    path.write_text(EXPERIMENT)
    return path


def test_a_single_run_that_diverges_exits_3_and_is_kept_not_rerun(tmp_path, capfd):
    out = tmp_path / "out"
    args = [str(_experiment(tmp_path)), "--only", "lr1", "--out", str(out)]
    assert main(args) == DIVERGED_EXIT
    printed = capfd.readouterr().out
    assert "lr1 seed 0 diverged at round 1" in printed
    assert "| lr1 | diverged (1) |" in printed  # the table, never NaN
    summary = json.loads((out / "lr1" / "seed0" / "summary.json").read_text())
    assert summary["diverged-at-round"] == 1
    assert main(args) == DIVERGED_EXIT  # the outcome holds ...
    again = capfd.readouterr().out
    assert "[lr1 seed 0] already diverged at round 1, reused" in again  # ... and is reused
    assert "(new)" not in again and "(resume)" not in again


def test_in_a_sweep_a_diverged_cell_is_a_row_of_the_table(tmp_path, capfd):
    out = tmp_path / "out"
    assert main([str(_experiment(tmp_path)), "--out", str(out)]) == 0
    printed = capfd.readouterr().out
    assert "1 of 2 runs diverged: lr1 seed 0 at round 1" in printed
    table = (out / "summary.md").read_text()
    assert "nan" not in table.lower()
    fine = next(line for line in table.splitlines() if line.startswith("| fine "))
    assert "diverged" not in fine.split("|")[2]  # measured
    csv_text = (out / "summary.csv").read_text()
    assert "seed 0: diverged (1)" in csv_text and "nan" not in csv_text.lower()
