"""Tables and plots from an experiment's results folder.

The per-seed figure of a run is the across-client mean of its final round (which scores
every client); the table gives mean +- std of that over seeds, for the personalised
model (after k adaptation steps) and for the shared model as it is (before).

Plots: ``<metric>_vs_round.png`` (personalised metric per evaluated round, one line per
algorithm), ``new_clients_<metric>_vs_steps.png`` (never-seen clients after k adaptation
steps, paired over k) and ``<metric>_per_client.png``. A run that diverged (NaN/inf, or a
loss-like metric above ``EXPLODED`` times its first value) is left out of its algorithm's
mean and counted in the legend; an algorithm whose every seed diverged is drawn dashed and
clipped, and the y-axis stays on the range of the stable curves, so one run at 1e11 does
not flatten the others into a band.

A run that stopped as diverged (summary.json's ``diverged-at-round``, server/divergence.py)
is an outcome, not a measurement: the table's figures are over the seeds that finished, a
``diverged`` column names the others ("seed 1 at round 35"), and a figure no seed measured
reads "diverged (35)"; its curve is drawn dashed, labelled with its round. A figure is never
NaN: clients whose personalisation diverged are left out of the across-client means by the
server and counted in the "clients diverged" column. ``local`` has no shared model, so its
new-client columns (a never-trained initial model) are chance by construction: "-".
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass
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


DIVERGED_KEY = "diverged-at-round"  # summary.json of a run that stopped as diverged
CLIENTS_DIVERGED = "diverged-after"  # clients whose personalisation diverged (server)
FIGURES = ("-mean", "-worst10", "-pooled")


def _figures(summary: dict[str, Any], algorithm: str) -> dict[str, float]:
    """The summary's reported figures that are numbers (null: not measured), without the
    new-client figures of ``local``, which never trains the model new clients start from."""
    out = {}
    for key, value in summary.items():
        if key.startswith("new-") and algorithm == "local":
            continue
        if key.endswith(FIGURES) and isinstance(value, int | float) and np.isfinite(value):
            out[key] = float(value)
    return out


def collect(exp: Experiment, out: Path) -> list[dict[str, Any]]:
    """One row per algorithm with the per-seed values of every reported figure (seeds
    that finished), and the seeds that diverged with their rounds."""
    rows = []
    for name, overrides in exp.algorithms.items():
        runs = {seed: s for seed in exp.seeds if (s := _read(out / name / f"seed{seed}"))}
        if not runs:
            continue
        finished = [s for s in runs.values() if DIVERGED_KEY not in s]
        diverged = {seed: int(s[DIVERGED_KEY]) for seed, s in runs.items() if DIVERGED_KEY in s}
        figures = [_figures(s, overrides.get("algorithm", name)) for s in finished]
        keys = list(dict.fromkeys(k for f in figures for k in f))
        rows.append(
            {
                "algorithm": name,
                "overrides": overrides,
                "metric": _metric(finished[0] if finished else {})[0],
                "seeds": len(runs),
                "values": {k: [f[k] for f in figures if k in f] for k in keys},
                "diverged": diverged,
                "clients-diverged": [s.get(CLIENTS_DIVERGED, 0) or 0 for s in finished],
                "new-clients-diverged": [_new_diverged(s) for s in finished],
                "seconds": [s["seconds"] for s in runs.values()],
                "rounds": next(iter(runs.values()))["rounds"],
            }
        )
    metric = next((r["metric"] for r in rows if r["values"]), "mse")
    return [r | {"metric": metric} for r in rows]


def _new_diverged(summary: dict[str, Any]) -> int:
    """New clients whose adaptation diverged, at the step count where most did."""
    counts = [v for k, v in summary.items() if k.startswith("new-clients-k") and "diverged" in k]
    return int(max(counts, default=0) or 0)


def _cell(values: list[float], diverged: dict[int, int]) -> str:
    """mean ± std over the finished seeds; "diverged (r, ...)" where none measured it."""
    if values and diverged:  # over fewer seeds than the row has: say how many
        return f"{_mean_std(values)} ({len(values)} of {len(values) + len(diverged)} seeds)"
    if values:
        return _mean_std(values)
    if diverged:
        return f"diverged ({', '.join(str(r) for r in diverged.values())})"
    return "n/a"


def _diverged_seeds(diverged: dict[int, int]) -> str:
    return ", ".join(f"seed {seed} at round {r}" for seed, r in diverged.items()) or "-"


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
    if any(f"{m}-after-pooled" in r["values"] for r in rows):
        # sample-weighted accuracy, the figure LEAF / Per-FedAvg / pFedMe publish
        cols.insert(1, (f"{m}-after-pooled", f"personalised {m}, pooled"))
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
    # Only where something diverged: a column of the clients left out of the means, and
    # one naming the seeds that stopped as diverged (left out of every figure).
    extra = []
    if any(any(r["clients-diverged"]) for r in rows):
        extra.append(("clients diverged", lambda r: _mean_or_dash(r["clients-diverged"])))
    if any(any(r["new-clients-diverged"]) for r in rows):
        show_new = lambda r: _mean_or_dash(r["new-clients-diverged"])  # noqa: E731
        extra.append(("new clients diverged", show_new))
    if any(r["diverged"] for r in rows):
        extra.append(("diverged", lambda r: _diverged_seeds(r["diverged"])))
    lines = [
        f"# {exp.name}",
        "",
        f"{len(exp.seeds)} seeds {list(exp.seeds)}, {exp.describe_layout()}, "
        f"engine `{exp.engine}`. Mean ± std over seeds of the across-client mean "
        f"({better} is better). Shared settings: `{json.dumps(exp.base, sort_keys=True)}`.",
        "",
        "| algorithm | "
        + " | ".join([c[1] for c in cols] + [e[0] for e in extra])
        + " | rounds | s/run | overrides |",
        "|---|" + "---|" * (len(cols) + len(extra)) + "---|---|---|",
    ]
    for r in rows:
        cells = [_cell(r["values"].get(k, []), r["diverged"]) for k, _ in cols]
        cells += [show(r) for _, show in extra]
        overrides = ", ".join(f"{k}={v}" for k, v in r["overrides"].items()) or "-"
        lines.append(
            f"| {r['algorithm']} | "
            + " | ".join(cells)
            + f" | {r['rounds']} | {np.mean(r['seconds']):.0f} | {overrides} |"
        )
    path.write_text("\n".join(lines) + "\n")


def _mean_or_dash(counts: list[float]) -> str:
    """Clients left out of the means per seed: "3" or "0-7" across seeds; "-" for none."""
    if not counts or not any(counts):
        return "-"
    lo, hi = int(min(counts)), int(max(counts))
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = sorted({k for r in rows for k in r["values"]})
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["algorithm", "seeds", "rounds", "seconds_mean"]
            + [f"{k}{s}" for k in keys for s in ("", "_std")]
            + ["clients_diverged_max", "diverged", "overrides"]
        )
        for r in rows:
            stats = []
            for k in keys:  # over the finished seeds; a figure none measured is empty
                v = r["values"].get(k, [])
                stats += [np.mean(v) if v else "", np.std(v) if v else ""]
            w.writerow(
                [
                    r["algorithm"],
                    r["seeds"],
                    r["rounds"],
                    np.mean(r["seconds"]),
                    *stats,
                    int(max(r["clients-diverged"], default=0)),
                    "; ".join(f"seed {s}: diverged ({at})" for s, at in r["diverged"].items()),
                    json.dumps(r["overrides"], sort_keys=True),
                ]
            )


def _plots(exp: Experiment, rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use(MATPLOTLIB_BACKEND)
    import matplotlib.pyplot as plt

    metric = rows[0]["metric"]
    _curves(plt, exp, rows, out, metric)
    _new_clients_vs_steps(plt, exp, rows, out, metric)
    _distributions(plt, exp, rows, out, metric)
    if exp.base.get("dataset", "sinusoid") == "sinusoid":
        from simulations.analysis.sinusoid_plot import plot_new_clients

        plot_new_clients(exp, [r["algorithm"] for r in rows], out)


EXPLODED = 10.0  # a lower-is-better curve this many times above where runs start diverged


def diverged(
    values: Sequence[float], higher_is_better: bool, reference: float | None = None
) -> bool:
    """A run's curve diverged: a NaN/inf anywhere, or (loss-like metrics) it exploded to
    more than ``EXPLODED`` times ``reference`` (default: its own first value; a plot passes
    the median first value of all its runs, so a run that starts exploded is caught too)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return False
    if not np.isfinite(v).all():
        return True
    start = v[0] if reference is None else reference
    return not higher_is_better and bool(v.max() > EXPLODED * max(start, 1e-12))


def typical_start(per_run: Sequence[dict[float, float]]) -> float | None:
    """The median over runs of each run's first finite value (None if there is none)."""
    firsts = [d[min(d)] for d in per_run if d and np.isfinite(d[min(d)])]
    return float(np.median(firsts)) if firsts else None


@dataclass(frozen=True)
class Curve:
    """One algorithm's curve: the mean over its stable seeds, or over all if none is."""

    label: str
    color: str  # the algorithm's colour, the same in every plot
    x: list[float]
    y: np.ndarray
    low: np.ndarray  # min over the seeds in the mean (the error bar's ends)
    high: np.ndarray  # max over them
    diverged: bool  # no seed is stable: drawn dashed, clipped to the axis


def _curve(
    name: str,
    color: str,
    per_seed: list[dict[float, float]],
    higher_is_better: bool,
    reference: float | None = None,
) -> Curve | None:
    """Mean over seeds at the x values every seed has; diverged seeds are left out of the
    mean and counted in the label (all diverged: the mean of all, marked diverged)."""
    per_seed = [d for d in per_seed if d]
    if not per_seed:
        return None
    x = sorted(set.intersection(*(set(d) for d in per_seed)))
    bad = [diverged([d[k] for k in x], higher_is_better, reference) for d in per_seed]
    stable = [d for d, b in zip(per_seed, bad, strict=True) if not b]
    used = stable or per_seed
    with np.errstate(invalid="ignore"):
        rows = np.array([[d[k] for k in x] for d in used], dtype=float)
        y, low, high = rows.mean(axis=0), rows.min(axis=0), rows.max(axis=0)
    label = name
    if not stable:
        label += " (diverged" + (f" in {len(bad)}/{len(bad)} seeds)" if len(bad) > 1 else ")")
    elif any(bad):
        label += f" ({sum(bad)}/{len(bad)} seeds diverged, left out of the mean)"
    return Curve(label, color, x, y, low, high, diverged=not stable)


def _stable_limits(curves: list[Curve], log: bool, spread: bool) -> tuple[float, float] | None:
    """y range of the stable curves (their seeds' min-max with ``spread``, and a margin)."""
    ys = np.concatenate(
        [v for c in curves if not c.diverged for v in ((c.low, c.high) if spread else (c.y,))]
        or [np.array([])]
    )
    ys = ys[np.isfinite(ys) & ((ys > 0) if log else True)]
    if ys.size == 0:
        return None
    lo, hi = float(ys.min()), float(ys.max())
    if log:
        return lo / 1.5, hi * 1.5
    pad = 0.08 * (hi - lo or abs(hi) or 1.0)
    return lo - pad, hi + pad


def _draw(ax: Any, curves: list[Curve], log: bool, errorbars: bool = False) -> None:
    """Stable curves solid; diverged ones dashed, clipped to the stable range, with a
    triangle where a value lies off the axis (or is NaN/inf)."""
    limits = _stable_limits(curves, log, spread=errorbars)
    for c in curves:
        many = len(c.x) >= 50
        if not c.diverged:
            if errorbars and len(c.x) > 1:
                bars = np.stack([c.y - c.low, c.high - c.y])
                ax.errorbar(
                    c.x, c.y, yerr=bars, marker="o", capsize=3, color=c.color, label=c.label
                )
            else:
                ax.plot(c.x, c.y, marker=None if many else ".", color=c.color, label=c.label)
            continue
        if limits is None:  # nothing stable to keep the axis on: draw as it is
            ax.plot(c.x, c.y, linestyle="--", color=c.color, label=c.label)
            continue
        lo, hi = limits
        y = np.where(np.isfinite(c.y), c.y, hi)  # NaN/inf: off the top
        off = (y > hi) | (y < lo) | ~np.isfinite(c.y)
        ax.plot(c.x, np.clip(y, lo, hi), "--", color=c.color, alpha=0.8, label=c.label)
        xs = np.asarray(c.x, dtype=float)
        marks = np.where(y[off] >= hi, hi, lo)
        ax.plot(xs[off], marks, linestyle="none", marker="^", color=c.color, alpha=0.8)
    if limits is not None:
        ax.set_ylim(*limits)


def _all_curves(
    runs: dict[str, list[dict[float, float]]], higher: bool, stopped: Sequence[str] = ()
) -> list[Curve]:
    """One curve per algorithm, in order (colour C0, C1, ...), divergence judged against
    where all runs of the plot typically start; the ``stopped`` ones (runs that stopped as
    diverged) are drawn as diverged whatever their values, labelled by their name."""
    reference = typical_start([d for per_seed in runs.values() for d in per_seed])
    curves = [
        _curve(name, f"C{i % 10}", per_seed, higher, reference)
        for i, (name, per_seed) in enumerate(runs.items())
    ]
    return [
        dataclasses.replace(c, diverged=True, label=name) if name in stopped else c
        for name, c in zip(runs, curves, strict=True)
        if c is not None
    ]


def _finite(values: list[Any]) -> list[float]:
    """The numbers of ``values`` (null: a client whose score was not finite)."""
    return [float(v) for v in values if isinstance(v, int | float) and np.isfinite(v)]


def _round_values(path: Path, key: str) -> dict[float, float]:
    """Evaluated rounds only (every ``evaluate-every`` rounds, and the last): round -> value."""
    if not path.exists():
        return {}
    rounds = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    scored = {x["round"]: x["eval"].get(key) for x in rounds}
    return {k: float(v) for k, v in scored.items() if v is not None}


def _curves(plt: Any, exp: Experiment, rows: list[dict], out: Path, metric: str) -> None:
    higher = metric == "acc"
    runs, stopped = {}, []
    for r in rows:
        name = r["algorithm"]
        per_seed = {
            seed: _round_values(
                out / name / f"seed{seed}" / "metrics.jsonl", f"{metric}-after-mean"
            )
            for seed in exp.seeds
        }
        runs[name] = [d for seed, d in per_seed.items() if seed not in r["diverged"]]
        for seed, at in r["diverged"].items():  # each its own dashed line, up to where it stopped
            label = f"{name} seed {seed} (diverged at round {at})"
            runs[label] = [per_seed[seed]]
            stopped.append(label)
    curves = _all_curves(runs, higher, stopped)
    if not curves:
        return
    fig, ax = plt.subplots(figsize=(10, 4.5))
    if metric == "mse":
        ax.set_yscale("log")
    _draw(ax, curves, log=metric == "mse")
    ax.set_xlabel("round")
    ax.set_ylabel(f"personalised {metric} (sampled clients)")
    _legend_outside(ax)
    ax.set_title(exp.name + _diverged_note(curves))
    fig.tight_layout()
    fig.savefig(out / f"{metric}_vs_round.png", dpi=120)
    plt.close(fig)


def _legend_outside(ax: Any) -> None:
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


def _diverged_note(curves: list[Curve]) -> str:
    return (
        "\n(dashed: diverged, clipped to the stable runs' range)"
        if any(c.diverged for c in curves)
        else ""
    )


def _new_client_steps(summary: dict[str, Any], metric: str) -> dict[float, float]:
    """k -> the new clients' mean metric after k steps, from ``new-<metric>-k<k>-mean``."""
    out = {}
    for key, value in summary.items():
        head, sep, tail = key.partition(f"new-{metric}-k")
        if sep and not head and tail.endswith("-mean") and tail[: -len("-mean")].isdigit():
            out[float(tail[: -len("-mean")])] = float(value)
    return out


def _new_clients_vs_steps(
    plt: Any, exp: Experiment, rows: list[dict], out: Path, metric: str
) -> None:
    """New clients' metric after k adaptation steps, one line per algorithm (mean +- std over
    seeds). Paired: each new client adapts once and is scored at every k on the way."""
    runs = {
        r["algorithm"]: [
            _new_client_steps(s, metric)
            for seed in exp.seeds
            if (s := _read(out / r["algorithm"] / f"seed{seed}"))
        ]
        for r in rows
    }
    curves = [c for c in _all_curves(runs, metric == "acc") if len(c.x) > 1]
    if not curves:
        return
    fig, ax = plt.subplots(figsize=(10, 4.5))
    log = metric == "mse"
    if log:
        ax.set_yscale("log")
    _draw(ax, curves, log=log, errorbars=len(exp.seeds) > 1)
    ax.set_xscale("symlog", linthresh=1)
    steps = sorted({k for c in curves for k in c.x})
    ax.set_xticks(steps, [f"{k:g}" for k in steps])
    ax.set_xlim(-0.3, max(steps) * 1.4)  # room for the end points' error bars
    ax.set_xlabel("adaptation steps k on the new client's own data")
    ax.set_ylabel(f"new clients' {metric} (mean over clients)")
    _legend_outside(ax)
    ax.set_title(f"{exp.name}: never-seen clients, paired over k" + _diverged_note(curves))
    fig.tight_layout()
    fig.savefig(out / f"new_clients_{metric}_vs_steps.png", dpi=120)
    plt.close(fig)


def _distributions(plt: Any, exp: Experiment, rows: list[dict], out: Path, metric: str) -> None:
    key = "acc" if metric == "acc" else "loss"
    data, labels = [], []
    for r in rows:
        f = out / r["algorithm"] / f"seed{exp.seeds[0]}" / "clients.jsonl"
        if not f.exists() or exp.seeds[0] in r["diverged"]:  # no final round: nothing to show
            continue
        last = json.loads(f.read_text().splitlines()[-1])["clients"]
        both = [_finite([c[f"{key}-{when}"] for c in last]) for when in ("before", "after")]
        if all(both):
            data += both
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
