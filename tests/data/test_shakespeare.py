"""Shakespeare by role: every speaking role a client, windows -> next character, split by
time; tinyshakespeare's text, LEAF's JSON file and LEAF's train/test folders alike."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from common.config import parse_settings
from common.data import shakespeare as sh
from common.data.registry import (
    check_data_available,
    dataset_info,
    load_client_data,
    load_new_client_data,
    smallest_train_split,
)
from common.data.types import DataError

PLAY = """ROMEO:
But soft, what light
through yonder window breaks?

JULIET:
Ay me!

ROMEO:
She speaks.
O, speak again, bright angel!

NURSE:

JULIET:
O Romeo, Romeo! wherefore art thou Romeo?
Deny thy father and refuse thy name;
$ Or, if thou wilt not, be but sworn my love.
"""


def _settings(path: Path, **extra):
    return parse_settings(
        {"dataset": "shakespeare", "model": "lstm", "data-path": str(path),
         "shakespeare-seq-len": 6, "shakespeare-min-chars": 1, "test-fraction": 0.25,
         **{k.replace("_", "-"): v for k, v in extra.items()}}
    )  # fmt: skip


def _config(path: Path, **extra) -> sh.ShakespeareConfig:
    return sh.ShakespeareConfig.from_settings(_settings(path, **extra))


def _roles(settings) -> sh.Roles:
    return sh.shakespeare_roles(sh.ShakespeareConfig.from_settings(settings))


def _text(ids) -> str:
    return "".join(sh.LEAF_LETTERS[int(i)] if i < sh.UNKNOWN else "?" for i in ids)


@pytest.fixture
def play(tmp_path: Path) -> Path:
    path = tmp_path / "play.txt"
    path.write_text(PLAY)
    return path


def test_each_role_is_its_lines_in_order_and_its_last_lines_are_the_test_split(play):
    roles = sh.read_roles(play, test_fraction=0.25)
    assert set(roles) == {"ROMEO", "JULIET"}  # the empty speech gives no role
    romeo = roles["ROMEO"]
    assert _text(romeo.codes) == (
        "But soft, what light\nthrough yonder window breaks?\nShe speaks.\n"
        "O, speak again, bright angel!\n"
    )
    # 4 lines, test-fraction 0.25: the last line is the test part
    assert _text(romeo.codes[romeo.test_start :]) == "O, speak again, bright angel!\n"
    juliet = roles["JULIET"]
    assert "?" in _text(juliet.codes)  # '$' is outside LEAF's alphabet: the unknown id


def test_windows_hold_the_preceding_characters_and_predict_the_next(play):
    romeo = sh.read_roles(play, 0.25)["ROMEO"]
    c = sh.role_client(romeo, _config(play), "romeo")
    assert c.x_train.dtype == np.float32 and c.y_train.dtype == np.int64
    assert c.x_train.shape[1] == 6
    assert c.num_train == romeo.test_start and c.num_train + c.num_test == romeo.length
    assert _text(c.x_train[0]) == "      " and _text(c.y_train[:1]) == "B"  # padded start
    assert _text(c.x_train[8]) == "t soft" and _text(c.y_train[8:9]) == ","
    # split by time: every test target comes after every train target ...
    assert _text(c.y_test) == "O, speak again, bright angel!\n"
    # ... while a test window's context may reach back into the train lines
    assert _text(c.x_test[0]) == "eaks.\n"


def test_a_stride_keeps_every_kth_target(play):
    romeo = sh.read_roles(play, 0.25)["ROMEO"]
    full = sh.role_client(romeo, _config(play), "r")
    strided = sh.role_client(romeo, _config(play, shakespeare_stride=3), "r")
    every = np.concatenate([full.y_train, full.y_test])
    np.testing.assert_array_equal(np.concatenate([strided.y_train, strided.y_test]), every[::3])
    assert strided.num_train == -(-full.num_train // 3)
    np.testing.assert_array_equal(strided.x_train, full.x_train[::3])


def test_short_roles_are_left_out_and_new_clients_are_other_roles(play):
    s = _settings(play, shakespeare_min_chars=100)  # ROMEO has 93 characters
    roles = _roles(s)
    assert [r.name for r in roles.roles] == ["JULIET"] and roles.left_out == 1
    assert load_client_data(s, 0, 1).client_id == "shakespeare-JULIET"
    with pytest.raises(DataError, match="1 roles with enough text"):
        load_client_data(_settings(play, shakespeare_min_chars=100, new_clients=1), 0, 1)
    both = _settings(play, new_clients=1)
    trained, new = load_client_data(both, 0, 1), load_new_client_data(both, 0)
    assert {trained.client_id, new.client_id} == {"shakespeare-ROMEO", "shakespeare-new-JULIET"}


def test_the_model_shape_follows_the_window_length(play):
    info = dataset_info(_settings(play, shakespeare_seq_len=9))
    assert info.input_shape == (9,) and info.num_classes == sh.VOCABULARY == 81


def _leaf_user(text: str, width: int) -> dict:
    padded = " " * width + text
    return {
        "x": [padded[i : i + width] for i in range(len(text))],
        "y": list(text),
    }


def test_leaf_json_file_and_folder(tmp_path: Path):
    users = {"THE_TEMPEST_PROSPERO": "Now my charms are all o'erthrown,\n",
             "THE_TEMPEST_ARIEL": "Where the bee sucks, there suck I.\n"}  # fmt: skip
    data = {
        "users": list(users),
        "num_samples": [len(t) for t in users.values()],
        "user_data": {u: _leaf_user(t, 8) for u, t in users.items()},
    }
    file = tmp_path / "all_data.json"
    file.write_text(json.dumps(data))
    s = _settings(file, shakespeare_seq_len=5)
    roles = _roles(s)
    assert {r.name for r in roles.roles} == set(users)
    c = load_client_data(s, [r.name for r in roles.roles].index("THE_TEMPEST_ARIEL"), 2)
    text = users["THE_TEMPEST_ARIEL"]
    assert _text(np.concatenate([c.y_train, c.y_test])) == text
    assert c.num_test == round(len(text) * 0.25)  # the last quarter of its samples
    assert _text(c.x_train[10]) == text[5:10]  # LEAF's 8-character windows, last 5 kept
    # LEAF's own folders: train/ and test/ files, their split kept as it is
    for part, sl in (("train", slice(0, 20)), ("test", slice(20, None))):
        (tmp_path / part).mkdir()
        split = {u: {k: v[sl] for k, v in d.items()} for u, d in data["user_data"].items()}
        (tmp_path / part / f"{part}.json").write_text(json.dumps({"user_data": split}))
    folder = sh.read_roles(tmp_path, test_fraction=0.5)
    assert all(r.test_start == 20 for r in folder.values())
    with pytest.raises(DataError, match="asks for more"):
        load_client_data(_settings(file, shakespeare_seq_len=9), 0, 2)


def test_unreadable_or_foreign_files_are_named(tmp_path: Path):
    with pytest.raises(DataError, match="not found"):
        check_data_available(_settings(tmp_path / "missing.txt"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"users": []}')
    with pytest.raises(DataError, match="not LEAF Shakespeare JSON"):
        check_data_available(_settings(bad))
    prose = tmp_path / "prose.txt"
    prose.write_text("Call me Ishmael.\n\nSome years ago")
    with pytest.raises(DataError, match="NAME:"):
        check_data_available(_settings(prose))


@pytest.fixture
def tiny_shakespeare(data_dir: Path) -> Path:
    path = data_dir / "shakespeare" / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip(f"real data not found at '{path}' (set FEDMETA_DATA_DIR)")
    return path


def test_tinyshakespeare_roles(tiny_shakespeare: Path):
    s = _settings(tiny_shakespeare, shakespeare_min_chars=2000, test_fraction=0.2,
                  shakespeare_seq_len=80, new_clients=10)  # fmt: skip
    check_data_available(s)
    roles = _roles(s)
    assert len(roles.roles) == 99  # as /work/shared/data/README.md counts
    names = [r.name for r in roles.roles]
    assert len(set(names)) == 99
    trained = {load_client_data(s, i, 89).client_id.removeprefix("shakespeare-") for i in range(89)}
    new = {load_new_client_data(s, j).client_id.removeprefix("shakespeare-new-") for j in range(10)}
    assert not trained & new and len(trained | new) == 99
    assert smallest_train_split(s) >= 1500  # 80% of >= 2,000 characters
    other_seed = _roles(_settings(tiny_shakespeare, shakespeare_min_chars=2000, seed=1))
    assert [r.name for r in other_seed.roles] != names  # the role order is seeded
