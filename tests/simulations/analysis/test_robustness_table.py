"""The robustness table reads a summary.csv's row names as <attack><percent>[+<defence>]."""

from __future__ import annotations

from simulations.analysis.robustness_table import read_rows, table

CSV = """algorithm,seeds,mse-after-mean,diverged,overrides
clean,3,0.5,,
clean+median,3,1.0,,
scaled20,3,nan,,
scaled20+median,3,0.52,,
lie10+clip-multi-krum,3,0.7,,
lie20,3,,seed 0: diverged (12); seed 1: diverged (30),
"""


def test_rows_become_an_attack_by_defence_table_relative_to_clean(tmp_path):
    path = tmp_path / "summary.csv"
    path.write_text(CSV)
    metric, cells = read_rows(path)
    assert metric == "mse"
    assert cells[("scaled", "20", "median")] == 0.52
    assert cells[("lie", "10", "clip-multi-krum")] == 0.7
    lines = table(metric, cells, tolerance=0.1).splitlines()
    assert lines[0] == "| attack | attackers | mean | median | clip-multi-krum |"
    assert lines[2] == "| clean | 0% | 0.5 (+0%)* | 1 (+100%) |  |"
    assert lines[3] == "| scaled | 20% | diverged | 0.52 (+4%)* |  |"
    assert lines[4] == "| lie | 10% |  |  | 0.7 (+40%) |"
    assert lines[5] == "| lie | 20% | diverged |  |  |"  # every seed stopped as diverged
