"""Pick each algorithm's best setting from a tuning sweep's ``summary.csv``.

    python -m simulations.analysis.pick_best results/bench/sinusoid-tuning-paper \\
        --by new-mse-k1-mean,new-mse-k5-mean,new-mse-k10-mean

A tuning YAML names its rows ``<group>@<setting>`` (``maml@s0.003b0.001``); the rows of one
group are one algorithm's grid. For each group this prints every setting's score (the mean
of the ``--by`` columns) and marks the best: lowest for loss-like columns (``mse``,
``loss``), highest for accuracy (``acc``), or as ``--higher``/``--lower`` says. A row whose
score is NaN (a diverged run) never wins. The winners' overrides are printed as YAML, ready
for the reported experiment's ``algorithms:``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path


def scores(rows: list[dict[str, str]], by: list[str]) -> dict[str, float]:
    missing = [c for c in by if c not in rows[0]]
    if missing:
        raise SystemExit(f"error: columns {missing} not in summary.csv; it has {sorted(rows[0])}")
    out = {}
    for r in rows:
        values = [float(r[c]) if r[c] != "" else math.nan for c in by]
        out[r["algorithm"]] = sum(values) / len(values)
    return out


def pick(rows: list[dict[str, str]], by: list[str], higher: bool) -> dict[str, str]:
    """Group name -> the name of its best row."""
    score = scores(rows, by)
    groups: dict[str, list[str]] = {}
    for name in score:
        groups.setdefault(name.split("@")[0], []).append(name)
    best = {}
    for group, names in groups.items():
        finite = [n for n in names if math.isfinite(score[n])]
        if finite:
            best[group] = (max if higher else min)(finite, key=score.__getitem__)
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", type=Path, help="a sweep's results folder (has summary.csv)")
    parser.add_argument("--by", required=True, help="comma-separated summary.csv columns")
    direction = parser.add_mutually_exclusive_group()
    direction.add_argument("--higher", action="store_true", help="higher is better")
    direction.add_argument("--lower", action="store_true", help="lower is better")
    args = parser.parse_args(argv)
    path = args.results / "summary.csv"
    if not path.exists():
        print(f"error: {path} not found: run the sweep with --out {args.results}", file=sys.stderr)
        return 2
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        print(f"error: {path} has no rows", file=sys.stderr)
        return 2
    by = [c.strip() for c in args.by.split(",")]
    higher = args.higher or (not args.lower and all("acc" in c for c in by))
    score = scores(rows, by)
    best = pick(rows, by, higher)
    winners = set(best.values())
    print(f"score = mean of {by} ({'higher' if higher else 'lower'} is better)")
    for r in rows:
        mark = "  <- best" if r["algorithm"] in winners else ""
        print(f"{r['algorithm']:<36} {score[r['algorithm']]:.4f}{mark}")
    print("\nalgorithms:")
    for group, name in best.items():
        overrides = json.loads(next(r for r in rows if r["algorithm"] == name)["overrides"])
        print(f"  {group}: {json.dumps(overrides)}  # {name}, score {score[name]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
