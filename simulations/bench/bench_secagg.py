"""Seconds per training round with SecAgg+ beside plain aggregation, in one invocation.

    python -m simulations.bench.bench_secagg            # about 4 min here
    python -m simulations.bench.bench_secagg --quick    # loop engine only, about 1 min

Sinusoid MAML (the quickstart's model and steps), every node hosting 10 clients of which 2
train per round. Each pair of runs differs only in how the sum is formed: 'plain' is the
clipped uniform mean the server computes from the clients' updates (norm-bound = dp-clip),
'secagg' the same mean through Flower's SecAgg+ (server/secagg.py); the DP rows add
client-level DP to both. A round's time is from metrics.jsonl (train + aggregation; no
evaluation until the last round, which is left out); the table shows the median over the
rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from simulations.engine import simulation_superlink
from simulations.loop import run_in_loop

ROUNDS = 6
BASE: dict[str, Any] = {
    "algorithm": "maml",
    "num-rounds": ROUNDS,
    "clients-per-node": 10,
    "fraction-train": 0.2,
    "fraction-evaluate": 0.1,
    "evaluate-every": ROUNDS,
    "local-steps": 5,
    "eval-steps": 1,
    "weighting": "uniform",
}
CLIP = 0.02
MODES: dict[str, dict[str, Any]] = {
    "plain": {"norm-bound": CLIP},
    "secagg": {"secagg": True, "dp-clip": CLIP},
    "plain + DP": {"dp": True, "dp-clip": CLIP, "dp-noise-multiplier": 1.0},
    "secagg + DP": {"secagg": True, "dp": True, "dp-clip": CLIP, "dp-noise-multiplier": 1.0},
}


def round_seconds(run_dir: Path) -> float:
    """Median seconds of the rounds without evaluation."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["seconds"] for r in rows[:-1])


def measure(engine: str, nodes: int, root: Path) -> dict[str, float]:
    out = {}
    config = BASE | {"min-available-nodes": nodes}
    if engine == "loop":
        for mode, extra in MODES.items():
            run_dir = root / f"loop-{nodes}-{mode.replace(' ', '')}"
            run_in_loop(config | extra | {"run-dir": str(run_dir)}, nodes)
            out[mode] = round_seconds(run_dir)
        return out
    with simulation_superlink(root / f"flwr-home-{nodes}") as link:
        for mode, extra in MODES.items():
            run_dir = root / f"sim-{nodes}-{mode.replace(' ', '')}"
            link.run(config | extra | {"run-dir": str(run_dir)}, nodes, timeout=900)
            out[mode] = round_seconds(run_dir)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="loop engine only")
    args = parser.parse_args(argv)
    setups = [("loop", 3), ("loop", 10)] + ([] if args.quick else [("simulation", 3)])
    lines = [
        "| engine | nodes | clients/round | " + " | ".join(MODES) + " | SecAgg+ / plain |",
        "|---|---:|---:|" + "---:|" * (len(MODES) + 1),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for engine, nodes in setups:
            s = measure(engine, nodes, Path(tmp))
            clients = int(nodes * BASE["clients-per-node"] * BASE["fraction-train"])
            cells = " | ".join(f"{s[m]:.3f}" for m in MODES)
            ratio = s["secagg"] / s["plain"]
            lines.append(f"| {engine} | {nodes} | {clients} | {cells} | {ratio:.1f}x |")
            print(lines[-1], flush=True)
    print("\nseconds per training round (median over rounds 1-5)\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
