"""The robustness benchmark's summary as one attack x defence table.

    python -m simulations.analysis.robustness_table results/robustness-sinusoid

Reads ``summary.csv`` of a robustness experiment (simulations/experiments/robustness-*.yaml)
whose rows are named ``<attack><percent>[+<defence>]``: ``clean``, ``clean+median``,
``scaled20`` (undefended: the weighted mean), ``scaled20+median``. Each cell is the
personalised metric's mean over seeds and its change relative to the clean, undefended row;
``*`` marks a cell within ``--tolerance`` (default 10%) of it, on the right side.
"""

from __future__ import annotations

import argparse
import csv
import math
import re
from pathlib import Path

ROW = re.compile(r"^(?P<attack>[a-z]+)(?P<percent>\d*)(?:\+(?P<defence>[a-z-]+))?$")
UNDEFENDED = "mean"


def read_rows(summary_csv: Path) -> tuple[str, dict[tuple[str, str, str], float]]:
    """(metric, {(attack, percent, defence): personalised metric mean over seeds})."""
    with summary_csv.open() as f:
        rows = list(csv.DictReader(f))
    metric = "acc" if "acc-after-mean" in rows[0] else "mse"
    out = {}
    for r in rows:
        m = ROW.match(r["algorithm"])
        value = r.get(f"{metric}-after-mean", "")
        if value == "" and r.get("diverged"):  # every seed stopped as diverged (report.py)
            value = "nan"
        if m is None or value == "":
            continue
        key = (m["attack"], m["percent"], m["defence"] or UNDEFENDED)
        out[key] = float(value)
    return metric, out


def table(metric: str, cells: dict[tuple[str, str, str], float], tolerance: float) -> str:
    clean = cells[("clean", "", UNDEFENDED)]
    defences = list(dict.fromkeys(d for _, _, d in cells))
    scenarios = list(dict.fromkeys((a, p) for a, p, _ in cells))
    higher_is_better = metric == "acc"
    lines = [
        f"| attack | attackers | {' | '.join(defences)} |",
        "|---|---|" + "---|" * len(defences),
    ]
    for attack, percent in scenarios:
        row = []
        for d in defences:
            value = cells.get((attack, percent, d))
            if value is None:
                row.append("")
                continue
            if not math.isfinite(value):
                row.append("diverged")
                continue
            change = (value - clean) / clean
            worse = -change if higher_is_better else change
            ok = "*" if worse <= tolerance else ""
            row.append(f"{value:.3g} ({change:+.0%}){ok}")
        label = f"{percent}%" if percent else "0%"
        lines.append(f"| {attack} | {label} | {' | '.join(row)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results/<experiment name>")
    parser.add_argument("--tolerance", type=float, default=0.1)
    args = parser.parse_args(argv)
    metric, cells = read_rows(args.results / "summary.csv")
    print(f"personalised {metric}, mean over seeds (change vs clean undefended)\n")
    print(table(metric, cells, args.tolerance))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
