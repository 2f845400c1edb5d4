"""Tables and plots from an experiment's results folder.

The per-seed figure of a run is the across-client mean of its final round (which scores
every client); the table gives mean +- std of that over seeds, for the personalised
model (after k adaptation steps) and for the shared model as it is (before).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from simulations.experiment import Experiment

MATPLOTLIB_BACKEND = "Agg"  # files only; no display on servers and CI


def _read(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _metric(summary: dict[str, Any]) -> tuple[str, bool]:
    """('acc', True) for classification, ('mse', False) for regression."""
    return ("acc", True) if "acc-after-mean" in summary else ("mse", False)


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def collect(exp: Experiment, out: Path) -> list[dict[str, Any]]:
    """One row per algorithm with the per-seed values of every reported figure."""
    rows = []
    for name, overrides in exp.algorithms.items():
        summaries = [s for seed in exp.seeds if (s := _read(out / name / f"seed{seed}"))]
        if not summaries:
            continue
        metric, _ = _metric(summaries[0])
        keys = [k for k in summaries[0] if k.endswith("-mean") or k.endswith("-worst10")]
        values = {k: [s[k] for s in summaries if k in s] for k in keys}
        rows.append(
            {
                "algorithm": name,
                "overrides": overrides,
                "metric": metric,
                "seeds": len(summaries),
                "values": values,
                "seconds": [s["seconds"] for s in summaries],
                "rounds": summaries[0]["rounds"],
            }
        )
    return rows


def write_report(exp: Experiment, out: Path) -> None:
    rows = collect(exp, out)
    if not rows:
        return
    _write_markdown(exp, rows, out / "summary.md")
    _write_csv(rows, out / "summary.csv")
    _plots(exp, rows, out)


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    m = rows[0]["metric"]
    cols = [
        (f"{m}-after-mean", f"personalised {m}"),
        (f"{m}-after-worst10", f"worst-10% {m}"),
        (f"{m}-before-mean", f"{m} before adapting"),
    ]
    prefix = f"new-{m}-k"  # new-acc-k<k>-mean (classification), new-mse-k<k>-mean (regression)
    new = sorted(
        {k for r in rows for k in r["values"] if k.startswith(prefix) and k.endswith("-mean")},
        key=lambda k: int(k.split("-k")[1].split("-")[0]),
    )
    cols += [(k, f"new clients, {k.split('-')[2][1:]} steps") for k in new]
    return cols


def _write_markdown(exp: Experiment, rows: list[dict[str, Any]], path: Path) -> None:
    cols = _columns(rows)
    better = "higher" if rows[0]["metric"] == "acc" else "lower"
    lines = [
        f"# {exp.name}",
        "",
        f"{len(exp.seeds)} seeds {list(exp.seeds)}, {exp.describe_layout()}, "
        f"engine `{exp.engine}`. Mean ± std over seeds of the across-client mean "
        f"({better} is better). Shared settings: `{json.dumps(exp.base, sort_keys=True)}`.",
        "",
        "| algorithm | " + " | ".join(c[1] for c in cols) + " | rounds | s/run | overrides |",
        "|---|" + "---|" * len(cols) + "---|---|---|",
    ]
    for r in rows:
        cells = [_mean_std(r["values"].get(k, [])) for k, _ in cols]
        overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
        lines.append(
            f"| {r['algorithm']} | "
            + " | ".join(cells)
            + f" | {r['rounds']} | {np.mean(r['seconds']):.0f} | {overrides} |"
        )
    path.write_text("\n".join(lines) + "\n")


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = sorted({k for r in rows for k in r["values"]})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["algorithm", "seeds", "rounds", "seconds_mean"]
            + [f"{k}{s}" for k in keys for s in ("", "_std")]
            + ["overrides"]
        )
        for r in rows:
            stats = []
            for k in keys:
                v = r["values"].get(k, [])
                stats += [np.mean(v) if v else "", np.std(v) if v else ""]
            w.writerow(
                [
                    r["algorithm"],
                    r["seeds"],
                    r["rounds"],
                    np.mean(r["seconds"]),
                    *stats,
                    json.dumps(r["overrides"], sort_keys=True),
                ]
            )


def _plots(exp: Experiment, rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use(MATPLOTLIB_BACKEND)
    import matplotlib.pyplot as plt

    metric = rows[0]["metric"]
    _curves(plt, exp, rows, out, metric)
    _distributions(plt, exp, rows, out, metric)
    if exp.base.get("dataset", "sinusoid") == "sinusoid":
        from simulations.sinusoid_plot import plot_new_clients

        plot_new_clients(exp, [r["algorithm"] for r in rows], out)


def _curves(plt: Any, exp: Experiment, rows: list[dict], out: Path, metric: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        per_seed = []
        for seed in exp.seeds:
            f = out / r["algorithm"] / f"seed{seed}" / "metrics.jsonl"
            if f.exists():
                rounds = [json.loads(x) for x in f.read_text().splitlines() if x.strip()]
                # only rounds that evaluated (every `evaluate-every` rounds, and the last)
                scored = {x["round"]: x["eval"].get(f"{metric}-after-mean") for x in rounds}
                per_seed.append({k: v for k, v in scored.items() if v is not None})
        common = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
        ys = [np.mean([d[k] for d in per_seed]) for k in common]
        ax.plot(common, ys, marker="." if len(common) < 50 else None, label=r["algorithm"])
    ax.set_xlabel("round")
    ax.set_ylabel(f"personalised {metric} (sampled clients)")
    if metric == "mse":
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(exp.name)
    fig.tight_layout()
    fig.savefig(out / f"{metric}_vs_round.png", dpi=120)
    plt.close(fig)


def _distributions(plt: Any, exp: Experiment, rows: list[dict], out: Path, metric: str) -> None:
    key = "acc" if metric == "acc" else "loss"
    data, labels = [], []
    for r in rows:
        f = out / r["algorithm"] / f"seed{exp.seeds[0]}" / "clients.jsonl"
        if not f.exists():
            continue
        last = json.loads(f.read_text().splitlines()[-1])["clients"]
        data += [[c[f"{key}-before"] for c in last], [c[f"{key}-after"] for c in last]]
        labels += [f"{r['algorithm']}\nbefore", f"{r['algorithm']}\nafter"]
    if not data:
        return
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 4))
    ax.boxplot(data, showfliers=True)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set_ylabel(f"per-client {metric} (final round, seed {exp.seeds[0]})")
    if metric == "mse":
        ax.set_yscale("log")
    fig.tight_layout()
    fig.savefig(out / f"{metric}_per_client.png", dpi=120)
    plt.close(fig)
