"""Throughput: seconds per round on Flower's Simulation Engine beside the same work in a loop.

    nice -n 5 python -m simulations.bench.bench_throughput            # 10, 100, 1000 per round
    python -m simulations.bench.bench_throughput --sizes 10,100 --rounds 8 --engines engine,loop

For each size C, ``--registered`` nodes (default 1000) serve one sinusoid task each and
a fraction C/N of them trains and is scored every round (the default app settings:
perfedavg-hf, MLP 40-40, 5 local steps, 10 evaluation steps). The same run config goes
through each of ``--engines``:

  engine         the Simulation Engine (a SuperLink + ``flwr run``; Ray actors, one per
                 ``--cpus-per-client`` cores), as the project runs it;
  engine-flower  the same, with Flower's own ``Grid.send_and_receive`` instead of the
                 windowed delivery of server/delivery.py (the before/after of that change);
  loop           :class:`simulations.loop.LoopGrid`: the server loop and the real ClientApp
                 in one process, torch limited to the threads of one actor.

Every run writes ``metrics.jsonl``, whose ``seconds`` is the server's wall time of a round
(train + evaluate). Printed per size: the median over the middle rounds, its ratio to the
loop, round 1 apart (Ray start, node discovery, first use of every client), the last round
apart (every run's final round scores all N clients), and the peak RSS of each process
tree, sampled every second. Figures, not a test: on a shared machine quote medians and
ratios from one invocation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from server.delivery import FLOWER_DELIVERY_ENV
from simulations.bench.proc_memory import TreeSampler
from simulations.engine import SuperLink, simulation_superlink

GIB = 1024**3
ENGINES = ("engine", "engine-flower", "loop")


@dataclass
class Timing:
    engine: str
    rounds: list[float]  # server seconds per round, round 1 first
    wall: float  # the whole run, start-up included
    peak_rss: int
    all_sampled: bool  # every node trains each round: the last round is an ordinary one

    @property
    def first(self) -> float:
        return self.rounds[0]

    @property
    def steady(self) -> float:
        middle = self.rounds[1:] if self.all_sampled else self.rounds[1:-1]
        return statistics.median(middle)

    @property
    def last(self) -> float:
        return self.rounds[-1]

    def line(self, size: int) -> str:
        rounds = " ".join(f"{r:.2f}" for r in self.rounds)
        return (
            f"  {size:5d}/round {self.engine:13s}: rounds {rounds} s; "
            f"run {self.wall:.0f} s; peak RSS {self.peak_rss / GIB:.2f} GiB"
        )


def run_config(size: int, registered: int, rounds: int, run_dir: Path, extra: dict) -> dict:
    fraction = size / registered
    return {
        "dataset": "sinusoid",
        "algorithm": "perfedavg-hf",  # what docs/performance.md measured
        "server-lr": 0.001,
        "num-rounds": rounds,
        "fraction-train": fraction,
        "fraction-evaluate": fraction,
        "run-dir": str(run_dir),
        **extra,
    }


def _round_seconds(run_dir: Path) -> list[float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [float(json.loads(x)["seconds"]) for x in lines]


def time_engine(name: str, link: SuperLink, config: dict, registered: int, cpus: int) -> Timing:
    run_dir = Path(config["run-dir"])
    t0 = time.monotonic()
    with TreeSampler(link.process.pid, run_dir / "metrics.jsonl") as sampler:
        link.run(config, registered, cpus, log_file=run_dir.parent / f"{name}.log")
    full = config["fraction-train"] >= 1.0
    return Timing(name, _round_seconds(run_dir), time.monotonic() - t0, sampler.peak, full)


def time_loop(config: dict, registered: int, threads: int) -> Timing:
    """The loop in its own process (its memory alone), torch threads as in one actor."""
    run_dir = Path(config["run-dir"])
    cmd = [sys.executable, "-m", "simulations.bench.bench_throughput", "--loop-worker",
           json.dumps(config), str(registered), str(threads)]  # fmt: skip
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    with TreeSampler(proc.pid, run_dir / "metrics.jsonl") as sampler:
        _, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"loop run failed ({proc.returncode}):\n{err[-3000:]}")
    full = config["fraction-train"] >= 1.0
    return Timing("loop", _round_seconds(run_dir), time.monotonic() - t0, sampler.peak, full)


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import flwr
    import torch

    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    return (
        f"{os.cpu_count()} CPUs ({model}), {mem:.0f} GiB RAM, Python {platform.python_version()}, "
        f"flwr {flwr.__version__}, torch {torch.__version__}, load avg {os.getloadavg()[0]:.1f}"
    )


def table(results: list[tuple[int, dict[str, Timing]]], registered: int) -> str:
    """Markdown: median s/round of the middle rounds and ratios; round 1 and last apart."""
    names = [e for e in ENGINES if any(e in r for _, r in results)]
    head = ["clients/round"] + [f"{e} s/round" for e in names]
    head += [f"{e} / loop" for e in names if e != "loop" and "loop" in names]
    head += [f"round 1: {e}" for e in names]
    head += [f"last round ({registered} scored): {e}" for e in names]
    head += [f"peak RSS GiB: {e}" for e in names]
    lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
    for size, r in results:
        row = [str(size)] + [_cell(r, e, "steady") for e in names]
        row += [
            f"{r[e].steady / r['loop'].steady:.2f}" if e in r and "loop" in r else "-"
            for e in names
            if e != "loop" and "loop" in names
        ]
        row += [_cell(r, e, "first") for e in names] + [_cell(r, e, "last") for e in names]
        row += [f"{r[e].peak_rss / GIB:.2f}" if e in r else "-" for e in names]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _cell(timings: dict[str, Timing], engine: str, value: str) -> str:
    return "-" if engine not in timings else format(getattr(timings[engine], value), ".2f")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="10,100,1000", help="clients per round, comma-separated")
    p.add_argument("--registered", type=int, default=1000, help="nodes in the federation (N)")
    p.add_argument("--rounds", type=int, default=5, help="rounds per run (>= 3)")
    p.add_argument("--rounds-all", type=int, default=3,
                   help="rounds per run when all N nodes are sampled (>= 2)")  # fmt: skip
    p.add_argument("--cpus-per-client", type=int, default=1, help="client-resources-num-cpus")
    p.add_argument("--engines", default="engine,loop", help=f"some of {','.join(ENGINES)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                   help="extra run-config key, e.g. --set algorithm='\"maml\"'")  # fmt: skip
    p.add_argument("--out", type=Path, help="keep run folders here (default: a temp folder)")
    p.add_argument("--loop-worker", nargs=3, help=argparse.SUPPRESS)  # CONFIG N THREADS
    args = p.parse_args(argv)
    if args.loop_worker:
        from simulations.loop import run_in_loop

        config, n, threads = args.loop_worker
        run_in_loop(json.loads(config), int(n), torch_threads=int(threads))
        return 0
    if args.rounds < 3 or args.rounds_all < 2:
        p.error("--rounds needs >= 3 (round 1, middle rounds, last) and --rounds-all >= 2")
    sizes = [int(s) for s in args.sizes.split(",")]
    if any(not 1 <= s <= args.registered for s in sizes):
        p.error(f"every size must be between 1 and --registered={args.registered}")
    engines = [e for e in ENGINES if e in args.engines.split(",")]
    if not engines:
        p.error(f"--engines must name some of {', '.join(ENGINES)}")
    extra = {k: json.loads(v) for k, v in (item.split("=", 1) for item in args.set)}
    out = args.out or Path(tempfile.mkdtemp(prefix="fedmeta-bench-"))
    print(f"machine: {machine()}", flush=True)
    settings = f"settings {extra or 'default'}, client-resources-num-cpus={args.cpus_per_client}"
    print(f"{args.registered} registered nodes, sinusoid, {settings}; runs in {out}", flush=True)
    results: list[tuple[int, dict[str, Timing]]] = []
    with contextlib.ExitStack() as stack:
        links = {
            e: stack.enter_context(simulation_superlink(extra_env={FLOWER_DELIVERY_ENV: flag}))
            for e, flag in (("engine", "0"), ("engine-flower", "1"))
            if e in engines
        }
        for size in sizes:
            rounds = args.rounds_all if size == args.registered else args.rounds
            timings: dict[str, Timing] = {}
            for e in engines:
                cfg = run_config(size, args.registered, rounds, out / f"c{size}" / e, extra)
                if e == "loop":
                    timings[e] = time_loop(cfg, args.registered, args.cpus_per_client)
                else:
                    timings[e] = time_engine(
                        e, links[e], cfg, args.registered, args.cpus_per_client
                    )
                print(timings[e].line(size), flush=True)
            results.append((size, timings))
    print(f"\nmedian s/round over rounds 2..{args.rounds - 1} (2..{args.rounds_all} when all "
          f"{args.registered} are sampled); load avg now {os.getloadavg()[0]:.1f}\n")  # fmt: skip
    print(table(results, args.registered))
    return 0


if __name__ == "__main__":
    sys.exit(main())
