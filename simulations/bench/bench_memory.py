"""Memory over rounds: 1,000 registered clients on Flower's Simulation Engine.

    nice -n 5 python -m simulations.bench.bench_memory                # 1000 nodes, 10% per round
    python -m simulations.bench.bench_memory --registered 1000 --fraction 0.1 --rounds 40

Runs the app (sinusoid, default settings) and samples the RSS of every process the
SuperLink started, once a second, grouped by role (SuperLink, SuperExec, the
``flwr-simulation`` process that holds the ServerApp, the LinkState and the Ray driver,
Ray's daemons, the Ray workers that run the ClientApp). Prints the RSS at the end of
every ``--every``-th round and the growth per round over the second half of the run
(after every cache could have filled), from a least-squares line through those samples.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from simulations.bench.bench_throughput import machine
from simulations.bench.proc_memory import ROLES, TreeSampler
from simulations.engine import simulation_superlink

MIB = 1024**2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--registered", type=int, default=1000)
    p.add_argument("--fraction", type=float, default=0.1, help="fraction-train and -evaluate")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--every", type=int, default=5, help="print every k-th round")
    p.add_argument("--algorithm", default="perfedavg-hf")
    p.add_argument("--out", type=Path, help="run folder (default: a temp folder)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="fedmeta-mem-"))
    run_dir = out / "run"
    config = {
        "dataset": "sinusoid", "algorithm": args.algorithm, "num-rounds": args.rounds,
        "fraction-train": args.fraction, "fraction-evaluate": args.fraction,
        "run-dir": str(run_dir),
    }  # fmt: skip
    print(f"machine: {machine()}", flush=True)
    print(f"{args.registered} registered, {args.fraction:g} sampled per round, "
          f"{args.rounds} rounds, {args.algorithm}; run in {run_dir}", flush=True)  # fmt: skip
    with (
        simulation_superlink() as link,
        TreeSampler(link.process.pid, run_dir / "metrics.jsonl") as sampler,
    ):
        link.run(config, args.registered, log_file=out / "engine.log")
    by_round = sampler.by_round()
    roles = [r for r in ROLES if any(s.rss[r] for s in sampler.samples)]
    print("\n| round | " + " | ".join(roles) + " | total |")
    print("|---:|" + "---:|" * (len(roles) + 1))
    last = args.rounds - 1  # the final round scores everyone; read growth before it
    for rnd in sorted(by_round):
        if rnd == 0 or not (rnd == 1 or rnd % args.every == 0 or rnd == last):
            continue
        s = by_round[rnd]
        cells = " | ".join(f"{s.rss[r] / MIB:.0f}" for r in roles)
        print(f"| {rnd} | {cells} | {s.total / MIB:.0f} |")
    half = [r for r in sorted(by_round) if last // 2 <= r <= last]
    if len(half) >= 2:
        print(f"\nMiB per round over rounds {half[0]}-{half[-1]} (least squares):")
        for role in [*roles, "total"]:
            ys = [
                (by_round[r].total if role == "total" else by_round[r].rss[role]) / MIB
                for r in half
            ]
            slope = np.polyfit(half, ys, 1)[0]
            print(f"  {role:12s} {slope:+.2f}")
    print(f"peak RSS of the tree: {sampler.peak / MIB:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
