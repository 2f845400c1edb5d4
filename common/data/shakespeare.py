"""Shakespeare by speaking role: next-character prediction, one client per role.

LEAF's second benchmark (Caldas et al. 2018) and FedMeta's (Chen et al. 2018): every
speaking role of the plays is a client, a natural partition. A sample is a window of
``shakespeare-seq-len`` characters (LEAF: 80) and its label is the character after it.

Two sources, picked by what ``data-path`` names:

* ``tinyshakespeare.txt`` (Karpathy's char-rnn file): speeches are separated by a blank
  line and start with a line ``NAME:``. A role's text is its lines in order; the first
  windows are left-padded with spaces, as LEAF pads. Its last ``test-fraction`` of lines
  are its test split (split by time: the model is scored on what the role says later);
  a test window's context may reach back into the train lines, its target never does.
  Roles of the same name in different plays are one role (the file has no play markers).
* LEAF's JSON (``{"users", "num_samples", "user_data": {user: {"x": [80-char strings],
  "y": [next characters]}}}``, from ``preprocess.sh``): a file, whose users are split by
  time like the text (the last ``test-fraction`` of each user's samples, in file order), or
  a folder with LEAF's ``train/`` and ``test/`` JSON files, whose split is kept as LEAF made
  it. Windows longer than ``shakespeare-seq-len`` keep their last characters.

Characters are LEAF's 80-letter alphabet plus one id for anything else ('$' is the only one
in tinyshakespeare). Roles with fewer than ``shakespeare-min-chars`` characters (targets,
for LEAF files) are left out and counted in a log line. The eligible roles are ordered by a
seeded permutation; training clients are the first ``num_partitions``, new clients
(server/new_clients.py) the last ``new-clients``, so no new client is a trained role.
``shakespeare-stride`` keeps one target every that many characters (1: every one, as
LEAF), which divides the samples, and the cost of scoring a role, by the stride.

Samples are float32 character ids (the project's ``x`` dtype; ids below 2**24 are exact),
which :class:`common.models.CharLSTM` casts back to integers for its embedding.
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.config import Settings
from common.data.types import ClientData, DataError
from common.streams import ROLE_ORDER_STREAM

log = logging.getLogger("flwr")

LEAF_LETTERS = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
UNKNOWN = len(LEAF_LETTERS)  # any character outside LEAF's alphabet
VOCABULARY = len(LEAF_LETTERS) + 1
PAD = LEAF_LETTERS.index(" ")  # LEAF pads the first windows with spaces
_IDS = np.full(0x110000, UNKNOWN, np.uint8)  # Unicode code point -> character id
_IDS[[ord(c) for c in LEAF_LETTERS]] = np.arange(len(LEAF_LETTERS))

WHERE_FROM = (
    "tinyshakespeare.txt (Karpathy's char-rnn data) or LEAF's Shakespeare JSON "
    "(TalwalkarLab/leaf, data/shakespeare/preprocess.sh)"
)


def encode(text: str) -> np.ndarray:
    """Character ids of ``text`` (uint8): LEAF's alphabet, ``UNKNOWN`` for the rest."""
    return _IDS[np.frombuffer(text.encode("utf-32-le"), np.uint32)]


@dataclass(frozen=True)
class Role:
    """One speaking role: its text as ids, and where its test part starts.

    ``windows`` holds LEAF's ready-made samples instead of text (LEAF JSON): rows of ids,
    with ``codes`` their targets.
    """

    name: str
    codes: np.ndarray  # the role's character ids in order (targets)
    test_start: int  # index into ``codes`` of the first test target
    windows: np.ndarray | None = None  # LEAF: (samples, length) context ids per target

    @property
    def length(self) -> int:
        return len(self.codes)


@dataclass(frozen=True)
class Roles:
    """The eligible roles of a source, in seeded order, and how many were left out."""

    roles: tuple[Role, ...]
    left_out: int
    source: str


def parse_speeches(text: str) -> dict[str, list[str]]:
    """Role name -> its lines in order, from tinyshakespeare's ``NAME:`` speeches."""
    lines: dict[str, list[str]] = {}
    for number, speech in enumerate(text.replace("\r\n", "\n").split("\n\n")):
        rows = speech.strip("\n").split("\n")
        if not rows or not rows[0]:
            continue
        head = rows[0]
        if not head.endswith(":"):
            raise DataError(
                f"speech {number + 1} does not start with a 'NAME:' line: {head[:60]!r} "
                f"(expected {WHERE_FROM})"
            )
        if len(rows) > 1:  # the file has a few names with an empty speech
            lines.setdefault(head[:-1], []).extend(rows[1:])
    return lines


def _text_role(name: str, lines: list[str], test_fraction: float) -> Role:
    n_test = max(1, round(len(lines) * test_fraction)) if len(lines) > 1 else 0
    train_text = "".join(line + "\n" for line in lines[: len(lines) - n_test])
    codes = encode(train_text + "".join(line + "\n" for line in lines[len(lines) - n_test :]))
    return Role(name, codes, len(train_text))


def _leaf_role(name: str, x: list[str], y: list[str], test_start: int, source: Path) -> Role:
    if len(x) != len(y) or any(len(c) != 1 for c in y):
        raise DataError(
            f"LEAF user {name!r} in '{source}' has {len(x)} windows and {len(y)} targets; "
            "each target must be one character"
        )
    lengths = {len(w) for w in x}
    if len(lengths) > 1:
        raise DataError(f"LEAF user {name!r} in '{source}' has windows of lengths {lengths}")
    width = lengths.pop() if lengths else 0
    windows = encode("".join(x)).reshape(len(x), width)
    return Role(name, encode("".join(y)), test_start, windows)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read LEAF Shakespeare JSON '{path}': {err}") from err
    if not isinstance(data, dict) or not isinstance(data.get("user_data"), dict):
        raise DataError(
            f"'{path}' is not LEAF Shakespeare JSON (no 'user_data' object; expected {WHERE_FROM})"
        )
    return data


def _leaf_users(paths: list[Path]) -> dict[str, tuple[list[str], list[str]]]:
    users: dict[str, tuple[list[str], list[str]]] = {}
    for path in paths:
        for name, d in _read_json(path)["user_data"].items():
            x, y = users.setdefault(name, ([], []))
            x.extend(d.get("x", []))
            y.extend(d.get("y", []))
    return users


def read_roles(path: Path, test_fraction: float) -> dict[str, Role]:
    """Every role of the source at ``path`` (text file, LEAF JSON file or LEAF folder)."""
    if path.is_dir():
        train, test = (
            sorted((path / "train").glob("*.json")),
            sorted((path / "test").glob("*.json")),
        )
        if not train or not test:
            raise DataError(
                f"'{path}' is a folder without LEAF's train/*.json and test/*.json "
                f"(expected {WHERE_FROM})"
            )
        tr, te = _leaf_users(train), _leaf_users(test)
        return {
            n: _leaf_role(n, tr[n][0] + te.get(n, ([], []))[0],
                          tr[n][1] + te.get(n, ([], []))[1], len(tr[n][0]), path)
            for n in tr
        }  # fmt: skip
    if not path.is_file():
        raise DataError(f"Shakespeare data '{path}' not found; data-path names {WHERE_FROM}")
    if path.suffix == ".json":
        users = _leaf_users([path])
        return {
            n: _leaf_role(n, x, y, len(x) - max(1, round(len(x) * test_fraction)), path)
            for n, (x, y) in users.items()
            if len(x) > 1
        }
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read Shakespeare text '{path}': {err}") from err
    return {n: _text_role(n, ls, test_fraction) for n, ls in parse_speeches(text).items()}


@functools.lru_cache(maxsize=2)
def _roles(data_path: str, test_fraction: float, min_chars: int, seed: int) -> Roles:
    """The eligible roles in seeded order, read once per process (and logged once)."""
    every = read_roles(Path(data_path).expanduser(), test_fraction)
    eligible = [r for r in every.values() if r.length >= min_chars and 0 < r.test_start < r.length]
    order = np.random.default_rng([seed, ROLE_ORDER_STREAM]).permutation(len(eligible))
    roles = Roles(tuple(eligible[i] for i in order), len(every) - len(eligible), data_path)
    log.info(
        "shakespeare: %d roles with >= %d characters (and a train and a test part) are "
        "clients; %d roles left out, from %s",
        len(roles.roles), min_chars, roles.left_out, data_path,
    )  # fmt: skip
    return roles


def shakespeare_roles(settings: Settings) -> Roles:
    s = settings
    return _roles(str(s.data_path), s.test_fraction, s.shakespeare_min_chars, s.seed)


def _windows(role: Role, seq_len: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) of every ``stride``-th target: float32 ids (targets, seq_len), int64 (targets,)."""
    positions = np.arange(0, role.length, stride)
    if role.windows is not None:  # LEAF: ready-made windows, keep their last seq_len ids
        if role.windows.shape[1] < seq_len:
            raise DataError(
                f"LEAF windows of role {role.name!r} hold {role.windows.shape[1]} characters; "
                f"shakespeare-seq-len={seq_len} asks for more"
            )
        x = role.windows[positions, role.windows.shape[1] - seq_len :]
    else:
        padded = np.concatenate([np.full(seq_len, PAD, np.uint8), role.codes])
        x = np.lib.stride_tricks.sliding_window_view(padded, seq_len)[positions]
    return x.astype(np.float32), role.codes[positions].astype(np.int64)


def role_client(role: Role, settings: Settings, client_id: str) -> ClientData:
    """A role as a client: windows before ``test_start`` train, the rest test."""
    x, y = _windows(role, settings.shakespeare_seq_len, settings.shakespeare_stride)
    n_train = -(-role.test_start // settings.shakespeare_stride)  # targets before test_start
    return ClientData(x[:n_train], y[:n_train], x[n_train:], y[n_train:], client_id)


def _check_count(roles: Roles, needed: int, num_partitions: int, new_clients: int) -> None:
    if needed > len(roles.roles):
        raise DataError(
            f"{num_partitions} clients (+ {new_clients} new clients) asked for, but "
            f"'{roles.source}' has {len(roles.roles)} roles with enough text (natural "
            "partition: one role per client); lower shakespeare-min-chars or the clients"
        )


def shakespeare_client(settings: Settings, partition_id: int, num_partitions: int) -> ClientData:
    """Training client ``partition_id``: role ``partition_id`` of the seeded order."""
    roles = shakespeare_roles(settings)
    _check_count(roles, num_partitions + settings.new_clients, num_partitions, settings.new_clients)
    role = roles.roles[partition_id]
    return role_client(role, settings, f"shakespeare-{role.name}")


def shakespeare_new_client(settings: Settings, index: int) -> ClientData:
    """New client ``index``: one of the last ``new-clients`` roles, never a training one."""
    roles = shakespeare_roles(settings)
    _check_count(roles, settings.new_clients, 0, settings.new_clients)
    role = roles.roles[len(roles.roles) - settings.new_clients + index]
    return role_client(role, settings, f"shakespeare-new-{role.name}")


def check_available(settings: Settings) -> None:
    """Read the roles (once per process) and check there are enough for the new clients."""
    roles = shakespeare_roles(settings)
    _check_count(roles, settings.new_clients, 0, settings.new_clients)


def smallest_train_split(settings: Settings) -> int | None:
    """Fewest train windows of any eligible role (for start-up warnings), None if none."""
    roles = shakespeare_roles(settings)
    stride = settings.shakespeare_stride
    return min((-(-r.test_start // stride) for r in roles.roles), default=None)
