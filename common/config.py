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


def _spec(check: tuple[Callable[[Any], bool], str], default: Any) -> Any:
    return field(default=default, metadata={"check": check})


@dataclass(frozen=True)
class Settings:
    """All settings of a run. Field docs live in README's configuration table."""

    # what is learned
    algorithm: str = _spec(_choice(Algorithm), "maml")
    # data
    dataset: str = _spec(
        _one_of(
            "sinusoid", "synthetic", "digits", "mnist", "fashion-mnist", "femnist", "omniglot",
            "shakespeare",
        ),
        "sinusoid",
    )  # fmt: skip
    data_path: str = _spec(_ANY, "")
    partition: str = _spec(_one_of("natural", "dirichlet", "pathological", "perfedavg"), "natural")
    classes_per_client: int = _spec(_POS_INT, 2)
    dirichlet_alpha: float = _spec(_POS, 0.5)
    sinusoid_train_points: int = _spec(_POS_INT, 20)
    sinusoid_test_points: int = _spec(_POS_INT, 50)
    synthetic_alpha: float = _spec(_NONNEG, 0.5)
    synthetic_beta: float = _spec(_NONNEG, 0.5)
    test_fraction: float = _spec((lambda v: 0 < v < 1, "a number in (0, 1)"), 0.2)
    # episodic few-shot tasks (omniglot): N-way K-shot episodes, see common/tasks.py
    n_way: int = _spec((lambda v: v >= 2, "an integer >= 2"), 5)
    k_shot: int = _spec(_POS_INT, 1)
    query_shots: int = _spec(_POS_INT, 5)  # query examples per class in a training episode
    eval_episodes: int = _spec(_POS_INT, 10)  # episodes averaged per client evaluation
    # MAML's augmentation: each training character also appears rotated by 90, 180 and 270
    # degrees, as 3 more classes of the same client (new clients' characters stay upright)
    omniglot_rotations: bool = _spec(_BOOL, False)
    # shakespeare (common/data/shakespeare.py): one client per speaking role
    shakespeare_seq_len: int = _spec(_POS_INT, 80)  # characters of context per window (LEAF)
    shakespeare_min_chars: int = _spec(_POS_INT, 2000)  # shorter roles are left out
    shakespeare_stride: int = _spec(_POS_INT, 1)  # one target every this many characters
    # model
    model: str = _spec(_one_of("mlp", "logreg", "cnn", "lstm"), "mlp")
    hidden_sizes: str = _spec(_INT_LIST, "40,40")
    activation: str = _spec(_one_of("relu", "elu"), "relu")
    # federation
    num_rounds: int = _spec(_POS_INT, 100)
    fraction_train: float = _spec(_FRACTION, 0.1)
    fraction_evaluate: float = _spec(_FRACTION, 0.1)
    # how many clients (data partitions) one Flower node hosts and trains together: node i
    # of N hosts partitions i*M .. (i+1)*M-1 of N*M; 1 is one client per node
    clients_per_node: int = _spec(_POS_INT, 1)
    # at most this many of a node's clients run in one vmapped call (memory); 0: all at once
    cohort_size: int = _spec(_NONNEG_INT, 0)
    # evaluate every this many rounds (and always in the final round, which scores everyone)
    evaluate_every: int = _spec(_POS_INT, 1)
    min_available_nodes: int = _spec(_POS_INT, 2)
    node_wait_timeout: float = _spec(_POS, 120.0)  # seconds to wait for min-available-nodes
    round_timeout: float = _spec(_POS, 600.0)  # seconds a round waits for replies
    # client optimisation (Per-FedAvg Algorithm 1 notation)
    local_steps: int = _spec(_POS_INT, 5)  # tau
    batch_size: int = _spec(_POS_INT, 5)  # |D| = |D'| (= |D''| unless hessian-batch-size)
    # stability options (docs/benchmarks.md, "Stability options")
    hessian_batch_size: int = _spec(_NONNEG_INT, 0)  # |D''| of perfedavg-hf; 0: batch-size
    metasgd_alpha_min: float = _spec(_ANY_NUMBER, 0.0)  # lower bound of alpha when bounded
    metasgd_alpha_max: float = _spec(_NONNEG, 0.0)  # 0: alpha unbounded; > 0: upper bound
    inner_lr: float = _spec(_POS, 0.01)  # alpha (initial alpha for metasgd)
    inner_steps: int = _spec(_POS_INT, 1)  # k during meta-training
    outer_lr: float = _spec(_POS, 0.001)  # beta
    eval_steps: int = _spec(_NONNEG_INT, 10)  # k at evaluation
    hessian_free_mode: str = _spec(_one_of("exact", "finite-difference"), "exact")
    hessian_free_delta: float = _spec(_POS, 1e-3)
    metasgd_order: str = _spec(_one_of("second-order", "first-order"), "second-order")
    # robust aggregation (server/robust.py; docs/robustness.md): replaces the weighted mean
    aggregation: str = _spec(_choice(Aggregation), "mean")
    trim_fraction: float = _spec((lambda v: 0 <= v < 0.5, "a number in [0, 0.5)"), 0.2)
    krum_byzantine: int = _spec(_NONNEG_INT, 1)  # f, for krum, multi-krum and bulyan
    multi_krum_keep: int = _spec(_NONNEG_INT, 0)  # m; 0: n - f
    norm_bound: float = _spec(_NONNEG, 0.0)  # clip each update's L2 norm to this; 0: off
    # issue 17: defaults that hold. One client's update counts at most 5x the round's median
    # norm (honest sinusoid rounds reach 2.6x typically, 7x at the 99th percentile) and its
    # claimed examples at most the round's median claim; docs/robustness.md, "Defaults".
    norm_bound_median_factor: float = _spec(_NONNEG, 5.0)  # bound = factor x median; 0: off
    weighting: str = _spec(_choice(Weighting), "capped")
    max_examples_weight: float = _spec(_NONNEG, 0.0)  # 'capped' weighting; 0: round's median
    # simulated attackers (client/attacks.py): a seeded attack-fraction of all clients
    attack: str = _spec(_choice(AttackKind), "none")
    attack_fraction: float = _spec((lambda v: 0 <= v <= 1, "a number in [0, 1]"), 0.0)
    attack_scale: float = _spec(_POS, 10.0)
    attack_noise_std: float = _spec(_POS, 1.0)
    # privacy (docs/privacy.md): client-level DP-FedAvg and SecAgg+ of the meta-updates
    dp: bool = _spec(_BOOL, False)  # clip on the client, Gaussian noise on the server
    dp_clip: float = _spec(_NONNEG, 0.0)  # C: L2 bound of each client's whole update
    dp_noise_multiplier: float = _spec(_NONNEG, 0.0)  # z; 0 with target-epsilon: calibrated
    dp_adaptive: bool = _spec(_BOOL, False)  # C follows a quantile (Andrew et al. 2021)
    dp_target_quantile: float = _spec((lambda v: 0 < v < 1, "a number in (0, 1)"), 0.5)
    dp_clip_lr: float = _spec(_POS, 0.2)  # eta_C of the geometric clip update
    dp_clipped_count_stddev: float = _spec(_NONNEG, 0.0)  # sigma_b; 0: expected cohort / 20
    dp_delta: float = _spec((lambda v: 0 < v < 1, "a number in (0, 1)"), 1e-5)
    target_epsilon: float = _spec(_NONNEG, 0.0)  # refuse / stop beyond this epsilon; 0: none
    secagg: bool = _spec(_BOOL, False)  # the server sees only the sum of the nodes' updates
    secagg_num_shares: float = _spec(_FRACTION, 1.0)  # key shares, fraction of the nodes
    secagg_threshold: float = _spec(_FRACTION, 0.7)  # shares to unmask, fraction of shares
    # server optimizer
    server_optimizer: str = _spec(_one_of("sgd", "adam"), "adam")
    server_lr: float = _spec(_POS, 0.03)
    server_beta1: float = _spec(_OPEN_UNIT, 0.9)
    server_beta2: float = _spec(_OPEN_UNIT, 0.999)
    server_eps: float = _spec(_POS, 1e-8)
    # issue 17: divergence is an outcome. A run whose theta (or alpha) turns non-finite, or
    # that accepts no update for max-stalled-rounds rounds in a row once it has trained,
    # stops as diverged at that round ("stop"), or goes back to the last good state and
    # retries with the server step scaled by rollback-lr-factor, at most max-rollbacks times
    max_stalled_rounds: int = _spec(_POS_INT, 3)
    on_divergence: str = _spec(_one_of("stop", "rollback"), "stop")
    rollback_lr_factor: float = _spec((lambda v: 0 < v < 1, "a number in (0, 1)"), 0.5)
    max_rollbacks: int = _spec(_POS_INT, 3)
    # evaluation on clients never seen in training (server side)
    new_clients: int = _spec(_NONNEG_INT, 0)
    new_client_steps: str = _spec(_INT_LIST, "1,10")
    new_client_train_points: int = _spec(_POS_INT, 5)  # K shots of a new sinusoid client
    # share of pooled samples (digits, mnist, fashion-mnist) held out for new clients
    new_client_fraction: float = _spec((lambda v: 0 < v < 1, "a number in (0, 1)"), 0.2)
    # run
    seed: int = _spec(_NONNEG_INT, 0)
    device: str = _spec(_one_of("auto", "cpu", "cuda"), "auto")
    run_dir: str = _spec((lambda v: v != "", "a non-empty path"), "runs/latest")
    resume: bool = _spec(_BOOL, False)

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
    defaults = Settings()
    for key in ("norm-bound", "norm-bound-median-factor"):
        value, default = getattr(s, key.replace("-", "_")), getattr(defaults, key.replace("-", "_"))
        if value != default:
            raise ConfigError(
                key, value,
                f"its default {default} with {what}, which ignores it: every client already "
                "clips to dp-clip on its own node",
            )  # fmt: skip
    if s.weighting == Weighting.EXAMPLES.value:
        raise ConfigError(
            "weighting", s.weighting,
            f"'uniform' (or the default 'capped', which {what} treats as uniform): every "
            "client counts once in the sum (DP divides it by the fixed expected cohort size, "
            "SecAgg+ by the number of clients); weights from claimed example counts would "
            "let one client exceed the bound dp-clip",
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
