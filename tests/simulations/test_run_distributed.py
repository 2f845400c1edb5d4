"""The experiment runner tells a finished distributed-DP run from one that trained nothing,
although its rows hide how many clients were accepted (issue 18)."""

from __future__ import annotations

import json

from simulations.run import _trained


def _rows(tmp_path, *rows):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_a_distributed_round_that_summed_noised_shares_counts_as_trained(tmp_path):
    hidden = {"round": 1, "accepted": None, "privacy": {"nodes-summed": 3}}
    assert _trained(_rows(tmp_path, hidden))


def test_a_distributed_round_with_nothing_summed_does_not(tmp_path):
    halted = {"round": 1, "accepted": None, "privacy": {}}
    assert not _trained(_rows(tmp_path, halted))
    assert _trained(_rows(tmp_path, halted, {"round": 2, "accepted": 4}))  # central rows
