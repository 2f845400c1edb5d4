"""One frozen, validated settings object, parsed once from Flower's run config.

Every key of ``[tool.flwr.app.config]`` in ``pyproject.toml`` maps to one field of
:class:`Settings` (kebab-case there, snake_case here). :func:`parse_settings` rejects an
unknown key, a wrong type or an out-of-range value with a :class:`ConfigError` that names
the key, the value and what is allowed, before any round runs.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config key '{key}' has value {value!r}; allowed: {allowed}")


class Algorithm(enum.Enum):
    """What a client does with its data each round (see README, 'Algorithms')."""

    MAML = "maml"
    PERFEDAVG_FO = "perfedavg-fo"
    PERFEDAVG_HF = "perfedavg-hf"
    METASGD = "metasgd"
    FEDAVG = "fedavg"
    FEDAVG_FT = "fedavg-ft"
    LOCAL = "local"


class MetaOrder(enum.Enum):
    """How the meta-gradient treats the inner loop's dependence on theta."""

    SECOND = "second-order"  # exact MAML gradient through the inner steps
    FIRST = "first-order"  # FOMAML / Per-FedAvg (FO): gradient at the adapted params
    HESSIAN_FREE = "hessian-free"  # Per-FedAvg (HF): (I - a H(D'')) grad(theta'; D')


class Task(enum.Enum):
    REGRESSION = "regression"
    CLASSIFICATION = "classification"


class Aggregation(enum.Enum):
    """How the server combines the round's accepted updates (server/robust.py)."""

    MEAN = "mean"  # weighted mean (FedAvg)
    MEDIAN = "median"  # coordinate-wise median (Yin et al. 2018)
    TRIMMED_MEAN = "trimmed-mean"  # coordinate-wise trimmed mean (Yin et al. 2018)
    KRUM = "krum"  # the one update closest to its n-f-2 neighbours (Blanchard et al. 2017)
    MULTI_KRUM = "multi-krum"  # mean of the m best-scored updates by Krum
    BULYAN = "bulyan"  # Multi-Krum selection, then a trimmed median (El Mhamdi et al. 2018)


class Weighting(enum.Enum):
    """How much each accepted client counts in a weighted rule (mean, (multi-)krum)."""

    EXAMPLES = "examples"  # its claimed num-examples
    UNIFORM = "uniform"  # 1 each (Per-FedAvg's plain average)
    CAPPED = "capped"  # its claim, at most max-examples-weight (0: the round's median claim)


class AttackKind(enum.Enum):
    """What a simulated malicious client sends (client/attacks.py)."""

    NONE = "none"
    SCALED = "scaled"  # its honest update times attack-scale
    SIGN_FLIP = "sign-flip"  # its honest update times -attack-scale
    GAUSSIAN = "gaussian"  # pure noise N(0, attack-noise-std^2)
    NUM_EXAMPLES_LIE = "num-examples-lie"  # -update, claiming attack-scale x its examples
    LABEL_FLIP = "label-flip"  # trains honestly on flipped labels (data poisoning)
    SAME_BAD_UPDATE = "same-bad-update"  # every attacker the same crafted vector (colluding)


def _choice(enum_cls: type[enum.Enum]) -> tuple[Callable[[Any], bool], str]:
    values = [m.value for m in enum_cls]
    return (lambda v: v in values), "one of " + ", ".join(repr(v) for v in values)


def _one_of(*values: str) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in values), "one of " + ", ".join(repr(v) for v in values)


def _int_list(v: str) -> bool:
    try:
        items = [int(p) for p in v.split(",")]
    except ValueError:
        return False
    return len(items) > 0 and all(i > 0 for i in items)


_POS = (lambda v: v > 0, "a number > 0")
_NONNEG = (lambda v: v >= 0, "a number >= 0")
_POS_INT = (lambda v: v >= 1, "an integer >= 1")
_NONNEG_INT = (lambda v: v >= 0, "an integer >= 0")
_FRACTION = (lambda v: 0 < v <= 1, "a number in (0, 1]")
_OPEN_UNIT = (lambda v: 0 <= v < 1, "a number in [0, 1)")
_INT_LIST = (_int_list, "comma-separated positive integers, e.g. '40,40'")
_ANY = (lambda v: True, "any string")
_ANY_NUMBER = (lambda v: True, "a finite number")
_BOOL = (lambda v: True, "true or false")


GROUPS = (
    "meta", "data", "model", "federation", "evaluation", "robust", "privacy", "optimizer", "run",
)  # fmt: skip


def _spec(check: tuple[Callable[[Any], bool], str], default: Any, group: str, doc: str) -> Any:
    """A setting: its check, default, group and the one description of what it does (the
    source of docs/config.md and of pyproject's ``[tool.flwr.app.config]``)."""
    assert group in GROUPS, group
    return field(default=default, metadata={"check": check, "group": group, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """All settings of a run, each described once here (docs/config.md is generated)."""

    algorithm: str = _spec(
        _choice(Algorithm),
        "maml",
        "meta",
        "what a client does with its data each round: exact second-order MAML, Per-FedAvg "
        "(first-order, Hessian-free), Meta-SGD, or the baselines FedAvg, FedAvg + fine-tuning "
        "and local training",
    )
    dataset: str = _spec(
        _one_of(
            "sinusoid", "synthetic", "digits", "mnist", "fashion-mnist", "femnist", "omniglot",
            "shakespeare",
        ),
        "sinusoid",
        "data",
        "the clients' data: MAML's sinusoids, FedProx's Synthetic(α, β), scikit-learn's "
        "digits, (Fashion-)MNIST, FEMNIST by writer, Omniglot, Shakespeare by speaking role",
    )  # fmt: skip
    data_path: str = _spec(
        _ANY,
        "",
        "data",
        (
            "file or folder of the dataset (mnist/fashion-mnist/femnist/omniglot); a "
            "SuperNode's node config `data-path` overrides it"
        ),
    )
    partition: str = _spec(
        _one_of("natural", "dirichlet", "pathological", "perfedavg"),
        "natural",
        "data",
        (
            "natural (one task/user/writer per client), dirichlet, pathological, "
            "perfedavg (Fallah et al.'s MNIST split)"
        ),
    )
    classes_per_client: int = _spec(_POS_INT, 2, "data", "pathological: classes per client")
    dirichlet_alpha: float = _spec(
        _POS, 0.5, "data", "dirichlet: concentration (smaller = more skewed)"
    )
    sinusoid_train_points: int = _spec(
        _POS_INT, 20, "data", "sinusoid: points a client adapts/trains on"
    )
    sinusoid_test_points: int = _spec(
        _POS_INT, 50, "data", "sinusoid: held-out points a client is scored on"
    )
    synthetic_alpha: float = _spec(_NONNEG, 0.5, "data", "Synthetic(α, β) of FedProx")
    synthetic_beta: float = _spec(_NONNEG, 0.5, "data", "Synthetic(α, β) of FedProx")
    test_fraction: float = _spec(
        (lambda v: 0 < v < 1, "a number in (0, 1)"),
        0.2,
        "data",
        "per-client test split for datasets without their own (seeded)",
    )
    n_way: int = _spec(
        (lambda v: v >= 2, "an integer >= 2"), 5, "data", "omniglot: classes per episode"
    )
    k_shot: int = _spec(_POS_INT, 1, "data", "omniglot: support examples per class")
    query_shots: int = _spec(
        _POS_INT, 5, "data", "omniglot: query examples per class in a training episode"
    )
    eval_episodes: int = _spec(
        _POS_INT, 10, "data", "omniglot: episodes averaged per client evaluation"
    )
    omniglot_rotations: bool = _spec(
        _BOOL,
        False,
        "data",
        (
            "omniglot: MAML's augmentation, each training character also rotated "
            "90/180/270° as 3 more classes of its client (new clients stay upright)"
        ),
    )
    shakespeare_seq_len: int = _spec(
        _POS_INT, 80, "data", "shakespeare: characters of context per window (LEAF's 80)"
    )
    shakespeare_min_chars: int = _spec(
        _POS_INT,
        2000,
        "data",
        "shakespeare: roles with less text are left out (and counted in the log)",
    )
    shakespeare_stride: int = _spec(
        _POS_INT, 1, "data", "shakespeare: one target every this many characters"
    )
    model: str = _spec(
        _one_of("mlp", "logreg", "cnn", "lstm"),
        "mlp",
        "model",
        (
            "mlp, logreg, cnn (MAML's conv net, BatchNorm without running stats), lstm "
            "(LEAF's char-LSTM: embedding 8, widths from hidden-sizes; written from "
            "Linear gates so it runs under vmap and second order)"
        ),
    )
    hidden_sizes: str = _spec(
        _INT_LIST, "40,40", "model", "mlp widths / cnn channels, comma-separated"
    )
    activation: str = _spec(_one_of("relu", "elu"), "relu", "model", "mlp activation: relu or elu")
    num_rounds: int = _spec(_POS_INT, 100, "federation", "federated rounds")
    fraction_train: float = _spec(
        _FRACTION, 0.1, "federation", "fraction of connected clients trained per round"
    )
    fraction_evaluate: float = _spec(
        _FRACTION,
        0.1,
        "federation",
        "fraction of clients scored per evaluation (the final round scores all)",
    )
    clients_per_node: int = _spec(
        _POS_INT,
        1,
        "federation",
        (
            "clients (data partitions) one node hosts and trains as one cohort: node i of "
            "N hosts partitions i·M … (i+1)·M − 1 of N·M"
        ),
    )
    cohort_size: int = _spec(
        _NONNEG_INT,
        0,
        "federation",
        (
            "at most this many clients in one vmapped call on a node (GPU/CPU memory); 0: "
            "all sampled clients of the node at once"
        ),
    )
    evaluate_every: int = _spec(
        _POS_INT, 1, "evaluation", "evaluate every this many rounds (and always in the final round)"
    )
    min_available_nodes: int = _spec(
        _POS_INT,
        2,
        "federation",
        "nodes required before a round starts (1 for a single cohort node)",
    )
    node_wait_timeout: float = _spec(
        _POS,
        120.0,
        "federation",
        "seconds to wait for min-available-nodes before failing with a message",
    )
    round_timeout: float = _spec(_POS, 600.0, "federation", "seconds a round waits for replies")
    local_steps: int = _spec(_POS_INT, 5, "meta", "τ: local (meta-)steps per round")
    batch_size: int = _spec(
        _POS_INT, 5, "meta", "size of each batch D, D', D'' (and of each adaptation batch)"
    )
    hessian_batch_size: int = _spec(
        _NONNEG_INT,
        0,
        "meta",
        "size of perfedavg-hf's D'' (0: batch-size; Omniglot: shots per class)",
    )
    metasgd_alpha_min: float = _spec(
        _ANY_NUMBER,
        0.0,
        "meta",
        (
            "metasgd: lower bound of α, kept when received, after every local step and "
            "wherever it adapts (with metasgd-alpha-max > 0)"
        ),
    )
    metasgd_alpha_max: float = _spec(
        _NONNEG,
        0.0,
        "meta",
        ("metasgd: upper bound of α (see metasgd-alpha-min); 0 = unbounded, as in Li et al. 2017"),
    )
    inner_lr: float = _spec(
        _POS, 0.01, "meta", "α: inner / personalization step size (Meta-SGD's initial α)"
    )
    inner_steps: int = _spec(
        _POS_INT, 1, "meta", "k: inner steps during meta-training (hessian-free needs 1)"
    )
    outer_lr: float = _spec(
        _POS, 0.001, "meta", "β: client step size (meta-step, or SGD step for fedavg/local)"
    )
    eval_steps: int = _spec(_NONNEG_INT, 10, "evaluation", "k: personalization steps at evaluation")
    hessian_free_mode: str = _spec(
        _one_of("exact", "finite-difference"),
        "exact",
        "meta",
        "exact (double backward) or finite-difference",
    )
    hessian_free_delta: float = _spec(
        _POS, 1e-3, "meta", "δ of the finite-difference Hessian-vector product"
    )
    metasgd_order: str = _spec(
        _one_of("second-order", "first-order"),
        "second-order",
        "meta",
        "meta-gradient order used by metasgd",
    )
    aggregation: str = _spec(
        _choice(Aggregation),
        "mean",
        "robust",
        (
            "mean, median, trimmed-mean, krum, multi-krum, bulyan (see "
            "[`docs/robustness.md`](docs/robustness.md))"
        ),
    )
    trim_fraction: float = _spec(
        (lambda v: 0 <= v < 0.5, "a number in [0, 0.5)"),
        0.2,
        "robust",
        "β of trimmed-mean: ⌊β·n⌋ dropped at each end, in [0, 0.5)",
    )
    krum_byzantine: int = _spec(
        _NONNEG_INT,
        1,
        "robust",
        "f: attackers per round that krum, multi-krum and bulyan are built to resist",
    )
    multi_krum_keep: int = _spec(
        _NONNEG_INT, 0, "robust", "m: updates multi-krum averages; 0: n − f"
    )
    norm_bound: float = _spec(
        _NONNEG, 0.0, "robust", "fixed L2 bound on each client's whole update; 0: off"
    )
    norm_bound_median_factor: float = _spec(
        _NONNEG, 0.0, "robust", "bound = factor × the round's median update norm; 0: off"
    )
    weighting: str = _spec(_choice(Weighting), "examples", "robust", "examples, uniform, capped")
    max_examples_weight: float = _spec(
        _NONNEG, 0.0, "robust", "the cap of `capped`; 0: the round's median claim"
    )
    attack: str = _spec(
        _choice(AttackKind),
        "none",
        "robust",
        (
            "simulation only: none, scaled, sign-flip, gaussian, num-examples-lie, "
            "label-flip, same-bad-update"
        ),
    )
    attack_fraction: float = _spec(
        (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
        0.0,
        "robust",
        "share of all clients that attack, exactly round(fraction × clients)",
    )
    attack_scale: float = _spec(
        _POS, 10.0, "robust", "s of scaled, sign-flip, num-examples-lie and same-bad-update"
    )
    attack_noise_std: float = _spec(_POS, 1.0, "robust", "σ of gaussian")
    dp: bool = _spec(
        _BOOL,
        False,
        "privacy",
        (
            "client-level DP-FedAvg: clients clip, the server Poisson-samples, adds "
            "Gaussian noise to the sum, divides by the expected cohort, accounts ε (see "
            "[`docs/privacy.md`](docs/privacy.md))"
        ),
    )
    dp_clip: float = _spec(
        _NONNEG,
        0.0,
        "privacy",
        (
            "C: L2 bound of each client's whole update (θ and α), clipped on its node; "
            "needed by `dp` and `secagg`"
        ),
    )
    dp_noise_multiplier: float = _spec(
        _NONNEG,
        0.0,
        "privacy",
        ("z (noise std z·C on the sum); 0 with `target-epsilon`: calibrated to it before round 1"),
    )
    dp_adaptive: bool = _spec(
        _BOOL,
        False,
        "privacy",
        ("adaptive clipping (Andrew et al. 2021): C follows a quantile of the update norms"),
    )
    dp_target_quantile: float = _spec(
        (lambda v: 0 < v < 1, "a number in (0, 1)"),
        0.5,
        "privacy",
        "dp-adaptive: the quantile of the update norms that C follows",
    )
    dp_clip_lr: float = _spec(
        _POS, 0.2, "privacy", "dp-adaptive: η_C, the rate of C's geometric update"
    )
    dp_clipped_count_stddev: float = _spec(
        _NONNEG,
        0.0,
        "privacy",
        ("σ_b of the noised unclipped count (adaptive); 0: expected cohort / 20; must exceed z/2"),
    )
    dp_delta: float = _spec(
        (lambda v: 0 < v < 1, "a number in (0, 1)"),
        1e-5,
        "privacy",
        "δ at which ε is reported and checked",
    )
    target_epsilon: float = _spec(
        _NONNEG,
        0.0,
        "privacy",
        (
            "refuse (before round 1) or stop (before the round) a run that would spend "
            "more ε; 0: no limit"
        ),
    )
    secagg: bool = _spec(
        _BOOL,
        False,
        "privacy",
        (
            "training rounds through Flower's SecAgg+: the server sees only the sum over "
            "nodes; excludes robust rules"
        ),
    )
    secagg_num_shares: float = _spec(
        _FRACTION, 1.0, "privacy", "SecAgg+ key shares, as a fraction of the round's nodes"
    )
    secagg_threshold: float = _spec(
        _FRACTION, 0.7, "privacy", "SecAgg+ shares needed to unmask, as a fraction of the shares"
    )
    server_optimizer: str = _spec(
        _one_of("sgd", "adam"),
        "adam",
        "optimizer",
        "sgd (θ + lr·Δ) or adam (on −Δ, moments kept across rounds)",
    )
    server_lr: float = _spec(_POS, 0.03, "optimizer", "server optimizer step size")
    server_beta1: float = _spec(
        _OPEN_UNIT, 0.9, "optimizer", "Adam β₁, the decay of the first moment"
    )
    server_beta2: float = _spec(
        _OPEN_UNIT, 0.999, "optimizer", "Adam β₂, the decay of the second moment"
    )
    server_eps: float = _spec(_POS, 1e-8, "optimizer", "Adam ε, added to the second moment's root")
    new_clients: int = _spec(
        _NONNEG_INT,
        0,
        "evaluation",
        ("clients never seen in training, personalized and scored by the server at the end"),
    )
    new_client_steps: str = _spec(
        _INT_LIST,
        "1,10",
        "evaluation",
        'adaptation steps at which new clients are scored, e.g. "1,10"',
    )
    new_client_train_points: int = _spec(
        _POS_INT, 5, "evaluation", "sinusoid: shots a new client adapts on"
    )
    new_client_fraction: float = _spec(
        (lambda v: 0 < v < 1, "a number in (0, 1)"),
        0.2,
        "evaluation",
        "pooled datasets: share of samples held out for new clients",
    )
    seed: int = _spec(
        _NONNEG_INT, 0, "run", "one seed for data, initialization, sampling and batches"
    )
    device: str = _spec(
        _one_of("auto", "cpu", "cuda"),
        "auto",
        "run",
        (
            "auto (CUDA if available and the model has ≥ 10,000 parameters; tiny models "
            "such as the sinusoid MLP run faster on the CPU), cpu, cuda. Whatever "
            "computes, what is stored, exported or sent is on the CPU"
        ),
    )
    run_dir: str = _spec(
        (lambda v: v != "", "a non-empty path"),
        "runs/latest",
        "run",
        "where metrics, checkpoints and the model go",
    )
    resume: bool = _spec(
        _BOOL,
        False,
        "run",
        "continue from run-dir's checkpoint, with the settings in its config.json",
    )

    # ---- derived views (computed, never stored twice) ----
    @functools.cached_property
    def _hash(self) -> int:
        return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))

    def __hash__(self) -> int:
        """Computed once: settings key the per-process caches, looked up per client."""
        return self._hash

    @property
    def algo(self) -> Algorithm:
        return Algorithm(self.algorithm)

    @property
    def aggregation_rule(self) -> Aggregation:
        return Aggregation(self.aggregation)

    @property
    def weighting_rule(self) -> Weighting:
        return Weighting(self.weighting)

    @property
    def attack_kind(self) -> AttackKind:
        return AttackKind(self.attack)

    @property
    def meta_order(self) -> MetaOrder | None:
        """The meta-gradient order, or None for algorithms without an inner loop."""
        return {
            Algorithm.MAML: MetaOrder.SECOND,
            Algorithm.PERFEDAVG_FO: MetaOrder.FIRST,
            Algorithm.PERFEDAVG_HF: MetaOrder.HESSIAN_FREE,
            Algorithm.METASGD: MetaOrder(self.metasgd_order),
        }.get(self.algo)

    @property
    def learns_inner_lr(self) -> bool:
        return self.algo is Algorithm.METASGD

    @property
    def adapts_at_evaluation(self) -> bool:
        """fedavg and local are scored as they are; all others personalise k steps."""
        return self.algo not in (Algorithm.FEDAVG, Algorithm.LOCAL) and self.eval_steps > 0

    @property
    def hidden(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.hidden_sizes.split(","))

    @property
    def new_client_step_list(self) -> tuple[int, ...]:
        return tuple(int(p) for p in self.new_client_steps.split(","))

    @property
    def episodic(self) -> bool:
        """Clients sample N-way K-shot episodes instead of plain batches (common/tasks.py)."""
        return self.dataset == "omniglot"

    @property
    def hessian_size(self) -> int:
        """|D''| of Per-FedAvg (HF): samples, or shots per class for episodic datasets."""
        if self.hessian_batch_size:
            return self.hessian_batch_size
        return self.k_shot if self.episodic else self.batch_size

    @property
    def alpha_bounds(self) -> tuple[float, float] | None:
        """Meta-SGD's safe range of the learned alpha, or None (unbounded, Li et al. 2017)."""
        if not self.learns_inner_lr or self.metasgd_alpha_max == 0:
            return None
        return self.metasgd_alpha_min, self.metasgd_alpha_max

    @property
    def task(self) -> Task:
        return Task.REGRESSION if self.dataset == "sinusoid" else Task.CLASSIFICATION


_FIELDS = {f.name.replace("_", "-"): f for f in dataclasses.fields(Settings)}


def _coerce(key: str, value: Any, typ: type) -> Any:
    """Accept exactly the TOML type; ints are accepted where floats are expected."""
    if typ is bool:
        ok = isinstance(value, bool)
    elif typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif typ is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = math.isfinite(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        raise ConfigError(key, value, f"a {typ.__name__}")
    return value


_TYPES = {"str": str, "int": int, "float": float, "bool": bool}


def parse_settings(run_config: Mapping[str, Any]) -> Settings:
    """Validate a flat kebab-case mapping (Flower's ``context.run_config``)."""
    values: dict[str, Any] = {}
    for key, raw in run_config.items():
        if key not in _FIELDS:
            raise ConfigError(key, raw, "a known key: " + ", ".join(sorted(_FIELDS)))
        f = _FIELDS[key]
        value = _coerce(key, raw, _TYPES[str(f.type)])
        check, allowed = f.metadata["check"]
        if not check(value):
            raise ConfigError(key, value, allowed)
        values[f.name] = value
    settings = Settings(**values)
    _check_combinations(settings)
    return settings


def _check_combinations(s: Settings) -> None:
    if s.meta_order is MetaOrder.HESSIAN_FREE and s.inner_steps != 1:
        raise ConfigError(
            "inner-steps",
            s.inner_steps,
            "1 with algorithm 'perfedavg-hf' (the Hessian-free estimate of Fallah et al. "
            "2020, eq. 9, is defined for one inner step; use 'maml' for more)",
        )
    _check_stability(s)
    _check_shakespeare(s)
    regression_only = s.dataset == "sinusoid"
    if regression_only and s.partition != "natural":
        raise ConfigError(
            "partition", s.partition, "'natural' for dataset 'sinusoid' (one task per client)"
        )
    if s.dataset == "synthetic" and s.partition != "natural":
        raise ConfigError(
            "partition", s.partition, "'natural' for dataset 'synthetic' (one user per client)"
        )
    if s.partition == "natural" and s.dataset in ("digits", "mnist", "fashion-mnist"):
        raise ConfigError(
            "partition", s.partition,
            f"'dirichlet' or 'pathological' for dataset '{s.dataset}' (it has no writer ids)",
        )  # fmt: skip
    if s.partition == "perfedavg" and s.dataset not in ("mnist", "fashion-mnist"):
        raise ConfigError(
            "partition", s.partition, "'perfedavg' only with dataset 'mnist' or 'fashion-mnist'"
        )
    if s.dataset in ("mnist", "fashion-mnist", "femnist", "omniglot") and not s.data_path:
        raise ConfigError(
            "data-path", s.data_path, f"the folder or file holding the {s.dataset} data"
        )
    if s.dataset == "omniglot":
        _check_episodes(s)
    if s.model == "cnn" and s.dataset in ("sinusoid", "synthetic"):
        raise ConfigError("model", s.model, "'mlp' or 'logreg' for vector inputs")
    _check_attack(s)
    _check_privacy(s)


def _check_attack(s: Settings) -> None:
    attacking = s.attack != AttackKind.NONE.value
    if attacking and s.attack_fraction == 0:
        raise ConfigError(
            "attack-fraction", s.attack_fraction, f"a number in (0, 1] with attack '{s.attack}'"
        )
    if not attacking and s.attack_fraction > 0:
        raise ConfigError(
            "attack", s.attack, "an attack kind other than 'none' when attack-fraction > 0"
        )
    if s.attack == AttackKind.LABEL_FLIP.value and s.episodic:
        raise ConfigError(
            "attack", s.attack,
            f"another kind for dataset '{s.dataset}' (episodes relabel classes 0..N-1, so a "
            "flipped label is only another name)",
        )  # fmt: skip


def _check_privacy(s: Settings) -> None:
    """DP and SecAgg+ need a client-side clip bound and the plain, unweighted sum."""
    if not (s.dp or s.secagg):
        for key in ("dp-adaptive", "target-epsilon"):
            if getattr(s, key.replace("-", "_")):
                raise ConfigError(key, getattr(s, key.replace("-", "_")), "unset without dp = true")
        return
    what = "dp = true" if s.dp else "secagg = true"
    if s.dp_clip <= 0:
        raise ConfigError(
            "dp-clip", s.dp_clip,
            f"a number > 0 with {what}: the L2 bound C every client clips its whole update "
            "to (theta and Meta-SGD's alpha) before it leaves the node; it is DP's "
            "sensitivity and sets SecAgg+'s quantization range",
        )  # fmt: skip
    if s.aggregation != Aggregation.MEAN.value:
        why = (
            "SecAgg+ reveals only the sum of the nodes' updates, so no rule that looks at "
            "single updates (median, trimmed mean, Krum, Bulyan) can run"
            if s.secagg
            else "DP's noise is calibrated to a sum of clipped updates"
        )
        raise ConfigError("aggregation", s.aggregation, f"'mean' with {what}: {why}")
    for key in ("norm-bound", "norm-bound-median-factor"):
        if getattr(s, key.replace("-", "_")):
            raise ConfigError(
                key, getattr(s, key.replace("-", "_")),
                f"0 with {what}: every client already clips to dp-clip on its own node",
            )  # fmt: skip
    if s.weighting != Weighting.UNIFORM.value:
        raise ConfigError(
            "weighting", s.weighting,
            f"'uniform' with {what}: every client counts once in the sum (DP divides it by "
            "the fixed expected cohort size, SecAgg+ by the number of clients); weights "
            "from claimed example counts would let one client exceed the bound dp-clip",
        )  # fmt: skip
    if s.algo is Algorithm.LOCAL:
        raise ConfigError("algorithm", s.algorithm, f"a federated algorithm with {what}")
    if s.secagg and s.min_available_nodes < 2:
        raise ConfigError(
            "min-available-nodes", s.min_available_nodes,
            "at least 2 with secagg = true: SecAgg+ masks each node's sum with its "
            "neighbours' keys, so a single node's sum would be its own",
        )  # fmt: skip
    if s.dp_adaptive and not s.dp:
        raise ConfigError("dp-adaptive", s.dp_adaptive, "false unless dp = true")
    if s.target_epsilon and not s.dp:
        raise ConfigError("target-epsilon", s.target_epsilon, "0 unless dp = true")


OMNIGLOT_DRAWERS = 20  # drawings per Omniglot character


def omniglot_test_drawers(test_fraction: float) -> int:
    """Drawings per character held out for scoring (the rest are adapted and trained on)."""
    return min(max(round(OMNIGLOT_DRAWERS * test_fraction), 1), OMNIGLOT_DRAWERS - 1)


def _check_episodes(s: Settings) -> None:
    if s.partition != "natural":
        raise ConfigError(
            "partition", s.partition,
            "'natural' for dataset 'omniglot' (each client owns a block of characters)",
        )  # fmt: skip
    train_drawers = OMNIGLOT_DRAWERS - omniglot_test_drawers(s.test_fraction)
    if s.k_shot + s.query_shots > train_drawers:
        raise ConfigError(
            "query-shots", s.query_shots,
            f"at most {train_drawers - s.k_shot}: k-shot + query-shots drawings per class "
            f"must fit in the {train_drawers} training drawings a character keeps with "
            f"test-fraction={s.test_fraction}",
        )  # fmt: skip


def _check_stability(s: Settings) -> None:
    if s.metasgd_alpha_max > 0 and s.metasgd_alpha_min >= s.metasgd_alpha_max:
        raise ConfigError(
            "metasgd-alpha-min", s.metasgd_alpha_min,
            f"a number below metasgd-alpha-max={s.metasgd_alpha_max}",
        )  # fmt: skip
    if s.episodic and s.hessian_batch_size:
        train_drawers = OMNIGLOT_DRAWERS - omniglot_test_drawers(s.test_fraction)
        if s.hessian_batch_size > train_drawers:
            raise ConfigError(
                "hessian-batch-size", s.hessian_batch_size,
                f"at most {train_drawers} for dataset '{s.dataset}' (D'' shots per class, "
                f"drawn from the {train_drawers} training drawings a character keeps)",
            )  # fmt: skip


def _check_shakespeare(s: Settings) -> None:
    """The char-LSTM and the Shakespeare roles belong together (and only together)."""
    if (s.dataset == "shakespeare") != (s.model == "lstm"):
        allowed = (
            "'lstm' for dataset 'shakespeare' (next-character prediction on text windows)"
            if s.dataset == "shakespeare"
            else f"'mlp', 'logreg' or 'cnn' for dataset '{s.dataset}' ('lstm' reads text)"
        )
        raise ConfigError("model", s.model, allowed)
    if s.dataset != "shakespeare":
        return
    if s.partition != "natural":
        raise ConfigError(
            "partition", s.partition, "'natural' for dataset 'shakespeare' (one role per client)"
        )
    if not s.data_path:
        raise ConfigError(
            "data-path", s.data_path,
            "tinyshakespeare.txt, a LEAF Shakespeare JSON file, or a LEAF folder with "
            "train/ and test/ (see docs/benchmarks.md, 'Shakespeare')",
        )  # fmt: skip


def settings_to_run_config(s: Settings) -> dict[str, Any]:
    """The inverse of :func:`parse_settings` (used to record a run's exact settings)."""
    return {f.name.replace("_", "-"): getattr(s, f.name) for f in dataclasses.fields(s)}
