"""How long a user's table takes to load, and how much memory: CSV and Parquet, N clients.

    python -m simulations.bench.bench_user_table [--rows 100000] [--clients 1000] [--features 20]

Writes a seeded table with a client column (``user``), ``--features`` float columns and an
integer label, as CSV and as Parquet, then, for each, in a fresh process (so the memory
figures are that process's own, not a warm cache's), times:

* ``check``: ``check_data_available``, what a run does before round 1: read the file, check
  every feature, label and client, group the rows into clients and split each one;
* ``all clients``: ``load_client_data`` for every client in turn, as nodes serving them do.

and reports the process's peak RSS above what it held after its imports (peak, and what
it still holds at the end, and how much of that came while every client was loaded), next
to the size of the feature matrix. Each measurement is
repeated (``--repeats``) and the median printed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def write_table(folder: Path, rows: int, clients: int, features: int, seed: int = 0) -> dict:
    """The same seeded table as users.csv and users.parquet in ``folder``."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    columns = {"user": np.char.add("user-", rng.integers(0, clients, rows).astype(str))}
    x = rng.normal(size=(rows, features)).astype(np.float32)
    columns |= {f"f{j}": x[:, j] for j in range(features)}
    columns["label"] = rng.integers(0, 10, rows)
    table = pa.table(columns)
    pacsv.write_csv(table, folder / "users.csv")
    pq.write_table(table, folder / "users.parquet")
    return {"csv": str(folder / "users.csv"), "parquet": str(folder / "users.parquet")}


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def measure(path: str) -> dict:
    """One measurement in this process (run by :func:`main` in a fresh interpreter)."""
    import pyarrow.csv  # noqa: F401  (imported before the baseline: not the table's memory)
    import pyarrow.parquet  # noqa: F401

    from common.config import parse_settings
    from common.data import registry, user_data

    settings = parse_settings(
        {"dataset": "table", "data-path": path, "client-column": "user", "batch-size": 5}
    )
    before = _rss_mib()
    t0 = time.perf_counter()
    registry.check_data_available(settings)
    t_check = time.perf_counter() - t0
    table = user_data.read_user_table(user_data.Source.of(settings))
    clients = len(np.unique(table.client))
    held = _rss_mib()
    t0 = time.perf_counter()
    rows = 0
    for pid in range(clients):
        data = registry.load_client_data(settings, pid, clients)
        rows += data.num_train + data.num_test
    t_all = time.perf_counter() - t0
    assert rows == len(table), (rows, len(table))
    return {
        "check_s": t_check,
        "all_clients_s": t_all,
        "clients": clients,
        "rows": len(table),
        "features_mib": table.x.nbytes / 2**20,
        "peak_rss_above_imports_mib": _peak_rss_mib() - before,
        "rss_after_mib": _rss_mib() - before,
        "rss_growth_loading_clients_mib": _rss_mib() - held,
    }


def _in_fresh_process(path: str) -> dict:
    code = (
        "import json; from simulations.bench.bench_user_table import measure; "
        f"print(json.dumps(measure({path!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.bench.bench_user_table")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--features", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        files = write_table(Path(tmp), args.rows, args.clients, args.features)
        sizes = {k: Path(v).stat().st_size / 2**20 for k, v in files.items()}
        for kind, path in files.items():
            runs = [_in_fresh_process(path) for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            checks = ", ".join(f"{r['check_s']:.2f}" for r in runs)
            print(
                f"{kind:8s} {med['rows']:.0f} rows, {med['clients']:.0f} clients, "
                f"file {sizes[kind]:.1f} MiB: check {med['check_s']:.2f} s, every client "
                f"loaded {med['all_clients_s']:.2f} s; peak RSS "
                f"+{med['peak_rss_above_imports_mib']:.0f} MiB above imports, "
                f"+{med['rss_after_mib']:.0f} MiB held at the end, of which "
                f"{med['rss_growth_loading_clients_mib']:+.0f} MiB while every client was "
                f"loaded (features "
                f"{med['features_mib']:.1f} MiB); median of {args.repeats} (checks: {checks} s)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
