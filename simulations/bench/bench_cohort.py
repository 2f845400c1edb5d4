"""Cohorts: seconds per round when a node trains its sampled clients in one vmap.

    python -m simulations.bench.bench_cohort --quick   # 10 and 100 clients per round (~3 min here)
    nice -n 5 python -m simulations.bench.bench_cohort # 10, 100 and 1,000 per round (~25 min here)
    python -m simulations.bench.bench_cohort --gpu --omniglot ../shared/data/omniglot  # CUDA only

Sinusoid second-order MAML (Finn et al. 2017) at C clients per round, out of N = 10 C
clients (fraction-train and fraction-evaluate 0.1, 5 local steps, batches of 5, 10
personalisation steps, 20 train / 50 test points per client), measured four ways in one
invocation:

  bare        a plain torch + torch.func loop (no project code, no Flower): all C clients'
              5 MAML steps under one ``torch.func.vmap``, the weighted mean of the updates,
              a server Adam step, and the vmapped before/after evaluation of 0.1 N clients.
              The floor: what the math costs without messages, records or nodes.
  one-by-one  the project with ``clients-per-node=1``: N nodes, one client each.
  cohort      the project with 2 nodes (one per core), each hosting N/2 clients and training
              its sampled clients together (``cohort-size``, default 0 = all at once).

The project runs go through the in-process loop engine (``simulations.loop``, torch at
one thread, in a subprocess of their own) and through Flower's Simulation Engine (one
SuperLink, ``flwr run`` per run). A round's seconds are read from the run's
``metrics.jsonl`` (the server's wall time of train + evaluate); printed is the median over
the rounds after the warm-up rounds, without the final round (every run's final round
scores all N clients). Peak RSS sums the run's process tree. Figures, not a test: quote
ratios from one invocation. ``--gpu`` runs the Omniglot part instead (conv4-64 5-way
1-shot, 10 clients x 5 episodes per round, one-by-one vs one cohort node, GPU utilisation
from nvidia-smi); it needs CUDA.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from common.background_sampler import BackgroundSampler
from simulations.reference_maml import BareConfig, BareRound, run_bare

GIB = 1024**3
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# ============================================================================ the project
LAYOUTS = ("one-by-one", "cohort")
ENGINES = ("loop", "engine")  # simulations.loop in a subprocess; Flower's Simulation Engine


def cohort_keys_supported() -> bool:
    """Whether this checkout's run config knows ``clients-per-node`` and ``cohort-size``."""
    from common.config import Settings

    names = {f.name for f in dataclasses.fields(Settings)}
    return {"clients_per_node", "cohort_size"} <= names


@dataclass(frozen=True)
class Cell:
    """One project run: a size, a layout and an engine."""

    size: int  # clients per round
    layout: str
    engine: str
    rounds: int


@dataclass
class Result:
    cell: Cell
    nodes: int
    rounds: list[float] = field(default_factory=list)  # server seconds per round, round 1 first
    wall: float = 0.0  # the whole run, start-up included
    peak_rss: int = 0
    warmup: int = 1
    dropped: int = 0  # replies the server dropped over the run (0 in a sound run)
    skipped: str | None = None  # why it was not run
    failed: str | None = None  # why it did not finish

    @property
    def measured(self) -> list[float]:
        """Rounds after the warm-up, without the final round (it scores all N clients)."""
        w = min(self.warmup, max(len(self.rounds) - 2, 0))
        return self.rounds[w:-1] if len(self.rounds) > 1 else self.rounds

    @property
    def steady(self) -> float | None:
        return statistics.median(self.measured) if self.rounds else None

    def line(self) -> str:
        c = self.cell
        nodes = f"{self.nodes} node" + ("s" if self.nodes != 1 else "")
        head = f"  {c.size:5d}/round {c.engine:6s} {c.layout:10s} ({nodes})"
        if self.skipped or self.failed:
            return (
                f"{head}: {'skipped' if self.skipped else 'FAILED'}: {self.skipped or self.failed}"
            )
        rounds = " ".join(f"{r:.2f}" for r in self.rounds)
        warn = f"; {self.dropped} replies DROPPED" if self.dropped else ""
        return (
            f"{head}: median {self.steady:.3f} s/round; rounds {rounds} s; run {self.wall:.0f} s;"
            f" peak RSS {self.peak_rss / GIB:.2f} GiB{warn}"
        )


def project_config(
    cell: Cell, run_dir: Path, *, fraction: float, cohort_nodes: int, cohort_size: int,
    cohort_keys: bool,
) -> tuple[dict[str, Any], int]:  # fmt: skip
    """The run config of ``cell`` and its number of nodes (the bare loop's settings)."""
    total = round(cell.size / fraction)
    config: dict[str, Any] = {
        "dataset": "sinusoid", "algorithm": "maml", "model": "mlp", "hidden-sizes": "40,40",
        "activation": "relu", "num-rounds": cell.rounds, "fraction-train": fraction,
        "fraction-evaluate": fraction, "local-steps": 5, "batch-size": 5, "inner-lr": 0.01,
        "inner-steps": 1, "outer-lr": 0.001, "eval-steps": 10, "sinusoid-train-points": 20,
        "sinusoid-test-points": 50, "server-optimizer": "adam", "server-lr": 0.03,
        "new-clients": 0, "device": "cpu", "run-dir": str(run_dir),
    }  # fmt: skip
    if cell.layout == "one-by-one":
        if cohort_keys:
            config["clients-per-node"] = 1
        return config, total
    if total % cohort_nodes:
        raise ValueError(f"{total} clients do not split evenly over {cohort_nodes} nodes")
    config |= {
        "clients-per-node": total // cohort_nodes, "cohort-size": cohort_size,
        "min-available-nodes": min(cohort_nodes, 2),  # the default 2 would wait for a 2nd node
    }  # fmt: skip
    return config, cohort_nodes


def read_rounds(run_dir: Path) -> tuple[list[float], int]:
    """Seconds of every round and the number of replies dropped, from metrics.jsonl."""
    path = run_dir / "metrics.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return [float(r["seconds"]) for r in rows], sum(len(r.get("dropped", [])) for r in rows)


def run_loop(config: dict[str, Any], nodes: int, timeout: float) -> tuple[float, int]:
    """The loop engine in a subprocess of its own (its memory alone), torch at one thread."""
    from simulations.bench.proc_memory import TreeSampler

    run_dir = Path(config["run-dir"])
    cmd = [sys.executable, "-m", "simulations.bench.bench_cohort", "--loop-worker",
           json.dumps(config), str(nodes)]  # fmt: skip
    log_path = run_dir.parent / f"{run_dir.name}.log"
    t0 = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
        with TreeSampler(proc.pid, run_dir / "metrics.jsonl") as sampler:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"loop run exceeded {timeout:.0f} s; log: {log_path}") from None
    if proc.returncode != 0:
        tail = log_path.read_text()[-2000:]
        raise RuntimeError(f"loop run exited with {proc.returncode}; log {log_path}:\n{tail}")
    return time.monotonic() - t0, sampler.peak


def run_engine(link: Any, config: dict[str, Any], nodes: int, timeout: float) -> tuple[float, int]:
    """One ``flwr run`` on the Simulation Engine; peak RSS of the SuperLink's whole tree."""
    from simulations.bench.proc_memory import TreeSampler

    run_dir = Path(config["run-dir"])
    t0 = time.monotonic()
    with TreeSampler(link.process.pid, run_dir / "metrics.jsonl") as sampler:
        link.run(config, nodes, 1, log_file=run_dir.parent / f"{run_dir.name}.log",
                 timeout=timeout)  # fmt: skip
    return time.monotonic() - t0, sampler.peak


def measure(
    cell: Cell, out: Path, link: Any, opts: argparse.Namespace, cohort_keys: bool
) -> Result:
    run_dir = out / f"c{cell.size}" / f"{cell.engine}-{cell.layout}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    config, nodes = project_config(
        cell, run_dir, fraction=opts.fraction,
        cohort_nodes=opts.loop_cohort_nodes if cell.engine == "loop" else opts.cohort_nodes,
        cohort_size=opts.cohort_size, cohort_keys=cohort_keys,
    )  # fmt: skip
    result = Result(cell, nodes, warmup=opts.warmup)
    if cell.layout == "cohort" and not cohort_keys:
        result.skipped = "this checkout has no clients-per-node / cohort-size keys"
        return result
    if cell.engine == "engine" and nodes > opts.engine_max_nodes:
        result.skipped = (
            f"{nodes} nodes > --engine-max-nodes={opts.engine_max_nodes}: Flower's message pump "
            "scans every registered node against every stored message every 0.1 s "
            "(docs/performance.md), so rounds would take minutes"
        )
        return result
    try:
        if cell.engine == "loop":
            result.wall, result.peak_rss = run_loop(config, nodes, opts.run_timeout)
        else:
            result.wall, result.peak_rss = run_engine(link, config, nodes, opts.run_timeout)
    except Exception as err:  # recorded in the table, and the exit status says so
        result.failed = f"{type(err).__name__}: {err}"
    result.rounds, result.dropped = read_rounds(run_dir)
    return result


# ============================================================================ reporting
@dataclass(frozen=True)
class BareTiming:
    """The bare loop at one size, run before and after that size's project runs: the two
    medians show how much the machine's load drifted in between."""

    cfg: BareConfig
    runs: list[list[BareRound]]  # each a fresh federation, warm-up rounds first
    warmup: int = 2

    def _measured(self, run: list[BareRound]) -> list[float]:
        return [r.seconds for r in run[self.warmup :]]

    @property
    def steady(self) -> float:
        """Median over the measured rounds of every run, pooled."""
        return statistics.median(t for run in self.runs for t in self._measured(run))

    def line(self, which: str) -> str:
        run = self.runs[-1]
        return (
            f"  {self.cfg.clients_per_round:5d}/round bare loop ({self.cfg.num_clients} "
            f"clients), {which}: median {statistics.median(self._measured(run)):.4f} s/round "
            f"over {len(run) - self.warmup} rounds; last round's MSE {run[-1].mse_before:.3f} "
            f"-> personalised {run[-1].mse_after:.3f}"
        )


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def table(results: list[Result], bare: dict[int, BareTiming]) -> str:
    """Markdown: per size and engine, one-by-one vs cohort, and cohort vs the bare loop."""
    head = ["clients/round", "engine", "one-by-one s/round", "cohort s/round",
            "one-by-one / cohort", "bare s/round", "cohort / bare",
            "one-by-one / bare"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---:|:---|" + "---:|" * (len(head) - 2)]
    for size, engine, obo, coh in _pairs(results):
        b = bare[size].steady if size in bare else None
        row = [str(size), engine, _fmt(obo), _fmt(coh), _fmt(_ratio(obo, coh), ".1f"),
               _fmt(b, ".4f"), _fmt(_ratio(coh, b), ".2f"),
               _fmt(_ratio(obo, b), ".1f")]  # fmt: skip
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _pairs(results: list[Result]) -> list[tuple[int, str, float | None, float | None]]:
    """(size, engine, one-by-one median, cohort median) for every size and engine run."""
    by = {(r.cell.size, r.cell.engine, r.cell.layout): r for r in results}
    keys = sorted({(s, e) for s, e, _ in by}, key=lambda k: (k[0], ENGINES.index(k[1])))

    def steady(size: int, engine: str, layout: str) -> float | None:
        r = by.get((size, engine, layout))
        return None if r is None or r.failed or r.skipped else r.steady

    return [(s, e, steady(s, e, "one-by-one"), steady(s, e, "cohort")) for s, e in keys]


TARGETS = (  # (clients/round, what, bound): the goals of the cohort rewrite
    (100, "one-by-one / cohort", 10.0, ">="),
    (1000, "one-by-one / cohort", 20.0, ">="),
    (100, "cohort / bare", 1.5, "<="),
)


def target_lines(results: list[Result], bare: dict[int, BareTiming]) -> list[str]:
    out = []
    for size, engine, obo, coh in _pairs(results):
        b = bare[size].steady if size in bare else None
        values = {"one-by-one / cohort": _ratio(obo, coh), "cohort / bare": _ratio(coh, b)}
        for t_size, what, bound, op in TARGETS:
            if t_size != size:
                continue
            v = values[what]
            if v is None:
                verdict = "not measured"
            else:
                ok = v >= bound if op == ">=" else v <= bound
                verdict = f"{v:.2f} ({'met' if ok else 'MISSED'})"
            out.append(f"  {size:5d}/round {engine:6s} {what} {op} {bound:g}: {verdict}")
    return out or ["  none at these sizes (targets are set at 100 and 1000 clients per round)"]


def memory_lines(results: list[Result]) -> list[str]:
    """Peak RSS of the largest size measured, one-by-one beside cohort, per engine."""
    done = [r for r in results if r.rounds and not r.failed and not r.skipped]
    if not done:
        return ["  nothing measured"]
    size = max(r.cell.size for r in done)
    out = []
    for engine in ENGINES:
        cells = {r.cell.layout: r for r in done if r.cell.size == size and r.cell.engine == engine}
        if not cells:
            continue
        parts = [f"{lay} {cells[lay].peak_rss / GIB:.2f} GiB ({cells[lay].nodes} nodes)"
                 if lay in cells else f"{lay} -" for lay in LAYOUTS]  # fmt: skip
        out.append(f"  {size}/round {engine:6s}: " + "; ".join(parts))
    return out


def machine_line() -> str:
    from simulations.bench.bench_throughput import machine

    return f"{machine()}; torch threads {torch.get_num_threads()} by default, 1 in every run here"


# ============================================================================ GPU: Omniglot
GPU_EXPERIMENT = PROJECT_ROOT / "simulations" / "experiments" / "omniglot_full.yaml"
GPU_DEVICE = "cuda"


@dataclass
class GpuSampler(BackgroundSampler):
    """nvidia-smi's utilisation (%) every ``interval`` s, tagged with the rounds completed."""

    metrics_file: Path
    interval: float = 0.25
    samples: list[tuple[int, float, float]] = field(default_factory=list)  # rounds, %, MiB

    def tick(self) -> bool:
        query = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "--id=0"]  # fmt: skip
        proc = subprocess.run(query, capture_output=True, text=True, check=False)
        if proc.returncode == 0 and proc.stdout.strip():
            util, mem = (float(v) for v in proc.stdout.split(",")[:2])
            done = read_rounds(self.metrics_file.parent)[0]
            self.samples.append((len(done), util, mem))
        return True

    def utilization(self, first: int, last: int) -> tuple[float | None, int]:
        """Mean utilisation while rounds ``first``..``last`` (1-based) ran, and sample count."""
        values = [u for done, u, _ in self.samples if first - 1 <= done <= last - 1]
        return (statistics.mean(values) if values else None), len(values)


def gpu_part(opts: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Omniglot conv4-64 5-way 1-shot, 10 clients x 5 episodes a round, on the loop engine."""
    from simulations.experiment import load_experiment

    if opts.omniglot is None or not opts.omniglot.exists():
        raise SystemExit(
            f"--gpu needs --omniglot PATH, the folder holding images_background.npz "
            f"(Omniglot, Lake et al. 2015); got {opts.omniglot}"
        )
    if not torch.cuda.is_available():
        raise SystemExit(
            f"--gpu needs CUDA, and torch {torch.__version__} sees no CUDA device here "
            f"(torch.version.cuda={torch.version.cuda}); run it on a GPU machine"
        )
    exp = load_experiment(GPU_EXPERIMENT)
    total = exp.num_supernodes  # 30 clients, fraction 0.34: 10 a round
    rounds = 4 if opts.quick else opts.gpu_rounds
    base = {**exp.base, "algorithm": "maml", "data-path": str(opts.omniglot.resolve()),
            "num-rounds": rounds, "new-clients": 0, "device": GPU_DEVICE}  # fmt: skip
    print(f"GPU: {torch.cuda.get_device_name(0)}; {GPU_EXPERIMENT.name} maml-conv-5way, "
          f"{total} clients, {rounds} rounds", flush=True)  # fmt: skip
    has_smi = shutil.which("nvidia-smi") is not None
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0), "clients": total}
    for layout, nodes in (("one-by-one", total), ("cohort", opts.gpu_cohort_nodes)):
        run_dir = out / "gpu" / layout
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        config = {**base, "run-dir": str(run_dir), "min-available-nodes": min(nodes, 2)}
        if layout == "cohort":
            config |= {"clients-per-node": total // nodes, "cohort-size": opts.cohort_size}
        elif cohort_keys_supported():
            config["clients-per-node"] = 1
        sampler = GpuSampler(run_dir / "metrics.jsonl")
        with sampler if has_smi else _nothing():
            wall, peak = run_loop(config, nodes, opts.run_timeout)
        result = Result(Cell(10, layout, "loop", rounds), nodes, warmup=1)
        result.rounds, result.dropped = read_rounds(run_dir)
        result.wall, result.peak_rss = wall, peak
        util, n = sampler.utilization(2, rounds - 1) if has_smi else (None, 0)
        util_text = (
            "no nvidia-smi" if not has_smi else f"GPU util {_fmt(util, '.0f')}% ({n} samples)"
        )
        print(f"{result.line()}; {util_text} in rounds 2..{rounds - 1}", flush=True)
        report[layout] = {**_result_json(result), "gpu_util_percent": util}
    obo, coh = report["one-by-one"]["steady"], report["cohort"]["steady"]
    print(f"\nOmniglot, 10 clients x 5 episodes a round: one-by-one {_fmt(obo)} s/round, "
          f"cohort {_fmt(coh)} s/round, ratio {_fmt(_ratio(obo, coh), '.1f')}")  # fmt: skip
    return report


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _result_json(r: Result) -> dict[str, Any]:
    return {
        "clients_per_round": r.cell.size, "layout": r.cell.layout, "engine": r.cell.engine,
        "nodes": r.nodes, "rounds": r.rounds, "steady": r.steady if r.rounds else None,
        "measured_rounds": len(r.measured) if r.rounds else 0, "wall": r.wall,
        "peak_rss": r.peak_rss, "dropped": r.dropped, "skipped": r.skipped, "failed": r.failed,
    }  # fmt: skip


# ============================================================================ main
def _parser() -> argparse.ArgumentParser:
    """The options; those left at None get a default that depends on --quick (parse_args)."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="10 and 100 clients per round, fewer rounds"
    )
    p.add_argument("--sizes", help="clients per round, comma-separated (default 10,100,1000)")
    p.add_argument("--engines", default="loop,engine", help="some of loop,engine")
    p.add_argument("--layouts", default="one-by-one,cohort", help="some of one-by-one,cohort")
    p.add_argument("--fraction", type=float, default=0.1,
                   help="fraction-train = fraction-evaluate; N = size / fraction")  # fmt: skip
    p.add_argument("--rounds", type=int, help="rounds per one-by-one run (default 6; quick 4)")
    p.add_argument(
        "--rounds-cohort",
        type=int,
        help="rounds per cohort run (default 30; quick 6): cheap, and round times "
        "of this shared machine drift, so more rounds steady the median",
    )
    p.add_argument("--rounds-slow", type=int, default=3,
                   help="rounds of one-by-one runs of >= 1000 clients per round")  # fmt: skip
    p.add_argument("--warmup", type=int, help="rounds before the median (default 2; quick 1)")
    p.add_argument("--bare-rounds", type=int, default=30, help="bare-loop rounds (2 are warm-up)")
    p.add_argument(
        "--cohort-nodes",
        type=int,
        default=os.cpu_count() or 1,
        help="nodes of the cohort layout on the engine (default: one per core)",
    )
    p.add_argument(
        "--loop-cohort-nodes",
        type=int,
        default=1,
        help="nodes of the cohort layout in the loop (one process: 1)",
    )
    p.add_argument("--cohort-size", type=int, default=0, help="cohort-size (0: all at once)")
    p.add_argument(
        "--engine-max-nodes",
        type=int,
        help="skip engine runs of more nodes (default 1000; quick 100)",
    )
    p.add_argument("--run-timeout", type=float, default=900, help="seconds one run may take")
    _add_gpu_and_output_options(p)
    return p


def _add_gpu_and_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gpu", action="store_true", help="run the Omniglot GPU part instead")
    p.add_argument("--omniglot", type=Path, help="Omniglot folder (images_background.npz)")
    p.add_argument("--gpu-rounds", type=int, default=6, help="rounds per Omniglot run")
    p.add_argument("--gpu-cohort-nodes", type=int, default=1,
                   help="nodes of the Omniglot cohort layout (one GPU: 1)")  # fmt: skip
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    p.add_argument("--runs", type=Path, help="keep run folders here (default: a temp folder)")
    p.add_argument("--loop-worker", nargs=2, help=argparse.SUPPRESS)  # CONFIG NODES


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = _parser()
    args = p.parse_args(argv)
    sizes = args.sizes or ("10,100" if args.quick else "10,100,1000")
    args.sizes = [int(s) for s in sizes.split(",")]
    args.rounds = args.rounds or (4 if args.quick else 6)
    args.rounds_cohort = args.rounds_cohort or (6 if args.quick else 30)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    args.engine_max_nodes = args.engine_max_nodes or (100 if args.quick else 1000)
    args.engines = [e for e in ENGINES if e in args.engines.split(",")]
    args.layouts = [x for x in LAYOUTS if x in args.layouts.split(",")]
    if args.rounds < args.warmup + 2 or args.rounds_slow < 3 or args.bare_rounds < 3:
        p.error("--rounds needs >= warm-up + 2 (a measured round and the final one), "
                "--rounds-slow >= 3, --bare-rounds >= 3")  # fmt: skip
    if not args.engines or not args.layouts:
        p.error("--engines and --layouts must name at least one of their choices")
    return args


def cells(opts: argparse.Namespace) -> list[Cell]:
    """Every (size, engine, layout); one-by-one at >= 1000 per round gets --rounds-slow."""
    out = []
    for size in opts.sizes:
        for engine in opts.engines:
            for layout in opts.layouts:
                slow = layout == "one-by-one" and size >= 1000
                rounds = opts.rounds_cohort if layout == "cohort" else opts.rounds
                out.append(Cell(size, layout, engine, opts.rounds_slow if slow else rounds))
    return out


def cpu_part(opts: argparse.Namespace, runs: Path) -> tuple[dict[str, Any], bool]:
    """Per size: the bare loop, the project's cells, the bare loop again (load drifts)."""
    from simulations.engine import simulation_superlink

    cohort_keys = cohort_keys_supported()
    if not cohort_keys:
        print("this checkout has no clients-per-node key: cohort runs are skipped", flush=True)
    print(f"\nsinusoid maml; bare loop: torch + torch.func, one vmap per round, 1 thread; "
          f"project runs in {runs}", flush=True)  # fmt: skip
    bare: dict[int, BareTiming] = {}
    results: list[Result] = []
    with simulation_superlink() if "engine" in opts.engines else _nothing() as link:
        for size in opts.sizes:
            cfg = BareConfig(clients_per_round=size, fraction=opts.fraction)
            bare[size] = BareTiming(cfg, [run_bare(cfg, opts.bare_rounds)])
            print(bare[size].line("before"), flush=True)
            for cell in (c for c in cells(opts) if c.size == size):
                results.append(measure(cell, runs, link, opts, cohort_keys))
                print(results[-1].line(), flush=True)
            bare[size].runs.append(run_bare(cfg, opts.bare_rounds))
            print(bare[size].line("after"), flush=True)
    print(f"\nmedian s/round after {opts.warmup} warm-up round(s), final round left out "
          f"(it scores all N); bare: median after 2, before and after pooled; load avg now "
          f"{os.getloadavg()[0]:.1f}. The loop runs nodes one after another in one process "
          "(one core); the engine runs one Ray actor per core.\n")  # fmt: skip
    print(table(results, bare))
    print("\ntargets:")
    print("\n".join(target_lines(results, bare)))
    print("\npeak RSS (process tree):")
    print("\n".join(memory_lines(results)))
    report = {
        "bare": {
            str(size): {
                "steady": b.steady,
                "runs": [[dataclasses.asdict(r) for r in run] for run in b.runs],
            }
            for size, b in bare.items()
        },
        "project": [_result_json(r) for r in results],
    }
    return report, any(r.failed for r in results)


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    if opts.loop_worker:
        from simulations.loop import run_in_loop

        config, nodes = opts.loop_worker
        run_in_loop(json.loads(config), int(nodes), torch_threads=1)
        return 0
    runs = opts.runs or Path(tempfile.mkdtemp(prefix="fedmeta-cohort-"))
    machine = machine_line()
    print(f"machine: {machine}", flush=True)
    report: dict[str, Any] = {"machine": machine, "argv": sys.argv[1:]}
    failed = False
    if opts.gpu:
        report["gpu"] = gpu_part(opts, runs)
    else:
        report["cpu"], failed = cpu_part(opts, runs)
    if opts.out:
        from common import strict_json  # NaN/inf as null: the report stays strict JSON

        opts.out.write_text(strict_json.dumps(report, indent=1))
        print(f"\nresults: {opts.out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
