"""simulations.analysis.curvature: alpha * lambda_max along an adaptation path, and explosions."""

from __future__ import annotations

import math

import pytest
import torch

from simulations.analysis.curvature import AdaptationPath, adaptation_path


def _quadratic(curvatures):
    a = torch.diag(torch.tensor(curvatures, dtype=torch.float64))
    return lambda v: 0.5 * v @ a @ v


@pytest.mark.parametrize(("alpha", "explodes"), [(0.01, False), (0.05, True)])
def test_gradient_descent_explodes_exactly_when_alpha_lambda_max_exceeds_two(alpha, explodes):
    loss = _quadratic([1.0, 50.0])
    losses, sharpness = adaptation_path(loss, torch.ones(2, dtype=torch.float64), alpha, 10, 2)
    assert sharpness == pytest.approx([alpha * 50.0] * 3)
    path = AdaptationPath(losses, sharpness)
    assert path.exploded(10.0) is explodes
    # along the sharp direction each step multiplies the coordinate by (1 - alpha * 50)
    assert losses[-1] == pytest.approx(0.5 * (1 - alpha) ** 20 + 25 * (1 - 50 * alpha) ** 20)


def test_a_non_finite_path_stops_tracking_and_counts_as_exploded():
    losses, sharpness = adaptation_path(lambda v: (v**4).sum(), torch.tensor([1e80]), 1.0, 3, 3)
    assert not math.isfinite(losses[-1]) and len(sharpness) < 4
    assert AdaptationPath(losses, sharpness).exploded(10.0)


def test_the_command_reads_a_runs_model_and_reports(tmp_path, capsys):
    from simulations.analysis.curvature import main
    from simulations.run import main as run

    (tmp_path / "tiny.yaml").write_text(
        "engine: loop\nnum-supernodes: 2\nseeds: [0]\n"
        "base: {num-rounds: 1, local-steps: 1, hidden-sizes: '4', new-clients: 3,"
        " min-available-nodes: 1}\nalgorithms: {maml: {}}\n"
    )
    assert run([str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "out")]) == 0
    capsys.readouterr()
    assert main([str(tmp_path / "out/maml/seed0/model.pt"), "--sample", "2", "--track", "1"]) == 0
    out = capsys.readouterr().out
    assert "maml, alpha = 0.01, 3 new clients, 10 steps: 0 exploded" in out
    assert "the other first 2: alpha*lambda_max at step 1" in out
