"""The plug-in path costs nothing: a built-in model by import path beside the same model by name.

    nice -n 10 python -m simulations.bench_plugin_model                 # 3 pairs, 25 rounds
    python -m simulations.bench_plugin_model --pairs 5 --rounds 40 --model cnn

Each variant is one run of the federation in the loop engine (simulations/loop.py), in a
fresh process so both pay the same start-up: ``model = "mlp"`` (by name) and
``model = "common.models:mlp"`` with ``model-args = '{"hidden": [40, 40]}'`` (by path),
otherwise the same settings and seed, so the same model, data and numbers. Runs
alternate (name, path, name, path, ...) so drift on a shared machine hits both alike.
Printed: the median seconds per round of each variant over every run's middle rounds
(round 1 pays the first use of every client; the last round scores every client), their
ratio, and whether the trained theta of the two is identical.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

CASES = {
    # MAML's sinusoid MLP: the smallest per-round work, where any overhead would show
    "mlp": (
        {"dataset": "sinusoid", "hidden-sizes": "40,40"},
        {"model": "common.models:mlp", "model-args": '{"hidden": [40, 40]}'},
    ),
    # MAML's conv net on scikit-learn's digits
    "cnn": (
        {"dataset": "digits", "partition": "dirichlet", "hidden-sizes": "16,16"},
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
    """One run in a fresh process; the server's seconds of every round."""
    code = (
        "import json, sys; from simulations.loop import run_in_loop; "
        "run_in_loop(json.loads(sys.argv[1]), 1)"
    )
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    subprocess.run(
        [sys.executable, "-c", code, json.dumps(config | {"run-dir": str(out)})],
        env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["seconds"] for r in rows]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="runs of each variant")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--model", choices=sorted(CASES), default="mlp")
    args = parser.parse_args(argv)
    by_name, by_path = CASES[args.model]
    base = COMMON | by_name | {"model": args.model, "num-rounds": args.rounds}
    variants = {"by name": base, "by path": base | by_path}
    middle: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory(prefix="bench-plugin-") as tmp:
        for i in range(args.pairs):
            for name, config in variants.items():
                out = Path(tmp) / f"{name.replace(' ', '-')}-{i}"
                seconds = run_once(config, out)
                middle[name] += seconds[1:-1]
                print(
                    f"  run {i + 1} {name}: median {statistics.median(seconds[1:-1]):.4f} s/round"
                )
        theta = [
            torch.load(Path(tmp) / f"{v.replace(' ', '-')}-0" / "model.pt", weights_only=True)
            for v in variants
        ]
    same = all(torch.equal(theta[0]["theta"][k], theta[1]["theta"][k]) for k in theta[0]["theta"])
    name_s, path_s = (statistics.median(middle[v]) for v in variants)
    print(
        f"\n{args.model}, {args.rounds} rounds x {args.pairs} runs each, 20 clients/round, "
        f"loop engine, torch {torch.__version__}, {platform.machine()}, {os.cpu_count()} cores"
    )
    print(f"{'variant':10s} {'median s/round':>15s} {'rounds':>7s}")
    for v in variants:
        print(f"{v:10s} {statistics.median(middle[v]):15.4f} {len(middle[v]):7d}")
    print(f"ratio by path / by name: {path_s / name_s:.3f}; trained theta identical: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
