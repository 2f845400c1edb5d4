"""Client-level clipping: each client's whole update (theta and alpha together) ends up with
an L2 norm of at most C, hand-checked on small arrays."""

from __future__ import annotations

import numpy as np
import pytest

from common.dp_mechanism import clip_rows, row_norms


def test_each_row_is_scaled_to_the_bound_and_no_further():
    stacked = {
        "w": np.array([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]]),
        "b": np.zeros((3, 1)),
    }
    out = clip_rows(stacked, 1.0)
    np.testing.assert_allclose(out.updates["w"], [[0.6, 0.8], [0.3, 0.4], [0.0, 0.0]])
    np.testing.assert_allclose(out.norms, [5.0, 0.5, 0.0])
    assert out.within.tolist() == [0.0, 1.0, 1.0]  # b_i: already inside the bound


def test_the_bound_is_on_the_whole_update_theta_and_alpha_together():
    # 3 in theta and 4 in Meta-SGD's alpha: a norm of 5, not two norms of 3 and 4
    stacked = {"w": np.array([[3.0]]), "alpha/w": np.array([[4.0]])}
    out = clip_rows(stacked, 2.5)
    assert out.updates["w"][0, 0] == pytest.approx(1.5)
    assert out.updates["alpha/w"][0, 0] == pytest.approx(2.0)
    assert row_norms(out.updates)[0] == pytest.approx(2.5)


def test_float32_rows_keep_their_dtype_and_stay_within_rounding_of_the_bound():
    rng = np.random.default_rng(0)
    stacked = {
        "a": rng.normal(0, 3, (50, 7, 3)).astype(np.float32),
        "b": rng.normal(0, 3, (50, 4)).astype(np.float32),
    }
    out = clip_rows(stacked, 0.7)
    assert out.updates["a"].dtype == np.float32
    assert np.all(row_norms(out.updates) <= 0.7 * (1 + 1e-6))
    # the direction of each update is kept
    cos = (out.updates["b"] * stacked["b"]).sum(1) / (
        np.linalg.norm(out.updates["b"], axis=1) * np.linalg.norm(stacked["b"], axis=1)
    )
    np.testing.assert_allclose(cos, 1.0, rtol=1e-5)


def test_a_node_without_sampled_clients_clips_zero_rows():
    out = clip_rows({"w": np.zeros((0, 3, 2), np.float32)}, 1.0)
    assert out.updates["w"].shape == (0, 3, 2) and out.norms.shape == (0,)


def test_a_non_positive_bound_is_refused():
    with pytest.raises(ValueError, match="clip bound must be > 0"):
        clip_rows({"w": np.ones((1, 2))}, 0.0)


def test_a_row_exactly_at_the_bound_counts_as_within_it():
    """b_i = 1[||u_i|| <= C] (Andrew et al. 2021): equality counts as within."""
    out = clip_rows({"w": np.array([[3.0, 4.0], [6.0, 8.0]])}, 5.0)
    assert out.within.tolist() == [1.0, 0.0]
    np.testing.assert_array_equal(out.updates["w"], [[3.0, 4.0], [3.0, 4.0]])


def test_a_float32_row_of_1e20_has_a_finite_norm_and_is_clipped():
    """Squares of 1e20 overflow float32: the norm is taken in float64, so a client with a
    blown-up update is clipped to C, not sent as NaN or infinity."""
    out = clip_rows({"w": np.array([[3e20, 4e20], [0.3, 0.4]], np.float32)}, 1.0)
    np.testing.assert_allclose(out.norms, [5e20, 0.5], rtol=1e-6)
    np.testing.assert_allclose(out.updates["w"], [[0.6, 0.8], [0.3, 0.4]], rtol=1e-6)
    assert out.updates["w"].dtype == np.float32
