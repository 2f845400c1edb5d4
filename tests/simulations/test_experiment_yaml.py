"""Experiment files are read strictly: a key given twice is refused, an alias bomb is
refused fast, and every error message stays short whatever the file holds."""

from __future__ import annotations

import time

import pytest

from simulations.experiment import MAX_VALUES, ExperimentError, load_experiment
from simulations.run import main

ROW = "algorithms: {maml: {}}\n"


@pytest.mark.parametrize(
    ("text", "key", "line"),
    [
        ("seeds: [0]\nseeds: [1]\n" + ROW, "'seeds'", 1),
        ("base:\n  num-rounds: 5\n  inner-lr: 0.1\n  num-rounds: 50\n" + ROW, "'num-rounds'", 2),
        ("algorithms:\n  maml: {}\n  fedavg: {}\n  maml: {inner-lr: 1}\n", "'maml'", 2),
    ],
    ids=["top level", "inside base", "algorithm row"],
)
def test_a_key_given_twice_is_refused(tmp_path, text, key, line):
    path = tmp_path / "twice.yaml"
    path.write_text(text)
    with pytest.raises(
        ExperimentError, match=f"key {key} is given twice \\(first on line {line}\\)"
    ):
        load_experiment(path)


def test_aliases_and_merges_that_stay_small_still_work(tmp_path):
    path = tmp_path / "shared.yaml"
    path.write_text(
        "base: &common {num-rounds: 2, inner-lr: 0.05}\n"
        "algorithms:\n  maml: {<<: *common, inner-lr: 0.1}\n  fedavg: *common\n"
    )
    exp = load_experiment(path)
    assert exp.algorithms["maml"] == {"num-rounds": 2, "inner-lr": 0.1}
    assert exp.algorithms["fedavg"] == {"num-rounds": 2, "inner-lr": 0.05}


BOMB = 'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n' + "".join(
    f"{c}: &{c} [{','.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True)
)


def test_an_alias_bomb_inside_a_value_is_refused_fast_and_briefly(tmp_path, capsys):
    """9 nested aliases of 9 make 9**9 (387 million) values once walked: the config check
    took 35 s and 1.4 GB and printed a 351 MB error line."""
    path = tmp_path / "bomb.yaml"
    path.write_text(f"base:\n  hidden-sizes: &bomb {{{BOMB.replace(chr(10), ', ')}}}\n" + ROW)
    t0 = time.monotonic()
    assert main([str(path), "--out", str(tmp_path / "out")]) == 2
    assert time.monotonic() - t0 < 5.0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < 600
    assert f"expand it to more than {MAX_VALUES:,} values" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "text",
    [
        "engine: " + "x" * 1_000_000 + "\n" + ROW,
        "base: {hidden-sizes: '" + "8," * 500_000 + "'}\n" + ROW,
        "x" * 1_000_000 + ": 1\n" + ROW,
        "algorithms: [maml\n" + "#" * 1_000_000 + "\n",
    ],
    ids=["huge engine", "huge run-config value", "huge unknown key", "huge bad line"],
)
def test_an_error_quoting_a_huge_value_stays_short(tmp_path, capsys, text):
    path = tmp_path / "huge.yaml"
    path.write_text(text)
    assert main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err) < 1500, err[:3000]


def test_set_takes_a_yaml_value_or_says_why_not(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text(ROW)
    assert main([str(path), "--set", "hidden-sizes=[8"]) == 2
    err = capsys.readouterr().err
    assert "key '--set hidden-sizes': '[8' is not a YAML value" in err and err.count("\n") == 1
