"""The privacy table pivots rows <algorithm>[@eps<E>] into algorithm x epsilon."""

from __future__ import annotations

from simulations.analysis.privacy_table import cells, main, mechanism_table, new_client_key, table

ROWS = [
    {"algorithm": "maml", "mse-after-mean": "0.3", "mse-after-mean_std": "0.03",
     "new-mse-k1-mean": "1.0", "new-mse-k10-mean": "0.8", "new-mse-k10-mean_std": "0.1",
     "epsilon": "", "noise-multiplier": ""},
    {"algorithm": "maml@eps8", "mse-after-mean": "0.6", "mse-after-mean_std": "0.1",
     "new-mse-k1-mean": "2.0", "new-mse-k10-mean": "1.6", "new-mse-k10-mean_std": "0.2",
     "epsilon": "8.0", "noise-multiplier": "0.62"},
    {"algorithm": "fedavg-ft@eps8", "mse-after-mean": "3.0", "mse-after-mean_std": "0.1",
     "new-mse-k1-mean": "3.0", "new-mse-k10-mean": "3.0", "new-mse-k10-mean_std": "0.2",
     "epsilon": "8.0", "noise-multiplier": "0.62"},
]  # fmt: skip


def test_cells_and_table():
    values = cells(ROWS, "mse-after-mean")
    assert values[("maml", "inf")] == (0.3, 0.03) and values[("maml", "8")] == (0.6, 0.1)
    text = table(values)
    assert "| maml | 0.300 ± 0.030 | 0.600 ± 0.100 (+100%) |" in text
    assert "| fedavg-ft |  | 3.000 ± 0.100 |" in text  # no no-DP row: no change shown
    assert new_client_key(ROWS, "mse") == "new-mse-k10-mean"
    assert new_client_key([{"mse-after-mean": "1"}], "mse") is None  # no new clients


def test_main_reads_a_summary(tmp_path, capsys):
    keys = list(ROWS[0])
    lines = [",".join(keys)] + [",".join(r[k] for k in keys) for r in ROWS]
    (tmp_path / "summary.csv").write_text("\n".join(lines) + "\n")
    run = tmp_path / "maml@eps8" / "seed0"
    run.mkdir(parents=True)
    (run / "summary.json").write_text('{"noise-multiplier": 0.62, "epsilon": 7.99}')
    assert main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "ε = 8 |" in out and "ε = 8: z = 0.620 (spent 7.990)" in out


def test_central_and_distributed_rows_are_set_side_by_side():
    values = {("maml", "2"): (0.5, 0.1), ("distributed-maml", "2"): (0.55, 0.2),
              ("maml", "8"): (0.4, 0.1)}  # fmt: skip
    text = mechanism_table(values)
    assert "| maml | 2 | 0.500 ± 0.100 | 0.550 ± 0.200 | 1.100 |" in text
    assert "| maml | 8 |" not in text  # no distributed row to compare with
