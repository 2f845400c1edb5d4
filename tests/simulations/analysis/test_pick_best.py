"""simulations.analysis.pick_best chooses each group's best row and never a diverged one."""

from __future__ import annotations

import csv
import json

from simulations.analysis.pick_best import main, pick


def _rows(values: dict[str, tuple[str, str]]) -> list[dict[str, str]]:
    return [
        {"algorithm": name, "mse-a": a, "mse-b": b, "overrides": json.dumps({"x": name})}
        for name, (a, b) in values.items()
    ]


def test_lowest_mean_of_the_columns_wins_per_group_and_nan_never_wins():
    rows = _rows(
        {
            "maml@1": ("1.0", "3.0"),  # mean 2.0
            "maml@2": ("2.5", "0.5"),  # mean 1.5 <- best maml
            "maml@3": ("nan", "0.1"),  # diverged
            "fo@1": ("0.9", "0.9"),  # <- best fo
            "fo@2": ("", "0.1"),  # missing value counts as NaN
        }
    )
    assert pick(rows, ["mse-a", "mse-b"], higher=False) == {"maml": "maml@2", "fo": "fo@1"}
    assert pick(rows, ["mse-a", "mse-b"], higher=True) == {"maml": "maml@1", "fo": "fo@1"}


def test_command_prints_winners_as_yaml(tmp_path, capsys):
    rows = _rows({"maml@1": ("1.0", "1.0"), "maml@2": ("0.5", "0.5")})
    with (tmp_path / "summary.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main([str(tmp_path), "--by", "mse-a,mse-b"]) == 0
    out = capsys.readouterr().out
    assert 'maml: {"x": "maml@2"}' in out
    assert main([str(tmp_path / "nowhere"), "--by", "mse-a"]) == 2
