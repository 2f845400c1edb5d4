"""An experiment is a YAML file: settings shared by all runs, the algorithms (each with its
own overrides, stated in the table), the seeds, and the engine that runs them.

    name: sinusoid-quickstart
    engine: simulation            # Flower's Simulation Engine, or `loop` (one process)
    num-supernodes: 100           # clients registered in the federation
    cpus-per-client: 1            # per Simulation Engine worker; fractions allowed (0.5)
    gpus-per-client: 0            # per worker; 0.5 puts two workers on a GPU
    ray-address: ""               # "" Ray's own choice, local, auto or HOST:PORT (docs/scaling.md)
    ray-nodes: 0                  # Ray nodes to wait for (up to ray-wait s) before each run
    ray-wait: 60                  # seconds to wait for them
    seeds: [0, 1, 2]
    base:                         # run-config keys shared by every run
      dataset: sinusoid
      num-rounds: 300
    algorithms:                   # name -> overrides of `base` (may be empty)
      maml: {}
      fedavg: {outer-lr: 0.01}

Every run-config key is checked by common.config before anything runs, so an invalid
file stops with the file, the key and the problem named. The keys the runner sets per run
(:data:`PER_RUN`) are refused where they would be ignored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from common.config import Algorithm, ConfigError, parse_settings

ENGINES = ("simulation", "loop")
SHIPPED = Path(__file__).resolve().parent / "experiments"  # installed with the package
TOP_LEVEL = (
    "name", "engine", "num-supernodes", "cpus-per-client", "seeds", "base", "algorithms",
    # issue 20: where the Simulation Engine's workers run and what each holds
    "gpus-per-client", "ray-address", "ray-nodes", "ray-wait",
)  # fmt: skip

# Run-config keys the runner sets for each run, with why they cannot be set in `base`
# (or with --set); only `algorithm` may be set inside a row.
PER_RUN = {
    "algorithm": (
        "is chosen per row: each name under 'algorithms' runs that algorithm (to run "
        "another algorithm under a row's name, set 'algorithm' inside the row); pick rows "
        "with --only"
    ),
    "seed": "is set per run from 'seeds'",
    "run-dir": "is set per run by the runner (<out>/<row>/seed<k>; choose <out> with --out)",
    "resume": "is set per run by the runner (a run that left a checkpoint resumes from it)",
}


class ExperimentError(ValueError):
    """An experiment file that cannot run, with the file, key and problem named."""

    def __init__(self, path: Path, key: str, problem: str) -> None:
        key = key if len(key) <= MAX_SHOWN else key[: MAX_SHOWN - 3] + "..."
        if len(problem) > MAX_PROBLEM:  # a message quoting a huge value (the config check's)
            problem = problem[: MAX_PROBLEM - 3] + "..."
        super().__init__(f"{path}: key '{key}': {problem}")


@dataclass(frozen=True)
class Cell:
    """One run: an algorithm, a seed, and its full run config."""

    algorithm: str
    seed: int
    run_config: dict[str, Any]


@dataclass(frozen=True)
class Experiment:
    name: str
    engine: str
    num_supernodes: int
    cpus_per_client: float
    seeds: tuple[int, ...]
    base: dict[str, Any]
    algorithms: dict[str, dict[str, Any]]
    source: Path
    gpus_per_client: float = 0.0
    ray_address: str = ""  # "": RAY_ADDRESS, else this machine's cluster, else private
    ray_nodes: int = 0  # Ray nodes a run waits for before it starts (0: no wait)
    ray_wait: float = 60.0  # s to wait for them

    @property
    def clients_per_node(self) -> int:
        return int(self.base.get("clients-per-node", 1))

    @property
    def num_clients(self) -> int:
        """Clients in the federation: nodes x clients-per-node."""
        return self.num_supernodes * self.clients_per_node

    def describe_layout(self) -> str:
        if self.clients_per_node == 1:
            return f"{self.num_clients} clients (one per node)"
        return (
            f"{self.num_clients} clients ({self.num_supernodes} nodes x "
            f"{self.clients_per_node} clients each)"
        )

    def cells(self, out_dir: Path) -> list[Cell]:
        return [
            Cell(name, seed, self.run_config(name, seed, out_dir))
            for name in self.algorithms
            for seed in self.seeds
        ]

    def run_config(self, name: str, seed: int, out_dir: Path) -> dict[str, Any]:
        overrides = self.algorithms[name]
        return {
            **self.base,
            "algorithm": overrides.get("algorithm", name),
            **overrides,
            "seed": seed,
            "run-dir": str((out_dir / name / f"seed{seed}").resolve()),
        }


def find_experiment(name: str | Path) -> Path:
    """A YAML file's path as given, or the experiment of that name shipped with the package
    (``quickstart`` is ``simulations/experiments/quickstart.yaml``, also in an installed copy)."""
    path = Path(name)
    shipped = SHIPPED / f"{path.name.removesuffix('.yaml')}.yaml"
    if not path.exists() and path.parent == Path(".") and shipped.is_file():
        return shipped
    return path


def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


# An experiment file is a few dozen values. Aliases (*name) are shared, not copied, by
# the YAML parser, so nine nested aliases of nine make 9**9 values only when something
# walks the result (the config check, an error message): the "billion laughs" took 35 s
# and 1.4 GB and printed a 351 MB error line. The file is refused before that.
MAX_VALUES = 100_000  # scalars, lists and mappings after aliases are expanded
MAX_SHOWN = 80  # characters of an offending value an error message quotes
MAX_PROBLEM = 1000  # characters of any one problem an ExperimentError states


class StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML says keys are
    unique; PyYAML silently keeps the last) and a document whose aliases expand beyond
    :data:`MAX_VALUES` values."""

    def construct_document(self, node: yaml.Node) -> object:
        size = _expanded_size(node, {})
        if size > MAX_VALUES:
            raise yaml.constructor.ConstructorError(
                None, None,
                f"its aliases (*name) expand it to more than {MAX_VALUES:,} values; write "
                "the values out, or use fewer aliases",
                node.start_mark,
            )  # fmt: skip
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[object, yaml.Mark] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue  # a '<<' merge may be overridden by the mapping's own keys
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None,
                    f"key {shorten(key)} is given twice (first on line "
                    f"{seen[key].line + 1}); keep one",
                    key_node.start_mark,
                )  # fmt: skip
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """Values in ``node`` with every alias expanded, each shared node counted once per use
    (memoised by node, so the count takes time linear in the file, not in its expansion)."""
    if id(node) in sizes:
        return sizes[id(node)]
    sizes[id(node)] = MAX_VALUES + 1  # a node inside itself (recursive alias) is too big
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    else:
        size = 1
    sizes[id(node)] = min(size, MAX_VALUES + 1)
    return sizes[id(node)]


def shorten(value: object, limit: int = MAX_SHOWN) -> str:
    """``repr(value)``, cut to ``limit`` characters: error messages quote what was wrong,
    never a megabyte of it."""
    text = repr(value) if len(str(value)) < 10 * limit else repr(str(value)[: 2 * limit])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _one_line(err: yaml.YAMLError) -> str:
    """The parser's message on one line, without quoting a huge line of the file."""
    text = " ".join(str(err).split())
    return text if len(text) <= 300 else text[:297] + "..."


def parse_yaml(text: str) -> object:
    """``text`` as YAML with :class:`StrictLoader` (the experiment file, ``--set`` values)."""
    return yaml.load(text, Loader=StrictLoader)  # noqa: S506 (a SafeLoader)


def load_experiment(path: str | Path) -> Experiment:
    path = find_experiment(path)
    try:
        raw = parse_yaml(path.read_text())
    except FileNotFoundError:
        problem = f"file not found; shipped experiments, run by name: {', '.join(shipped_names())}"
        raise ExperimentError(path, "-", problem) from None
    except yaml.YAMLError as err:
        raise ExperimentError(path, "-", f"not valid YAML: {_one_line(err)}") from None
    except RecursionError:
        raise ExperimentError(path, "-", "nested too deeply to be an experiment") from None
    if not isinstance(raw, dict):
        raise ExperimentError(path, "-", "the file must be a mapping of keys to values")
    return experiment_from_mapping(raw, path)


def experiment_from_mapping(raw: Mapping[str, Any], path: Path) -> Experiment:
    """An experiment from a mapping shaped like the YAML file (``path`` names it in errors
    and gives the default name; relative data paths resolve against its folder)."""
    for key in raw:
        if key not in TOP_LEVEL:
            raise ExperimentError(path, key, f"unknown key; allowed: {', '.join(TOP_LEVEL)}")
    exp = Experiment(
        name=_get(path, raw, "name", str, path.stem),
        engine=_get(path, raw, "engine", str, "simulation"),
        num_supernodes=_get(path, raw, "num-supernodes", int, 10),
        cpus_per_client=_get(path, raw, "cpus-per-client", float, 1.0),
        seeds=tuple(_get(path, raw, "seeds", list, [0])),
        base=_absolute_data_path(path, _get(path, raw, "base", dict, {})),
        algorithms={
            name: _absolute_data_path(path, overrides)
            for name, overrides in _algorithms(path, raw).items()
        },
        source=path,
        gpus_per_client=_get(path, raw, "gpus-per-client", float, 0.0),
        ray_address=_get(path, raw, "ray-address", str, ""),
        ray_nodes=_get(path, raw, "ray-nodes", int, 0),
        ray_wait=_get(path, raw, "ray-wait", float, 60.0),
    )
    validate_experiment(exp)
    return exp


def _absolute_data_path(path: Path, config: dict[str, Any]) -> dict[str, Any]:
    """A relative ``data-path`` made absolute, so every process (Ray workers run in other
    folders) reads the same data: relative to the working directory when it exists there
    (the README's ``../shared/data/...`` from the project root), else to the YAML's folder.
    """
    value = config.get("data-path")
    if not isinstance(value, str) or not value or Path(value).expanduser().is_absolute():
        return config
    candidates = [Path.cwd() / value, path.resolve().parent / value]
    found = next((c for c in candidates if c.exists()), candidates[0])
    return {**config, "data-path": str(found.resolve())}


def _get(path: Path, raw: Mapping[str, Any], key: str, typ: type, default: Any) -> Any:
    value = raw.get(key, default)
    allowed = (int, float) if typ is float else typ  # a whole number is a number too
    if not isinstance(value, allowed) or (typ in (int, float) and isinstance(value, bool)):
        name = "number" if typ is float else typ.__name__
        raise ExperimentError(path, key, f"must be a {name}, got {shorten(value)}")
    return float(value) if typ is float else value


def _algorithms(path: Path, raw: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    algos = raw.get("algorithms")
    if not isinstance(algos, dict) or not algos:
        raise ExperimentError(path, "algorithms", "must map at least one algorithm to overrides")
    out = {}
    for name, overrides in algos.items():
        overrides = overrides or {}
        if not isinstance(overrides, dict):
            raise ExperimentError(path, f"algorithms.{name}", "overrides must be a mapping")
        out[str(name)] = overrides
    return out


def validate_experiment(exp: Experiment) -> None:
    """Raise ExperimentError unless every run of ``exp`` has valid settings."""
    p = exp.source
    if exp.engine not in ENGINES:
        raise ExperimentError(
            p, "engine", f"{shorten(exp.engine)} is not one of {', '.join(ENGINES)}"
        )
    if exp.num_supernodes < 1:
        raise ExperimentError(p, "num-supernodes", "must be >= 1")
    _validate_resources(exp)
    if not exp.seeds or not all(isinstance(s, int) and s >= 0 for s in exp.seeds):
        raise ExperimentError(
            p, "seeds", f"must be a list of integers >= 0, got {shorten(list(exp.seeds))}"
        )
    for name, overrides in exp.algorithms.items():
        if "clients-per-node" in overrides:
            raise ExperimentError(
                p, f"algorithms.{name}.clients-per-node",
                "is a property of the federation; set it under base so every row has the "
                "same clients",
            )  # fmt: skip
    for key, why in PER_RUN.items():
        if key in exp.base:
            raise ExperimentError(p, f"base.{key}", why)
        for name, overrides in exp.algorithms.items():
            if key in overrides and key != "algorithm":
                raise ExperimentError(p, f"algorithms.{name}.{key}", why)
    valid = {a.value for a in Algorithm}
    for name in exp.algorithms:
        run_config = exp.run_config(name, exp.seeds[0], Path("."))
        if run_config["algorithm"] not in valid:
            raise ExperimentError(
                p, f"algorithms.{name}",
                f"is not an algorithm; name one of {', '.join(sorted(valid))} or set 'algorithm'",
            )  # fmt: skip
        try:
            parse_settings(run_config)
        except ConfigError as err:
            where = (
                "base"
                if err.key in exp.base and err.key not in exp.algorithms[name]
                else f"algorithms.{name}"
            )
            raise ExperimentError(p, f"{where}.{err.key}", str(err)) from None


def _validate_resources(exp: Experiment) -> None:
    """The Ray keys (issue 20): checked here, before any run, like every other key."""
    p = exp.source
    if not exp.cpus_per_client > 0:
        raise ExperimentError(p, "cpus-per-client", f"must be > 0, got {exp.cpus_per_client:g}")
    if exp.gpus_per_client < 0:
        raise ExperimentError(p, "gpus-per-client", f"must be >= 0, got {exp.gpus_per_client:g}")
    if exp.ray_nodes < 0 or exp.ray_wait < 0:
        raise ExperimentError(p, "ray-nodes/ray-wait", "must be >= 0")
    from simulations.ray_cluster import RayClusterError, check_address

    try:
        check_address(exp.ray_address)
    except RayClusterError as err:
        raise ExperimentError(p, "ray-address", str(err)) from None
