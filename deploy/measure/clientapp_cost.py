"""What a node pays to start its ClientApp: import time, data loading, memory, per dataset.

    python -m deploy.measure.clientapp_cost             # every dataset whose data is here
    python -m deploy.measure.clientapp_cost --repeat 5 --data-dir ../shared/data

Each probe is a fresh interpreter that imports ``client.app`` (timed: torch, Flower and the
app), then loads one client's data as a SuperNode does on its first message (timed:
``node_runtime(context).client(partition)``), and reports its peak RSS (the kernel's
``ru_maxrss``) and which heavy libraries ended up imported. The data layer imports
pandas, matplotlib, HuggingFace ``datasets``, ``flwr_datasets`` and SciPy only for the
partitioner that needs them (the pathological split), and never scikit-learn; a test
(tests/client/test_lazy_imports.py) runs the same probe and checks it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

# Libraries a small device should not pay for unless its data needs them.
HEAVY_MODULES = ("pandas", "matplotlib", "datasets", "flwr_datasets", "sklearn", "pyarrow", "scipy")

_PROBE = """
import json, resource, sys, time
started = time.perf_counter()
import client.app  # noqa: F401  (what flwr-clientapp imports: torch, Flower, the app)
imported = time.perf_counter()
from flwr.app import Context, RecordDict
from client.runtime import node_runtime

heavy_names = json.loads(sys.argv[2])
for run_config, node_config in json.loads(sys.argv[1]):
    before = time.perf_counter()
    context = Context(run_id=1, node_id=1, node_config=node_config, state=RecordDict(),
                      run_config=run_config)
    node = node_runtime(context)
    data = node.client(node.partitions.start).data
    print(json.dumps({
        "import-s": imported - started, "data-s": time.perf_counter() - before,
        "peak-rss-mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "heavy-modules": sorted(m for m in heavy_names if m in sys.modules),
        "num-train": int(data.num_train),
    }), flush=True)
"""


def probe(run_config: Mapping[str, Any], node_config: Mapping[str, Any] | None = None) -> dict:
    """Import the ClientApp and load one client's data in a fresh interpreter; its figures."""
    return probe_in_turn([run_config], node_config)[0]


def probe_in_turn(
    run_configs: Sequence[Mapping[str, Any]], node_config: Mapping[str, Any] | None = None
) -> list[dict]:
    """Like :func:`probe`, for several runs one after the other in one interpreter.

    Each result lists the heavy modules imported so far, so the first run that pulled one
    in is the first whose list holds it; import time and RSS are the interpreter's.
    """
    node = {"partition-id": 0, "num-partitions": 3, **(node_config or {})}
    pairs = [[dict(c), node] for c in run_configs]
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, json.dumps(pairs), json.dumps(HEAVY_MODULES)],
        capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the ClientApp probe for {pairs} failed:\n{proc.stderr}")
    return [json.loads(line) for line in proc.stdout.strip().splitlines()[-len(pairs) :]]


def cases(data_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, run config) for every dataset whose data is available under ``data_dir``."""
    found = [
        ("sinusoid", {"dataset": "sinusoid"}),
        ("synthetic", {"dataset": "synthetic"}),
        ("digits, dirichlet", {"dataset": "digits", "partition": "dirichlet"}),
        ("digits, pathological", {"dataset": "digits", "partition": "pathological"}),
    ]
    fmnist, femnist = data_dir / "fashion-mnist", data_dir / "femnist" / "femnist105.npz"
    if fmnist.is_dir():
        found.append(
            ("fashion-mnist (IDX), dirichlet",
             {"dataset": "fashion-mnist", "partition": "dirichlet", "data-path": str(fmnist)})
        )  # fmt: skip
    if femnist.is_file():
        found.append(
            ("femnist (npz), natural",
             {"dataset": "femnist", "partition": "natural", "data-path": str(femnist),
              "model": "cnn", "hidden-sizes": "32,32,32,32"})
        )  # fmt: skip
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.measure.clientapp_cost", description=__doc__
    )
    parser.add_argument("--repeat", type=int, default=3, help="probes per dataset (medians)")
    default_data = Path(__file__).resolve().parents[3] / "shared" / "data"
    parser.add_argument("--data-dir", type=Path, default=default_data)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f"--repeat must be >= 1, got {args.repeat}")
    print("| data | import client.app (s) | load one client's data (s) | peak RSS (MiB) "
          "| heavy libraries imported |")  # fmt: skip
    print("|---|---:|---:|---:|---|")
    for label, run_config in cases(args.data_dir):
        runs = [probe(run_config) for _ in range(args.repeat)]
        med = {k: statistics.median(r[k] for r in runs) for k in ("import-s", "data-s")}
        rss = statistics.median(r["peak-rss-mib"] for r in runs)
        heavy = ", ".join(runs[0]["heavy-modules"]) or "none"
        print(f"| {label} | {med['import-s']:.2f} | {med['data-s']:.2f} | {rss:.0f} | {heavy} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
