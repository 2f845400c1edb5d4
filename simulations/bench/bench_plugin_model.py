"""The plug-in path costs nothing: a built-in model by import path beside the same model by name.

    nice -n 10 python -m simulations.bench.bench_plugin_model            # 10 pairs of 12 rounds
    python -m simulations.bench.bench_plugin_model --pairs 20 --rounds 20 --model cnn

Each variant is a run of the federation in the loop engine (simulations/loop.py):
``model = "mlp"`` (by name) and ``model = "common.models:mlp"`` with ``model-args =
'{"hidden": [40, 40]}'`` (by path), otherwise the same settings and seed, so the same
model, data and numbers. Both run in this one process, alternating (a warm-up pair
first, not counted), so the load of a shared machine falls on both alike; a run in a
process of its own would add 20 s of imports and the machine's drift between processes.
Printed: every pair's median seconds per round over its middle rounds (round 1 pays the
first use of every client; the last round scores every client), the median over all
pairs' middle rounds per variant, the median of the per-pair ratios, and whether the
trained theta of the two variants is identical.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from simulations.loop import run_in_loop

CASES = {
    # MAML's sinusoid MLP: the smallest per-round work, where any overhead would show
    "mlp": (
        {"dataset": "sinusoid", "hidden-sizes": "40,40"},
        {"model": "common.models:mlp", "model-args": '{"hidden": [40, 40]}'},
    ),
    # MAML's conv net on scikit-learn's digits
    "cnn": (
        {
            "dataset": "digits",
            "partition": "dirichlet",
            "hidden-sizes": "16,16",
            "clients-per-node": 40,
            "fraction-train": 0.5,
            "fraction-evaluate": 0.25,
        },
        {"model": "common.models:cnn", "model-args": '{"hidden": [16, 16]}'},
    ),
}
COMMON = {
    "algorithm": "maml",
    "clients-per-node": 200,
    "min-available-nodes": 1,
    "fraction-train": 0.1,  # 20 clients train per round
    "fraction-evaluate": 0.05,
    "evaluate-every": 5,
    "local-steps": 5,
    "seed": 0,
}


def run_once(config: dict, out: Path) -> list[float]:
    """One run of the federation in this process; the server's seconds of every round."""
    run_in_loop(config | {"run-dir": str(out)}, 1)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10, help="runs of each variant")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--model", choices=sorted(CASES), default="mlp")
    args = parser.parse_args(argv)
    logging.getLogger("flwr").setLevel(logging.WARNING)  # the rounds' INFO lines
    by_name, by_path = CASES[args.model]
    base = COMMON | by_name | {"model": args.model, "num-rounds": args.rounds}
    variants = {"by name": base, "by path": base | by_path}
    middle: dict[str, list[float]] = {v: [] for v in variants}
    ratios = []
    with tempfile.TemporaryDirectory(prefix="bench-plugin-") as tmp:
        for i in range(args.pairs + 1):  # pair 0 warms up (imports, first client data)
            pair = {}
            for name, config in variants.items():
                seconds = run_once(config, Path(tmp) / f"{name.replace(' ', '-')}-{i}")
                pair[name] = seconds[1:-1]
            if i == 0:
                continue
            for name in variants:
                middle[name] += pair[name]
            a, b = (statistics.median(pair[v]) for v in variants)
            ratios.append(b / a)
            print(f"  pair {i}: by name {a:.4f}, by path {b:.4f} s/round", flush=True)
        theta = [
            torch.load(Path(tmp) / f"{v.replace(' ', '-')}-1" / "model.pt", weights_only=True)
            for v in variants
        ]
    same = all(torch.equal(theta[0]["theta"][k], theta[1]["theta"][k]) for k in theta[0]["theta"])
    print(
        f"\n{args.model}: {args.pairs} pairs x {args.rounds} rounds, 20 clients/round, loop "
        f"engine, torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores"
    )
    print(f"{'variant':10s} {'median s/round':>15s} {'rounds':>7s}")
    for v in variants:
        print(f"{v:10s} {statistics.median(middle[v]):15.4f} {len(middle[v]):7d}")
    pooled = statistics.median(middle["by path"]) / statistics.median(middle["by name"])
    print(
        f"ratio by path / by name: {pooled:.3f} (pooled medians), "
        f"{statistics.median(ratios):.3f} (median of the pairs' ratios); "
        f"trained theta identical: {same}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
