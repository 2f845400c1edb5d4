"""Run every cell of an experiment and write its results folder.

    python -m simulations.run simulations/experiments/quickstart.yaml
    python -m simulations.run quickstart        # the same file, by name, from any folder

From Python (a notebook, a script): ``simulations.run_experiment(mapping_or_path)`` runs
the same code and returns every run's summary.

Each (algorithm, seed) cell is one run of the Flower app (``engine: simulation``: one
SuperLink started for the whole experiment, one ``flwr run`` per cell) or of the same
server loop in this process (``engine: loop``). A cell whose folder already holds a
``summary.json`` from the same settings (and node count, kept in ``federation.json``) is
reused, and one that was interrupted resumes from its checkpoint, so a killed sweep
continues where it stopped. A run that failed (bad data, no update ever accepted) leaves
no summary, so it runs again once the cause is fixed. Results: ``<out>/<algorithm>/
seed<k>/`` per run, then ``summary.md``, ``summary.csv`` and plots; ``--only`` updates
its rows there and keeps the others. A named error (bad file or settings, unreadable data
or checkpoint, a run that failed, a full disk, no permission) stops the sweep with one
``error:`` line and exit status 1 (2 for a bad file); Ctrl-C with one line saying where
the rerun resumes, and status 130.

``--out`` must be empty, new, or a results folder of this project; while a sweep writes
into it, a second one is refused with the first one's PID (common/folders.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from simulations.engine import SimulationError, SuperLink, simulation_superlink
from simulations.experiment import (
    PER_RUN,
    Cell,
    Experiment,
    ExperimentError,
    experiment_from_mapping,
    load_experiment,
    parse_yaml,
    shorten,
    validate_experiment,
)
from simulations.ray_cluster import (
    PRIVATE,
    ClientResources,
    RayClusterError,
    RayTarget,
    choose_ray,
    federation_config,
    resolve_ray,
    wait_for_nodes,
)
from simulations.report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "experiment",
        type=Path,
        help="experiment YAML file, or the name of a shipped one (quickstart, digits, ...)",
    )
    parser.add_argument("--out", type=Path, help="results folder (default: results/<name>)")
    parser.add_argument(
        "--engine", choices=("simulation", "loop"), help="override the file's engine"
    )
    parser.add_argument("--only", help="comma-separated algorithm names to run")
    parser.add_argument(
        "--seeds", help="comma-separated seeds to run instead of the file's, e.g. --seeds 0"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a base run-config key (YAML value), e.g. --set num-rounds=5",
    )
    _add_ray_options(parser)
    args = parser.parse_args(argv)
    try:
        from_file = load_experiment(args.experiment)
        exp = _apply_cli(from_file, args)
        check_memory(exp)
    except ExperimentError as err:
        return _error(err, 2)
    out = results_folder(exp, args.out)
    everything = dataclasses.replace(exp, algorithms=from_file.algorithms)  # without --only
    t0 = time.monotonic()
    try:
        run_experiment(exp, out, report=everything)
    except Interrupted as err:
        return _error(err, 130)
    except KeyboardInterrupt:
        return _error("interrupted; rerun the same command to resume", 130)
    except OSError as err:
        if err.errno not in USER_OS_ERRORS:
            raise  # not a cause the user can fix: its traceback is the useful report
        return _error(os_error_message(err), 1)
    except Exception as err:
        if not isinstance(err, named_errors()):
            raise  # a bug: its traceback is the useful report
        return _error(err, 1)
    print(f"done in {time.monotonic() - t0:.0f} s; table: {out / 'summary.md'}", flush=True)
    print((out / "summary.md").read_text(), flush=True)
    return 0


Summaries = dict[str, dict[int, dict[str, float]]]  # row -> seed -> the run's summary.json


def run_experiment(
    experiment: Mapping[str, Any] | str | Path | Experiment,
    out: str | Path | None = None,
    *,
    report: Experiment | None = None,
) -> Summaries:
    """Run an experiment and return every run's summary, ``{row: {seed: summary}}``.

    The entry point for notebooks and scripts, and the one the command line calls:
    ``experiment`` is a mapping shaped like the YAML file (``name``, ``engine``,
    ``num-supernodes``, ``seeds``, ``base``, ``algorithms``), a YAML path or shipped name,
    or a loaded :class:`Experiment`; ``out`` the results folder (default results/<name>),
    which must be new, empty or one of ours, and is locked while the experiment writes.
    ``report``: the experiment whose rows finished in ``out`` the summary keeps beside
    these (--only runs some rows of a file); default ``experiment`` alone. A cause the
    user can fix raises one of :func:`named_errors` with its message; Ctrl-C raises
    :class:`Interrupted`, saying the round to resume after.

        from simulations import run_experiment
        summaries = run_experiment({"engine": "loop", "num-supernodes": 10,
                                    "base": {"num-rounds": 5}, "algorithms": {"maml": {}}})
        summaries["maml"][0]["mse-after-mean"]
    """
    from common.folders import FolderLock, claim

    if isinstance(experiment, str | Path):
        exp = load_experiment(experiment)
    elif isinstance(experiment, Experiment):
        exp = experiment
    else:
        exp = experiment_from_mapping(experiment, Path(str(experiment.get("name", "experiment"))))
    check_memory(exp)
    out = claim(results_folder(exp, out), "experiment")  # a folder of the user's: refused
    with FolderLock(out, "--out"):
        cells = exp.cells(out)
        print(
            f"{exp.name}: {len(cells)} runs "
            f"({len(exp.algorithms)} algorithms x {len(exp.seeds)} seeds) "
            f"on the {exp.engine} engine, {exp.describe_layout()} -> {out}",
            flush=True,
        )
        run_cells(exp, cells)
        write_report(_reported(exp, report or exp, out), out)
    summaries: Summaries = {}
    for cell in cells:
        path = Path(cell.run_config["run-dir"]) / "summary.json"
        summaries.setdefault(cell.algorithm, {})[cell.seed] = json.loads(path.read_text())
    return summaries


def results_folder(exp: Experiment, out: str | Path | None) -> Path:
    return (Path(out) if out is not None else Path("results") / exp.name).expanduser().resolve()


def _error(err: object, code: int) -> int:
    """Print the one ``error:`` line (bounded: a message quoting a huge value stays short)."""
    message = " ".join(str(err).split())
    if len(message) > MAX_ERROR_CHARS:
        message = message[: MAX_ERROR_CHARS - 3] + "..."
    print(f"error: {message}", file=sys.stderr)
    return code


MAX_ERROR_CHARS = 2000

# OS errors a user causes and can fix (where --out or the data point, a full disk);
# any other OSError is reported with its traceback.
USER_OS_ERRORS = {
    errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR,
    errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG,
}  # fmt: skip


def os_error_message(err: OSError) -> str:
    where = f": {err.filename}" if err.filename else ""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = (
            "free some space (or give --out on another disk), then rerun the same command: "
            "runs resume from their last checkpoint"
        )
    elif err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = "no permission to write there; give --out a folder you can write to"
    elif err.errno in (errno.ENOTDIR, errno.EISDIR, errno.EEXIST):
        fix = "a file stands where a folder is needed (or the reverse); give another --out"
    else:
        fix = "give a shorter path"
    return f"{err.strerror or err}{where}; {fix}"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a run, with where the run can resume from."""


def _interrupted(cell: Cell) -> Interrupted:
    from server.run_folder import RunFolder, RunFolderError

    run_dir = Path(cell.run_config["run-dir"])
    try:
        ckpt = RunFolder(run_dir).load_checkpoint()
    except RunFolderError:
        ckpt = None
    done = ckpt.server_round if ckpt is not None else 0
    return Interrupted(
        f"interrupted after round {done} ({cell.algorithm} seed {cell.seed}, {run_dir}); "
        "rerun the same command to resume"
    )


def _add_ray_options(parser: argparse.ArgumentParser) -> None:
    """Issue 20: where the Simulation Engine's workers run; each overrides the file's key."""
    ray = parser.add_argument_group("Simulation Engine workers (docs/scaling.md)")
    ray.add_argument(
        "--ray-address",
        help="local (a private Ray per run), auto (the cluster `ray start` recorded on this "
        "machine) or HOST:PORT; default: RAY_ADDRESS, else that cluster, else private",
    )
    ray.add_argument("--ray-nodes", type=int, help="Ray nodes to wait for before each run")
    ray.add_argument("--cpus-per-client", type=float, help="CPUs per worker, e.g. 0.5")
    ray.add_argument("--gpus-per-client", type=float, help="GPUs per worker, e.g. 0.5")


def _ray_overrides(args: argparse.Namespace) -> dict[str, object]:
    fields = {
        "ray_address": args.ray_address, "ray_nodes": args.ray_nodes,
        "cpus_per_client": args.cpus_per_client, "gpus_per_client": args.gpus_per_client,
    }  # fmt: skip
    return {k: v for k, v in fields.items() if v is not None}


def named_errors() -> tuple[type[Exception], ...]:
    """What a run raises for a cause the user can fix; its message says what and where.

    Imported when needed: server modules pull in torch, which ``--help`` should not wait for.
    """
    from common.config import ConfigError
    from common.data.types import DataError
    from common.fingerprint import CodeMismatch
    from common.folders import FolderError
    from server.app import TrainingFailed
    from server.nodes import NodesUnavailable
    from server.run_folder import RunFolderError

    return (
        ExperimentError, SimulationError, ConfigError, DataError, RunFolderError,
        TrainingFailed, NodesUnavailable, RayClusterError, CodeMismatch, FolderError,
    )  # fmt: skip


def _apply_cli(exp: Experiment, args: argparse.Namespace) -> Experiment:
    base = dict(exp.base)
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            raise ExperimentError(exp.source, item, "--set needs KEY=VALUE")
        if key in PER_RUN:
            raise ExperimentError(exp.source, f"--set {key}", PER_RUN[key])
        try:
            base[key] = parse_yaml(value)
        except yaml.YAMLError as err:
            problem = f"{shorten(value)} is not a YAML value ({' '.join(str(err).split())})"
            raise ExperimentError(exp.source, f"--set {key}", problem) from None
    algorithms = exp.algorithms
    if args.only:
        names = [n.strip() for n in args.only.split(",")]
        unknown = [n for n in names if n not in algorithms]
        if unknown:
            raise ExperimentError(exp.source, "--only", f"{unknown} not in {list(algorithms)}")
        algorithms = {n: algorithms[n] for n in names}
    seeds = exp.seeds
    if args.seeds:
        try:
            seeds = tuple(int(s) for s in args.seeds.split(","))
        except ValueError:
            raise ExperimentError(
                exp.source, "--seeds", f"needs integers like 0,1,2, got {args.seeds!r}"
            ) from None
    new = dataclasses.replace(
        exp, base=base, algorithms=algorithms, seeds=seeds, engine=args.engine or exp.engine,
        **_ray_overrides(args),
    )  # fmt: skip
    validate_experiment(new)
    return new


def check_memory(exp: Experiment) -> None:
    """Refuse, before anything is allocated, a federation whose clients would not fit into
    this machine's memory: the server and, unless a Ray cluster spreads them, every node."""
    from client.runtime import MemoryEstimateError
    from client.runtime import check_memory as check_machine
    from common.config import parse_settings

    here = _clients_here(exp)
    where = f"this machine ({exp.num_supernodes if here else 0} node(s) and the server)"
    for name in exp.algorithms:
        settings = parse_settings(exp.run_config(name, exp.seeds[0], Path(".")))
        try:
            check_machine(settings, exp.num_clients, here, True, where)
        except MemoryEstimateError as err:
            raise ExperimentError(exp.source, "base.clients-per-node", str(err)) from None
        except Exception as err:  # the model could not be built (the user's data or code)
            if not isinstance(err, named_errors()):
                raise
            return  # the run names that problem itself, where it belongs


def _clients_here(exp: Experiment) -> int:
    """Clients whose nodes run on this machine: all, unless a Ray cluster runs the nodes."""
    if exp.engine == "simulation":
        try:
            if choose_ray(exp.ray_address)[0] != PRIVATE:
                return 0
        except RayClusterError:
            pass  # named when the run starts
    return exp.num_clients


def _state(exp: Experiment, cell: Cell) -> str:
    """'done' (same settings finished), 'resume' (checkpoint, no summary) or 'new'."""
    run_dir = Path(cell.run_config["run-dir"])
    config = run_dir / "config.json"
    if (run_dir / "summary.json").exists() and config.exists() and _trained(run_dir):
        _check_federation(exp, run_dir)
        recorded = json.loads(config.read_text())
        for key, value in cell.run_config.items():
            if key != "resume" and recorded.get(key) != value:
                raise ExperimentError(
                    run_dir, key,
                    f"the finished run in this folder has {recorded.get(key)!r}, this "
                    f"experiment {value!r}; use another --out or delete the folder",
                )  # fmt: skip
        return "done"
    if (run_dir / "checkpoint.npz").exists():
        _check_federation(exp, run_dir)  # the server checks the settings it records itself
        return "resume"
    return "new"


FEDERATION = "federation.json"  # the runner's record of the federation a cell trained in
CLIENT_KEYS = ("num-supernodes",)  # federation keys that decide the clients (checked on reuse)


def _federation(exp: Experiment, ray: RayTarget | None = None) -> dict[str, object]:
    """What is not a run-config key: how many nodes there are (which decides the clients),
    and, on the Simulation Engine, what each worker held and which Ray ran it."""
    record: dict[str, object] = {"num-supernodes": exp.num_supernodes}
    if ray is not None:
        record |= {"cpus-per-client": exp.cpus_per_client, "gpus-per-client": exp.gpus_per_client}
        record |= ray.record()
    return record


def _check_federation(exp: Experiment, run_dir: Path) -> None:
    path = run_dir / FEDERATION
    if not path.exists():
        return
    recorded = json.loads(path.read_text())
    for key in CLIENT_KEYS:
        value = _federation(exp)[key]
        if recorded.get(key, value) != value:
            raise ExperimentError(
                exp.source, key,
                f"is {value}, but the run in {run_dir} trained with {recorded[key]} (other "
                "clients: each node serves its own data partitions); use another --out",
            )  # fmt: skip


def _trained(run_dir: Path) -> bool:
    """Whether any round accepted an update. Runs never write a summary otherwise, but a
    folder from before that rule may hold one from a run that trained nothing."""
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            row = json.loads(line)
            if row.get("accepted") is None and "accepted" in row:  # hidden: distributed DP
                if row.get("privacy", {}).get("nodes-summed", 0) > 0:
                    return True
            elif row.get("accepted", 0) > 0:
                return True
        except (ValueError, AttributeError, TypeError):
            continue  # a row cut short by a crash
    return False


def run_cells(exp: Experiment, cells: list[Cell]) -> None:
    todo = [(c, _state(exp, c)) for c in cells]
    pending = [(c, s) for c, s in todo if s != "done"]
    for c, s in todo:
        if s == "done":
            print(f"  [{c.algorithm} seed {c.seed}] already done, reused", flush=True)
    if not pending:
        return
    from common.folders import claim

    ray = None
    if exp.engine == "simulation":  # checked before any folder is written
        ray = resolve_ray(exp.ray_address, exp.ray_nodes, exp.ray_wait)
        federation_config(exp.num_supernodes, _resources(exp), ray)  # refuses what Flower can't
        print(ray.describe(), flush=True)
    for cell, _ in pending:
        run_dir = claim(cell.run_config["run-dir"], "run-dir")
        (run_dir / FEDERATION).write_text(json.dumps(_federation(exp, ray)) + "\n")
    if ray is None:
        for i, (cell, state) in enumerate(pending, 1):
            with _resumable(cell):
                _run_in_loop(exp, cell, state, f"{i}/{len(pending)}")
        return
    with simulation_superlink(ray=ray) as link:
        for i, (cell, state) in enumerate(pending, 1):
            if not ray.private:  # the pool is sized from the nodes alive when a run starts
                wait_for_nodes(ray, exp.ray_nodes, exp.ray_wait)
            with _resumable(cell):
                _run_on_engine(link, exp, cell, state, f"{i}/{len(pending)}")


@contextmanager
def _resumable(cell: Cell) -> Iterator[None]:
    """Ctrl-C inside ``cell`` becomes :class:`Interrupted`, saying where it resumes from."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        raise _interrupted(cell) from None


def _reported(exp: Experiment, everything: Experiment, out: Path) -> Experiment:
    """``exp`` with the file's other rows that finished in ``out`` with the same settings:
    a rerun of some rows (--only) updates them in the summary and keeps the others."""
    kept = {
        name: overrides
        for name, overrides in everything.algorithms.items()
        if name in exp.algorithms or _finished_alike(everything, name, out)
    }
    return dataclasses.replace(exp, algorithms=kept)


def _finished_alike(exp: Experiment, name: str, out: Path) -> bool:
    states = []
    for seed in exp.seeds:
        try:
            states.append(_state(exp, Cell(name, seed, exp.run_config(name, seed, out))))
        except ExperimentError:  # finished with other settings: not this table's row
            return False
    return "done" in states


def _resources(exp: Experiment) -> ClientResources:
    return ClientResources(exp.cpus_per_client, exp.gpus_per_client)


def _config(cell: Cell, state: str) -> dict:
    return cell.run_config | ({"resume": True} if state == "resume" else {})


def _run_in_loop(exp: Experiment, cell: Cell, state: str, tag: str) -> None:
    from simulations.loop import run_in_loop

    print(f"[{tag}] {cell.algorithm} seed {cell.seed} ({state})", flush=True)
    logging.getLogger("flwr").setLevel(logging.INFO)
    t = time.monotonic()
    run_in_loop(_config(cell, state), exp.num_supernodes)
    print(
        f"[{tag}] {cell.algorithm} seed {cell.seed} finished in {time.monotonic() - t:.0f} s",
        flush=True,
    )


_PROGRESS = re.compile(r"INFO\b[^:]*:\s*(round \d+/\d+.*)")  # [^:]: colour codes


def _run_on_engine(link: SuperLink, exp: Experiment, cell: Cell, state: str, tag: str) -> None:
    run_dir = Path(cell.run_config["run-dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"[{tag}] {cell.algorithm} seed {cell.seed} ({state}); log: {run_dir / 'flwr.log'}",
        flush=True,
    )
    t = time.monotonic()
    lines: list[str] = []
    with (run_dir / "flwr.log").open("a") as log:
        log.write(f"{link.ray.describe()}\n")  # which Ray ran it, beside what it printed
        proc = link.start_run(
            _config(cell, state), exp.num_supernodes, exp.cpus_per_client, exp.gpus_per_client
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                lines.append(line)
                if progress := _PROGRESS.search(line):  # the server's round lines only
                    print(f"  [{cell.algorithm} s{cell.seed}] {progress.group(1)}", flush=True)
            code = proc.wait()
        finally:  # Ctrl-C: the `flwr run` we started goes too (the SuperLink stops its app)
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
    where = f"run {cell.algorithm} seed {cell.seed}"
    try:
        if code == 0:
            link.check_finished("".join(lines))  # the ServerApp's exception, if it raised
    except SimulationError as err:
        raise SimulationError(f"{where}: {err}; log: {run_dir / 'flwr.log'}") from None
    if code != 0 or not (run_dir / "summary.json").exists():
        raise SimulationError(f"{where} failed (exit {code}); see {run_dir / 'flwr.log'}")
    print(
        f"[{tag}] {cell.algorithm} seed {cell.seed} finished in {time.monotonic() - t:.0f} s",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
