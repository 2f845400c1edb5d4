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
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type, or out of range."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        value = _plain(value)  # an enum as the string the config wrote
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config key '{key}' has value {value!r}; allowed: {allowed}")


class Algorithm(enum.StrEnum):
    """What a client does with its data each round (see README, 'Algorithms')."""

    MAML = "maml"
    PERFEDAVG_FO = "perfedavg-fo"
    PERFEDAVG_HF = "perfedavg-hf"
    METASGD = "metasgd"
    FEDAVG = "fedavg"
    FEDAVG_FT = "fedavg-ft"
    LOCAL = "local"


class MetaOrder(enum.StrEnum):
    """How the meta-gradient treats the inner loop's dependence on theta."""

    SECOND = "second-order"  # exact MAML gradient through the inner steps
    FIRST = "first-order"  # FOMAML / Per-FedAvg (FO): gradient at the adapted params
    HESSIAN_FREE = "hessian-free"  # Per-FedAvg (HF): (I - a H(D'')) grad(theta'; D')


class Task(enum.StrEnum):
    REGRESSION = "regression"
    CLASSIFICATION = "classification"


class Aggregation(enum.StrEnum):
    """How the server combines the round's accepted updates (server/robust.py)."""

    MEAN = "mean"  # weighted mean (FedAvg)
    MEDIAN = "median"  # coordinate-wise median (Yin et al. 2018)
    TRIMMED_MEAN = "trimmed-mean"  # coordinate-wise trimmed mean (Yin et al. 2018)
    KRUM = "krum"  # the one update closest to its n-f-2 neighbours (Blanchard et al. 2017)
    MULTI_KRUM = "multi-krum"  # mean of the m best-scored updates by Krum
    BULYAN = "bulyan"  # Multi-Krum selection, then a trimmed median (El Mhamdi et al. 2018)


class Weighting(enum.StrEnum):
    """How much each accepted client counts in a weighted rule (mean, (multi-)krum)."""

    EXAMPLES = "examples"  # its claimed num-examples
    UNIFORM = "uniform"  # 1 each (Per-FedAvg's plain average)
    CAPPED = "capped"  # its claim, at most max-examples-weight (0: the round's median claim)


class AttackKind(enum.StrEnum):
    """What a simulated malicious client sends (client/attacks.py)."""

    NONE = "none"
    SCALED = "scaled"  # its honest update times attack-scale
    SIGN_FLIP = "sign-flip"  # its honest update times -attack-scale
    GAUSSIAN = "gaussian"  # pure noise N(0, attack-noise-std^2)
    NUM_EXAMPLES_LIE = "num-examples-lie"  # -update, claiming attack-scale x its examples
    LABEL_FLIP = "label-flip"  # trains honestly on flipped labels (data poisoning)
    SAME_BAD_UPDATE = "same-bad-update"  # every attacker the same crafted vector (colluding)


# issue 16: the formats users bring (common/data/user_data.py), and Flower Datasets'
# partitioners that only they accept (the built-in datasets keep their own lists)
USER_DATASETS = ("table", "client-folders", "hf-disk")
FLOWER_ONLY_PARTITIONS = ("iid", "shard", "linear", "square", "exponential")


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


_SHAPE = (lambda v: v == "" or _int_list(v), "'' or comma-separated sizes, e.g. '1,28,28'")
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


def _spec(
    check: tuple[Callable[[Any], bool], str], default: Any, group: str, doc: str, key: str = ""
) -> Any:
    """A setting: its check, default, group and the one description of what it does (the
    source of docs/config.md and of pyproject's ``[tool.flwr.app.config]``); ``key`` when
    its config key is not its kebab-case name."""
    assert group in GROUPS, group
    return field(default=default, metadata={"check": check, "group": group, "doc": doc, "key": key})


# issue 16: a user's model factory or loss "package.module:attribute" (common/plugins.py)
BUILT_IN_MODELS = ("mlp", "logreg", "cnn", "lstm")  # common/models.py's factory table
IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _is_json_object(v: str) -> bool:
    if not v.strip():
        return True
    try:
        return isinstance(json.loads(v), dict)
    except ValueError:
        return False


_MODEL = (
    lambda v: v in BUILT_IN_MODELS or bool(IMPORT_PATH.match(v)),
    "one of " + ", ".join(repr(m) for m in BUILT_IN_MODELS)
    + ", or a factory 'package.module:function' (docs/models.md)",
)  # fmt: skip
_LOSS = (
    lambda v: v == "" or bool(IMPORT_PATH.match(v)),
    "'' (cross-entropy or MSE, from the task) or 'package.module:function' (docs/models.md)",
)
_JSON_OBJECT = (_is_json_object, "a JSON object of keyword arguments, e.g. '{\"hidden\": 64}'")


@dataclass(frozen=True)
class Settings:
    """All settings of a run, each described once here (docs/config.md is generated)."""

    algorithm: Algorithm = _spec(
        _choice(Algorithm),
        Algorithm.MAML,
        "meta",
        "what a client does with its data each round: exact second-order MAML, Per-FedAvg "
        "(first-order, Hessian-free), Meta-SGD, or the baselines FedAvg, FedAvg + fine-tuning "
        "and local training",
    )
    dataset: str = _spec(
        _one_of(
            "sinusoid", "synthetic", "digits", "mnist", "fashion-mnist", "femnist", "omniglot",
            "shakespeare", *USER_DATASETS,
        ),
        "sinusoid",
        "data",
        "the clients' data: MAML's sinusoids, FedProx's Synthetic(α, β), scikit-learn's "
        "digits, (Fashion-)MNIST, FEMNIST by writer, Omniglot, Shakespeare by speaking role; "
        "your own: table (CSV/Parquet), client-folders (<client>.npz or <client>/<label>/"
        "*.png), hf-disk (a Hugging Face dataset saved with save_to_disk), docs/your-model.md",
    )  # fmt: skip
    data_path: str = _spec(
        _ANY,
        "",
        "data",
        (
            "file or folder of the dataset (mnist/fashion-mnist/femnist/omniglot, your own "
            "data); a SuperNode's node config `data-path` overrides it (its own data: "
            "with no `partition-id` the node hosts every client of its file)"
        ),
    )
    partition: str = _spec(
        _one_of("natural", "dirichlet", "pathological", "perfedavg", *FLOWER_ONLY_PARTITIONS),
        "natural",
        "data",
        (
            "natural (one task/user/writer per client), dirichlet, pathological, "
            "perfedavg (Fallah et al.'s MNIST split); for table and hf-disk without a "
            "client-column also Flower Datasets' iid, shard, linear, square, exponential"
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
    # issue 16, your own data (common/data/user_data.py; docs/your-model.md)
    client_column: str = _spec(
        _ANY, "", "data",
        "table / hf-disk: the column naming each row's client (partition `natural`); empty: "
        "the rows are split by `partition` (dirichlet, pathological, iid, shard, linear, "
        "square, exponential: Flower Datasets' partitioners)",
    )  # fmt: skip
    label_column: str = _spec(
        _ANY, "label", "data",
        "table / hf-disk: the label column: integer class ids 0..C-1, or real targets with "
        "task regression",
    )  # fmt: skip
    feature_columns: str = _spec(
        _ANY, "", "data",
        "table / hf-disk: comma-separated feature columns; empty: every column but the "
        "client, label and split ones",
    )  # fmt: skip
    split_column: str = _spec(
        _ANY, "", "data",
        "table / hf-disk: a column of `train`/`test` per row; empty: each client gets its "
        "own seeded `test-fraction` split",
    )  # fmt: skip
    num_classes: int = _spec(
        _NONNEG_INT, 0, "data",
        "table / client-folders / hf-disk: classes C; 0: the largest label + 1. Required "
        "when the data lives only on the SuperNodes",
    )  # fmt: skip
    input_shape: str = _spec(
        _SHAPE, "", "data",
        "client-folders / hf-disk: one sample's shape (e.g. `1,28,28`); empty: from the "
        "data. Required there when the data lives only on the SuperNodes (a table's shape "
        "is its feature-columns)",
    )  # fmt: skip
    model: str = _spec(
        _MODEL,
        "mlp",
        "model",
        (
            "mlp, logreg, cnn (MAML's conv net, BatchNorm without running stats), lstm "
            "(LEAF's char-LSTM: embedding 8, widths from hidden-sizes; written from "
            "Linear gates so it runs under vmap and second order), or your own factory "
            "`package.module:function` (docs/models.md)"
        ),
    )
    hidden_sizes: str = _spec(
        _INT_LIST, "40,40", "model", "mlp widths / cnn channels, comma-separated"
    )
    activation: str = _spec(_one_of("relu", "elu"), "relu", "model", "mlp activation: relu or elu")
    # issue 16, your own model (docs/models.md)
    model_args: str = _spec(
        _JSON_OBJECT, "", "model",
        "keyword arguments of the model factory as a JSON object, e.g. `{\"hidden\": 64}`; "
        "with a built-in name they override hidden-sizes and activation",
    )  # fmt: skip
    task_choice: str = _spec(
        _one_of("auto", *(t.value for t in Task)), "auto", "model",
        "auto (what the dataset is: sinusoid regression, the others classification; your "
        "own data classification), classification (cross-entropy) or regression (MSE)",
        key="task",
    )  # fmt: skip
    loss: str = _spec(
        _LOSS, "", "model",
        "a loss `package.module:function`, fn(pred, target) -> scalar tensor, used in "
        "training and scoring; empty: the task's own",
    )  # fmt: skip
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
    metasgd_order: MetaOrder = _spec(
        _one_of(MetaOrder.SECOND.value, MetaOrder.FIRST.value),
        MetaOrder.SECOND,
        "meta",
        "meta-gradient order used by metasgd",
    )
    aggregation: Aggregation = _spec(
        _choice(Aggregation),
        Aggregation.MEAN,
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
    # issue 17: defaults that hold. One client's update counts at most 5x the round's median
    # norm (honest sinusoid rounds reach 2.6x typically, 7x at the 99th percentile) and its
    # claimed examples at most the round's median claim; docs/robustness.md, "Defaults".
    norm_bound_median_factor: float = _spec(
        _NONNEG, 5.0, "robust",
        "bound = factor × the round's median update norm; 0: off. The default 5 lets no "
        "client count more than an honest one can (docs/robustness.md, \"Defaults\")",
    )  # fmt: skip
    weighting: Weighting = _spec(
        _choice(Weighting), Weighting.CAPPED, "robust",
        "examples, uniform, capped (the default: each claim capped at max-examples-weight, "
        "0: the round's median claim, so a client claiming 1e9 examples counts like a "
        "typical one)",
    )  # fmt: skip
    max_examples_weight: float = _spec(
        _NONNEG, 0.0, "robust", "the cap of `capped`; 0: the round's median claim"
    )
    attack: AttackKind = _spec(
        _choice(AttackKind),
        AttackKind.NONE,
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
    # issue 18: unpredictable noise, accountant choice, distributed DP under SecAgg+
    dp_reproducible_noise: bool = _spec(
        _BOOL,
        False,
        "privacy",
        (
            "**not a private release**: noise and DP sampling drawn from `seed` (tests, "
            "benchmarks); by default they come from OS entropy, kept only in the checkpoint"
        ),
    )
    dp_accountant: str = _spec(
        _one_of("pld", "rdp"),
        "pld",
        "privacy",
        "how ε is computed: pld (privacy loss distributions, tighter) or rdp (Rényi DP)",
    )
    dp_mechanism: str = _spec(
        _one_of("central", "distributed"),
        "central",
        "privacy",
        (
            "central (the server adds Gaussian noise) or distributed (each node adds discrete "
            "Gaussian noise before SecAgg+ masks its sum; needs `secagg`)"
        ),
    )
    dp_tolerated_drops: int = _spec(
        _NONNEG_INT,
        0,
        "privacy",
        "distributed: nodes that may drop out of a round with the full noise still in the sum",
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
    # issue 17: divergence is an outcome (server/divergence.py)
    max_stalled_rounds: int = _spec(
        _POS_INT, 3, "optimizer",
        "a run that has trained and then accepts no client update for this many rounds in a "
        "row has diverged (at the last round that accepted one)",
    )  # fmt: skip
    on_divergence: str = _spec(
        _one_of("stop", "rollback"), "stop", "optimizer",
        "stop: a run whose theta or alpha turns NaN/inf, that stalls, or whose loss before "
        "adapting passes 10x its first evaluated value stops as diverged at its round "
        "(summary.json says so, no model.pt, exit status 3 for a single run); "
        "rollback: back to the state before the step that caused it, server-lr scaled by "
        "rollback-lr-factor, at most max-rollbacks times (rollback.json logs each)",
    )  # fmt: skip
    rollback_lr_factor: float = _spec(
        (lambda v: 0 < v < 1, "a number in (0, 1)"), 0.5, "optimizer",
        "on-divergence rollback: the server step size is multiplied by this at each rollback",
    )  # fmt: skip
    max_rollbacks: int = _spec(
        _POS_INT, 3, "optimizer", "on-divergence rollback: rollbacks before the run stops"
    )
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
    # issue 20: with a million clients, scoring every one at the end takes far longer than
    # training does; this samples the final evaluation like the others (seeded, reproducible)
    final_fraction_evaluate: float = _spec(
        _FRACTION,
        1.0,
        "evaluation",
        "fraction of clients the final round scores (1: every client, for the summary table)",
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

    def __post_init__(self) -> None:
        """A choice among an enum's values is stored as that enum (a ``StrEnum``: it
        compares, formats and serialises as the string the config wrote)."""
        for name, enum_cls in _ENUM_FIELDS.items():
            object.__setattr__(self, name, enum_cls(getattr(self, name)))

    # ---- derived views (computed, never stored twice) ----
    @functools.cached_property
    def _hash(self) -> int:
        return hash(tuple(getattr(self, f.name) for f in dataclasses.fields(self)))

    def __hash__(self) -> int:
        """Computed once: settings key the per-process caches, looked up per client."""
        return self._hash

    @property
    def meta_order(self) -> MetaOrder | None:
        """The meta-gradient order, or None for algorithms without an inner loop."""
        return {
            Algorithm.MAML: MetaOrder.SECOND,
            Algorithm.PERFEDAVG_FO: MetaOrder.FIRST,
            Algorithm.PERFEDAVG_HF: MetaOrder.HESSIAN_FREE,
            Algorithm.METASGD: self.metasgd_order,
        }.get(self.algorithm)

    @property
    def learns_inner_lr(self) -> bool:
        return self.algorithm is Algorithm.METASGD

    @property
    def adapts_at_evaluation(self) -> bool:
        """fedavg and local are scored as they are; all others personalise k steps."""
        return self.algorithm not in (Algorithm.FEDAVG, Algorithm.LOCAL) and self.eval_steps > 0

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
        """The config's ``task``; with 'auto' what the dataset is (sinusoid: regression).

        A user's own data is classification unless ``task = regression``: the data layer
        reads this to decide whether labels are classes, so it is never derived from it.
        """
        if self.task_choice != "auto":
            return Task(self.task_choice)
        return _BUILT_IN_TASKS.get(self.dataset, Task.CLASSIFICATION)

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """``model-args`` parsed: the keyword arguments of the model factory."""
        return json.loads(self.model_args) if self.model_args.strip() else {}


def config_key(f: dataclasses.Field) -> str:
    """The run-config key of a Settings field: its kebab-case name unless it names one."""
    return f.metadata["key"] or f.name.replace("_", "-")


_FIELDS = {config_key(f): f for f in dataclasses.fields(Settings)}
_ENUMS = {e.__name__: e for e in (Algorithm, MetaOrder, Task, Aggregation, Weighting, AttackKind)}
# Settings.__post_init__ looks this up when an instance is made, after the class exists
_ENUM_FIELDS = {f.name: _ENUMS[f.type] for f in dataclasses.fields(Settings) if f.type in _ENUMS}


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
        value = _coerce(key, raw, str if f.type in _ENUMS else _TYPES[str(f.type)])
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
    _check_user_data(s)
    _check_task(s)


def _check_user_data(s: Settings) -> None:
    """issue 16: which clients a user's data can be split into (common/data/user_data.py)."""
    if s.dataset not in USER_DATASETS:
        if s.partition in FLOWER_ONLY_PARTITIONS:
            raise ConfigError(
                "partition", s.partition,
                f"a partition of dataset '{s.dataset}' ('{s.partition}' is for dataset "
                f"{', '.join(repr(d) for d in USER_DATASETS)})",
            )  # fmt: skip
        return
    if s.partition == "perfedavg":
        raise ConfigError("partition", s.partition, "'perfedavg' only with mnist/fashion-mnist")
    if s.dataset == "client-folders" and s.partition != "natural":
        raise ConfigError(
            "partition", s.partition, "'natural' for dataset 'client-folders' (a file per client)"
        )
    if s.dataset != "client-folders" and (s.partition == "natural") != bool(s.client_column):
        raise ConfigError(
            "partition" if s.client_column else "client-column",
            s.partition if s.client_column else s.client_column,
            "'natural' when client-column names the clients (or clear client-column to "
            "split the rows with this partition)"
            if s.client_column
            else "the column that names each row's client with partition 'natural' (or a "
            "partition that splits the rows: dirichlet, pathological, iid, shard, linear, "
            "square, exponential)",
        )  # fmt: skip


# What each built-in dataset is (Settings.task with task = 'auto').
_BUILT_IN_TASKS = {"sinusoid": Task.REGRESSION} | {
    d: Task.CLASSIFICATION
    for d in ("synthetic", "digits", "mnist", "fashion-mnist", "femnist", "omniglot", "shakespeare")
}


def _check_task(s: Settings) -> None:
    """issue 16: an explicit task must be what a built-in dataset is."""
    known = _BUILT_IN_TASKS.get(s.dataset)
    if known is not None and s.task_choice not in ("auto", known.value):
        raise ConfigError(
            "task", s.task_choice, f"'auto' or '{known.value}' for dataset '{s.dataset}'"
        )


def _check_attack(s: Settings) -> None:
    attacking = s.attack is not AttackKind.NONE
    if attacking and s.attack_fraction == 0:
        raise ConfigError(
            "attack-fraction", s.attack_fraction, f"a number in (0, 1] with attack '{s.attack}'"
        )
    if not attacking and s.attack_fraction > 0:
        raise ConfigError(
            "attack", s.attack, "an attack kind other than 'none' when attack-fraction > 0"
        )
    if s.attack is AttackKind.LABEL_FLIP and s.episodic:
        raise ConfigError(
            "attack", s.attack,
            f"another kind for dataset '{s.dataset}' (episodes relabel classes 0..N-1, so a "
            "flipped label is only another name)",
        )  # fmt: skip


# Keys that mean something only with dp = true (dp-clip also serves secagg = true alone).
DP_ONLY_KEYS = (
    "dp-noise-multiplier", "dp-adaptive", "dp-target-quantile", "dp-clip-lr",
    "dp-clipped-count-stddev", "dp-delta", "target-epsilon", "dp-reproducible-noise",
    "dp-accountant", "dp-mechanism", "dp-tolerated-drops",
)  # fmt: skip


def _check_dp_keys(s: Settings) -> None:
    """A DP key set without what it belongs to would be silently ignored: no DP, no warning,
    and a reader of the config would believe the run private. Refuse it instead."""
    defaults = {f.name: f.default for f in dataclasses.fields(Settings)}
    if not s.dp:
        for key in DP_ONLY_KEYS + (() if s.secagg else ("dp-clip",)):
            name = key.replace("-", "_")
            if getattr(s, name) != defaults[name]:
                raise ConfigError(
                    key, getattr(s, name),
                    f"its default {defaults[name]!r} unless dp = true: without dp it does "
                    "nothing and the run has no differential privacy",
                )  # fmt: skip
        return
    if s.dp_clipped_count_stddev and not s.dp_adaptive:
        raise ConfigError(
            "dp-clipped-count-stddev", s.dp_clipped_count_stddev,
            "0 unless dp-adaptive = true: it is the noise on the clipped count that only "
            "adaptive clipping releases",
        )  # fmt: skip
    distributed = s.dp_mechanism == "distributed"
    if distributed and not s.secagg:
        raise ConfigError(
            "dp-mechanism", s.dp_mechanism,
            "'central' unless secagg = true: distributed noise is private only because "
            "SecAgg+ hides each node's noised sum",
        )  # fmt: skip
    if distributed and s.dp_adaptive:
        raise ConfigError(
            "dp-adaptive", s.dp_adaptive,
            "false with dp-mechanism = 'distributed': the clipped count would need its own "
            "distributed noise",
        )  # fmt: skip
    if s.dp_tolerated_drops and not distributed:
        raise ConfigError(
            "dp-tolerated-drops", s.dp_tolerated_drops,
            "0 unless dp-mechanism = 'distributed' (with central DP the server adds all noise)",
        )  # fmt: skip


def _check_privacy(s: Settings) -> None:
    """DP and SecAgg+ need a client-side clip bound and the plain, unweighted sum."""
    _check_dp_keys(s)
    if not (s.dp or s.secagg):
        return
    what = "dp = true" if s.dp else "secagg = true"
    if s.dp_clip <= 0:
        raise ConfigError(
            "dp-clip", s.dp_clip,
            f"a number > 0 with {what}: the L2 bound C every client clips its whole update "
            "to (theta and Meta-SGD's alpha) before it leaves the node; it is DP's "
            "sensitivity and sets SecAgg+'s quantization range",
        )  # fmt: skip
    if s.aggregation is not Aggregation.MEAN:
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
    if s.weighting is Weighting.EXAMPLES:
        raise ConfigError(
            "weighting", s.weighting,
            f"'uniform' (or the default 'capped', which {what} treats as uniform): every "
            "client counts once in the sum (DP divides it by the fixed expected cohort size, "
            "SecAgg+ by the number of clients); weights from claimed example counts would "
            "let one client exceed the bound dp-clip",
        )  # fmt: skip
    if s.algorithm is Algorithm.LOCAL:
        raise ConfigError("algorithm", s.algorithm, f"a federated algorithm with {what}")
    if s.secagg and s.min_available_nodes < 2:
        raise ConfigError(
            "min-available-nodes", s.min_available_nodes,
            "at least 2 with secagg = true: SecAgg+ masks each node's sum with its "
            "neighbours' keys, so a single node's sum would be its own",
        )  # fmt: skip


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
    """The char-LSTM and the Shakespeare roles belong together (and only together); a
    model by import path is the user's to fit to the data (checked on one batch)."""
    if s.model in BUILT_IN_MODELS and (s.dataset == "shakespeare") != (s.model == "lstm"):
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
    """The inverse of :func:`parse_settings` (used to record a run's exact settings): plain
    TOML values, so an enum is written as its string (config.json, model.pt, the hash)."""
    return {config_key(f): _plain(getattr(s, f.name)) for f in dataclasses.fields(s)}


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value
