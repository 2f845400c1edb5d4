"""A million sinusoid clients on one machine, 1,000 per round: seconds, CPU and memory.

    nice -n 10 python -m simulations.bench.bench_scale                      # 1,000,000 and 1,000
    python -m simulations.bench.bench_scale --clients 1000000 --engines loop --rounds 8

For each population (default: 1,000,000, and 1,000 as the baseline with the same work per
round) and each engine (the one-process loop; the Simulation Engine with ``--nodes`` Flower
nodes on a private Ray, one worker per core), runs ``--rounds`` rounds of MAML on
``--nodes`` nodes that each host clients/nodes clients (``clients-per-node``), sampling
``--per-round`` clients per round for training and the same number for the final
evaluation (``final-fraction-evaluate``). Every client is a pure function of (seed, client
id), built when sampled. While a run goes on, the resident memory and CPU time of its whole
process tree are sampled; reported per run: the median wall seconds and CPU seconds of the
training rounds (round 1, which builds caches and starts workers, and the final round,
which also evaluates, are left out), and the peak RSS of the tree. Last, the epsilon (PLD
and RDP accountants) of DP-FedAvg with the same 1,000 clients per round over each population.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

from common.background_sampler import BackgroundSampler
from simulations.bench.bench_throughput import machine

GIB = 1024**3
ACCOUNTANTS = ("pld", "rdp")  # server/privacy.py: the default, and the one it replaced


class TreeMeter(BackgroundSampler):
    """Peak RSS of a process tree, and its CPU seconds when each round's row appears."""

    def __init__(self, pid: int, metrics: Path, interval: float = 0.2) -> None:
        self.root, self.metrics, self.interval = psutil.Process(pid), metrics, interval
        self.peak = 0
        self.cpu_at_round: dict[int, float] = {}
        self.cpu_total = 0.0
        self._cpu_of: dict[int, float] = {}  # pid -> last CPU seconds seen (exited ones kept)

    def tick(self) -> bool:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return True
        rss = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
                t = p.cpu_times()
                self._cpu_of[p.pid] = t.user + t.system
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        self.peak = max(self.peak, rss)
        self.cpu_total = sum(self._cpu_of.values())
        rows = self.metrics.read_text().count("\n") if self.metrics.exists() else 0
        for rnd in range(1, rows + 1):
            self.cpu_at_round.setdefault(rnd, self.cpu_total)
        return True


def config(clients: int, nodes: int, per_round: int, rounds: int, run_dir: Path) -> dict:
    fraction = per_round / clients
    return {
        "dataset": "sinusoid", "algorithm": "maml", "num-rounds": rounds,
        "clients-per-node": clients // nodes, "min-available-nodes": nodes,
        "fraction-train": fraction, "fraction-evaluate": fraction,
        "final-fraction-evaluate": fraction, "evaluate-every": 10**6, "new-clients": 10,
        "run-dir": str(run_dir),
    }  # fmt: skip


LOOP_CHILD = (
    "import json, sys; from simulations.loop import run_in_loop; "
    "run_in_loop(json.loads(sys.argv[1]), int(sys.argv[2]))"
)


def run_once(engine: str, cfg: dict, nodes: int, link=None) -> dict:
    """One run; its per-round wall and CPU seconds and the tree's peak RSS."""
    metrics = Path(cfg["run-dir"]) / "metrics.jsonl"
    Path(cfg["run-dir"]).mkdir(parents=True, exist_ok=True)
    if engine == "loop":
        proc = subprocess.Popen(
            [sys.executable, "-c", LOOP_CHILD, json.dumps(cfg), str(nodes)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        root = proc.pid
    else:
        proc, root = link.start_run(cfg, nodes), link.process.pid
    meter = TreeMeter(root, metrics)
    meter.start()
    try:
        output, _ = proc.communicate(timeout=1800)
    finally:
        meter.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} run failed: {(output or '')[-2000:]}")
    if link is not None:
        link.check_finished(output)
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    cpu = meter.cpu_at_round
    middle = [r["round"] for r in rows[1:-1]]  # not round 1 (warm-up), not the final one
    return {
        "s/round": statistics.median(r["seconds"] for r in rows[1:-1]),
        "cpu-s/round": statistics.median(cpu[r] - cpu[r - 1] for r in middle if r - 1 in cpu),
        "peak-rss-gib": meter.peak / GIB,
        "first-round-s": rows[0]["seconds"],
    }


def epsilon_row(
    clients: int, per_round: int, z: float, rounds: int, delta: float, accountant: str
) -> float:
    from server.privacy import PrivacyLedger

    ledger = PrivacyLedger().add(min(1.0, per_round / clients), z, rounds)
    return ledger.epsilon(delta, accountant)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--clients", default="1000000,1000", help="populations, comma-separated")
    p.add_argument("--per-round", type=int, default=1000)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--engines", default="loop,simulation")
    p.add_argument("--out", type=Path, help="run folders (default: a temp folder)")
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="fedmeta-scale-"))
    populations = [int(c) for c in args.clients.split(",")]
    engines = args.engines.split(",")
    print(f"machine: {machine()}", flush=True)  # with the load average
    print("| engine | clients | s/round | CPU s/round | peak RSS (GiB) | round 1 (s) |")
    print("|---|---:|---:|---:|---:|---:|", flush=True)
    for engine in engines:
        for clients in populations:
            run_dir = out / f"{engine}-{clients}"
            cfg = config(clients, args.nodes, args.per_round, args.rounds, run_dir)
            if engine == "loop":
                r = run_once("loop", cfg, args.nodes)
            else:
                from simulations.engine import simulation_superlink

                with simulation_superlink(out / f"flwr-{clients}") as link:
                    r = run_once("simulation", cfg, args.nodes, link)
            print(
                f"| {engine} | {clients:,} | {r['s/round']:.2f} | {r['cpu-s/round']:.2f} | "
                f"{r['peak-rss-gib']:.2f} | {r['first-round-s']:.1f} |",
                flush=True,
            )
    print(f"\nDP-FedAvg, {args.per_round} per round, z = 1.0, 1,000 rounds, delta = 1e-6:")
    for clients in populations:
        pld, rdp = (epsilon_row(clients, args.per_round, 1.0, 1000, 1e-6, a) for a in ACCOUNTANTS)
        q = min(1, args.per_round / clients)
        print(f"  {clients:>9,} clients (q = {q:g}): epsilon {pld:.3g} (PLD), {rdp:.3g} (RDP)")
    print(f"load average after: {os.getloadavg()[0]:.1f}; runs in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
