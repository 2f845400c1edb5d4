"""Omniglot clients: blocks of characters, held-out drawings, MAML's rotation augmentation."""

from __future__ import annotations

import numpy as np
import pytest

from common.config import parse_settings
from common.data import registry


@pytest.fixture
def fake_omniglot(monkeypatch):
    """12 characters x 20 drawers of distinct, asymmetric 28 x 28 images per set."""
    rng = np.random.default_rng(0)
    sets = {w: rng.random((12, 20, 28, 28), dtype=np.float32) for w in ("background", "evaluation")}
    monkeypatch.setattr(registry, "_omniglot", lambda folder, which: sets[which])
    monkeypatch.setattr(registry, "_path", lambda settings: "unused")
    return sets


def _settings(**extra):
    return parse_settings({"dataset": "omniglot", "data-path": "x", "test-fraction": 0.25, **extra})


def test_without_rotations_a_client_holds_its_block_upright(fake_omniglot):
    c = registry.load_client_data(_settings(), 1, 2)  # characters 6..11
    assert sorted(set(c.y_train.tolist())) == list(range(6))
    np.testing.assert_array_equal(c.x_train[0, 0], fake_omniglot["background"][6, 0])
    assert len(c.x_train) == 6 * 15 and len(c.x_test) == 6 * 5


def test_rotations_make_each_training_character_four_classes(fake_omniglot):
    c = registry.load_client_data(_settings(**{"omniglot-rotations": True}), 1, 2)
    chars = fake_omniglot["background"]
    assert sorted(set(c.y_train.tolist())) == list(range(24))
    assert len(c.x_train) == 24 * 15 and len(c.x_test) == 24 * 5
    for label in (0, 5, 22):
        char, turns = 6 + label // 4, label % 4
        train, test = c.x_train[c.y_train == label], c.x_test[c.y_test == label]
        # the same 15 training and 5 held-out drawers as the upright class, turned
        np.testing.assert_array_equal(train[:, 0], np.rot90(chars[char, :15], turns, axes=(1, 2)))
        np.testing.assert_array_equal(test[:, 0], np.rot90(chars[char, 15:], turns, axes=(1, 2)))
    assert not np.array_equal(c.x_train[c.y_train == 0], c.x_train[c.y_train == 1])


def test_new_clients_stay_upright_with_rotations(fake_omniglot):
    s = _settings(**{"omniglot-rotations": True, "new-clients": 2})
    new = registry.load_new_client_data(s, 0)
    assert sorted(set(new.y_train.tolist())) == list(range(6))
    np.testing.assert_array_equal(new.x_test[0, 0], fake_omniglot["evaluation"][0, 15])
