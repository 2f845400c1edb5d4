"""The privacy-utility experiment's summary as algorithm x epsilon tables.

    python -m simulations.analysis.privacy_table results/privacy-sinusoid

Reads ``summary.csv`` of an experiment whose rows are named ``<algorithm>`` (no DP,
epsilon = infinity) and ``<algorithm>@eps<E>`` (simulations/experiments/privacy-*.yaml).
Prints two tables, the personalised metric and the new clients' metric after the most
adaptation steps, each cell the mean +- std over seeds and its change relative to the
algorithm's own no-DP row, and the noise multipliers the accountant calibrated (read from
the runs' summary.json). Rows named ``distributed-<algorithm>@eps<E>`` (distributed DP under
SecAgg+, simulations/experiments/privacy-distributed-*.yaml) are also set side by side with
``<algorithm>@eps<E>`` (central DP), with their ratio.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
from pathlib import Path

ROW = re.compile(r"^(?P<algorithm>[a-z-]+)(?:@eps(?P<epsilon>[0-9.]+))?$")
NO_DP = "inf"


def read_rows(summary_csv: Path) -> list[dict[str, str]]:
    with summary_csv.open() as f:
        return list(csv.DictReader(f))


def new_client_key(rows: list[dict[str, str]], metric: str) -> str | None:
    """The new clients' metric after the most adaptation steps, e.g. new-mse-k10-mean (None
    when the experiment scored no new clients)."""
    steps = [int(m[1]) for k in rows[0] if (m := re.fullmatch(rf"new-{metric}-k(\d+)-mean", k))]
    return f"new-{metric}-k{max(steps)}-mean" if steps else None


def cells(rows: list[dict[str, str]], key: str) -> dict[tuple[str, str], tuple[float, float]]:
    """(algorithm, epsilon) -> (mean, std) of ``key`` over seeds."""
    out = {}
    for r in rows:
        m = ROW.match(r["algorithm"])
        if m is None or r.get(key, "") == "":
            continue
        std = r.get(f"{key}_std", "") or "nan"
        out[(m["algorithm"], m["epsilon"] or NO_DP)] = (float(r[key]), float(std))
    return out


def table(values: dict[tuple[str, str], tuple[float, float]]) -> str:
    algorithms = list(dict.fromkeys(a for a, _ in values))
    epsilons = [NO_DP] + sorted({e for _, e in values if e != NO_DP}, key=float, reverse=True)
    head = " | ".join("∞ (no DP)" if e == NO_DP else f"ε = {e}" for e in epsilons)
    lines = [f"| algorithm | {head} |", "|---|" + "---|" * len(epsilons)]
    for a in algorithms:
        base = values.get((a, NO_DP), (math.nan, math.nan))[0]
        row = []
        for e in epsilons:
            if (a, e) not in values:
                row.append("")
                continue
            mean, std = values[(a, e)]
            known = e != NO_DP and math.isfinite(base) and base != 0
            change = f" ({(mean - base) / abs(base):+.0%})" if known else ""
            row.append(f"{mean:.3f} ± {std:.3f}{change}")
        lines.append(f"| {a} | {' | '.join(row)} |")
    return "\n".join(lines)


DISTRIBUTED = "distributed-"


def mechanism_table(values: dict[tuple[str, str], tuple[float, float]]) -> str:
    """Central and distributed DP side by side, per algorithm and epsilon, and their ratio."""
    lines = [
        "| algorithm | ε | central DP | distributed DP | distributed / central |",
        "|---|---|---|---|---|",
    ]
    for (a, e), (mean, std) in sorted(values.items()):
        if not a.startswith(DISTRIBUTED) or (a[len(DISTRIBUTED) :], e) not in values:
            continue
        base, base_std = values[(a[len(DISTRIBUTED) :], e)]
        ratio = f"{mean / base:.3f}" if base else ""
        lines.append(
            f"| {a[len(DISTRIBUTED) :]} | {e} | {base:.3f} ± {base_std:.3f} | "
            f"{mean:.3f} ± {std:.3f} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="results/<experiment name>")
    args = parser.parse_args(argv)
    rows = read_rows(args.results / "summary.csv")
    metric = "acc" if "acc-after-mean" in rows[0] else "mse"
    new = new_client_key(rows, metric)
    print(f"personalised {metric} (mean ± std over seeds; change vs no DP)\n")
    personalised = cells(rows, f"{metric}-after-mean")
    print(table(personalised))
    if any(a.startswith(DISTRIBUTED) for a, _ in personalised):
        print(f"\ncentral vs distributed DP, personalised {metric}\n")
        print(mechanism_table(personalised))
    if new is not None:
        print(f"\nnew clients, {new} (mean ± std over seeds)\n")
        print(table(cells(rows, new)))
    print(f"\nnoise multipliers and epsilon spent: {spent_per_epsilon(args.results)}")
    return 0


def spent_per_epsilon(results: Path) -> str:
    """z and the epsilon spent, per epsilon row (from the runs' summary.json)."""
    seen: dict[str, tuple[float, float]] = {}
    for path in sorted(results.glob("*@eps*/seed*/summary.json")):
        m = ROW.match(path.parent.parent.name)
        summary = json.loads(path.read_text())
        if m and m["epsilon"] and "noise-multiplier" in summary:
            seen.setdefault(m["epsilon"], (summary["noise-multiplier"], summary["epsilon"]))
    return ", ".join(
        f"ε = {e}: z = {z:.3f} (spent {spent:.3f})"
        for e, (z, spent) in sorted(seen.items(), key=lambda kv: -float(kv[0]))
    )


if __name__ == "__main__":
    raise SystemExit(main())
