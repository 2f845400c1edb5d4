"""Report plots: a diverged run is marked apart and never sets the y-axis; new clients are
plotted against their (paired) adaptation steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib
import numpy as np
import pytest

from simulations.experiment import Experiment
from simulations.report import _curve, _draw, _new_client_steps, diverged, write_report

matplotlib.use("Agg")


def test_a_run_diverged_when_it_holds_nan_or_inf_or_a_loss_explodes():
    assert diverged([3.0, 2.0, math.nan], higher_is_better=False)
    assert diverged([0.5, math.inf], higher_is_better=True)
    assert diverged([3.0, 2.5, 1e11], higher_is_better=False)
    assert not diverged([3.0, 0.3, 4.0], higher_is_better=False)  # noisy, not exploding
    assert not diverged([0.1, 0.9], higher_is_better=True)  # accuracy cannot explode
    assert not diverged([], higher_is_better=False)


def test_diverged_seeds_are_left_out_of_the_mean_and_counted():
    seeds = [{10: 3.0, 20: 2.0}, {10: 3.2, 20: 1.0}, {10: 3.1, 20: math.nan}]
    c = _curve("maml", "C0", seeds, higher_is_better=False)
    assert c is not None and not c.diverged
    assert c.label == "maml (1/3 seeds diverged, left out of the mean)"
    np.testing.assert_allclose(c.y, [3.1, 1.5])
    gone = _curve("fedavg-ft", "C1", [{10: 3.0, 20: 1e11}, {10: 3.0, 20: math.inf}], False)
    assert gone is not None and gone.diverged and "diverged in 2/2 seeds" in gone.label
    # only rounds every seed evaluated are drawn
    uneven = _curve("x", "C2", [{1: 1.0, 2: 1.0}, {2: 2.0}], False)
    assert uneven is not None and uneven.x == [2]


def test_the_y_axis_stays_on_the_stable_curves_and_diverged_ones_are_dashed():
    import matplotlib.pyplot as plt

    stable = _curve("maml", "C0", [{1: 3.0, 2: 1.0, 3: 0.5}], False)
    blown = _curve("fedavg-ft", "C1", [{1: 3.0, 2: 1e4, 3: 1e11}], False)
    fig, ax = plt.subplots()
    ax.set_yscale("log")
    _draw(ax, [stable, blown], log=True)
    lo, hi = ax.get_ylim()
    assert 0.1 < lo < 0.5 and 3.0 < hi < 10  # the stable range, with a margin
    styles = {line.get_label(): line.get_linestyle() for line in ax.get_lines()}
    assert styles["maml"] == "-" and styles["fedavg-ft (diverged)"] == "--"
    plt.close(fig)


def test_new_client_steps_come_from_the_summary_keys():
    summary = {"new-mse-k0-mean": 3.0, "new-mse-k10-mean": 0.7, "new-mse-k1-mean": 1.0,
               "new-mse-k1-std": 0.2, "new-loss-k1-mean": 9.0, "mse-after-mean": 0.3}  # fmt: skip
    assert _new_client_steps(summary, "mse") == {0.0: 3.0, 1.0: 1.0, 10.0: 0.7}
    assert _new_client_steps({"new-acc-k3-mean": 0.5}, "acc") == {3.0: 0.5}


def _fake_run(folder: Path, values: list[float], new: dict[int, float]) -> None:
    folder.mkdir(parents=True)
    rows = [{"round": 10 * (i + 1), "eval": {"mse-after-mean": v}} for i, v in enumerate(values)]
    (folder / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    summary = {"mse-after-mean": values[-1], "rounds": 10 * len(values), "seconds": 1.0}
    summary |= {f"new-mse-k{k}-mean": v for k, v in new.items()}
    (folder / "summary.json").write_text(json.dumps(summary))


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_the_report_writes_both_plots_with_a_diverged_algorithm(tmp_path, seeds):
    exp = Experiment(
        name="t", engine="loop", num_supernodes=1, cpus_per_client=1, seeds=seeds,
        base={"dataset": "synthetic"}, algorithms={"maml": {}, "fedavg-ft": {}},
        source=tmp_path / "t.yaml",
    )  # fmt: skip
    for seed in seeds:
        _fake_run(tmp_path / "maml" / f"seed{seed}", [3.0, 1.0, 0.5], {0: 3.0, 1: 1.0, 10: 0.6})
        _fake_run(tmp_path / "fedavg-ft" / f"seed{seed}", [3.0, 1e4, math.nan],
                  {0: 3.0, 1: 14.0, 10: math.nan})  # fmt: skip
    write_report(exp, tmp_path)
    for name in ("mse_vs_round.png", "new_clients_mse_vs_steps.png", "summary.md"):
        assert (tmp_path / name).stat().st_size > 0


def test_a_run_that_starts_exploded_is_judged_against_where_the_others_start():
    """A seed whose shared model is already 15x worse at k = 0 has no 'first value' to
    explode from; the plot's typical start (median of first values) catches it."""
    from simulations.report import _all_curves, typical_start

    runs = {
        "maml": [{0: 3.0, 1: 1.0, 10: 0.7}] * 3,
        "perfedavg-hf": [{0: 3.1, 1: 1.5, 10: 1.0}, {0: 3.2, 1: 1.4, 10: 1.1},
                         {0: 47.0, 1: 9.0, 10: 9.4}],
    }  # fmt: skip
    assert typical_start([d for v in runs.values() for d in v]) == pytest.approx(3.05)
    maml, hf = _all_curves(runs, higher=False)
    assert maml.label == "maml" and maml.color == "C0" and hf.color == "C1"
    assert "1/3 seeds diverged" in hf.label and not hf.diverged
    np.testing.assert_allclose(hf.y, [3.15, 1.45, 1.05])
    np.testing.assert_allclose(hf.low, [3.1, 1.4, 1.0])  # error bars: min-max of the seeds


def _experiment(tmp_path: Path, seeds: tuple[int, ...], algorithms: dict) -> Experiment:
    return Experiment(
        name="t", engine="loop", num_supernodes=1, cpus_per_client=1, seeds=seeds,
        base={"dataset": "synthetic"}, algorithms=algorithms, source=tmp_path / "t.yaml",
    )  # fmt: skip


def _stopped_run(folder: Path, at: int, values: list[float]) -> None:
    """A run that stopped as diverged: summary.json records the round, no figures."""
    _fake_run(folder, values, {})
    summary = {"diverged-at-round": at, "stopped-at-round": at + 3, "rounds": 30, "seconds": 2.0}
    (folder / "summary.json").write_text(json.dumps(summary))


def test_a_run_that_stopped_as_diverged_is_named_never_averaged(tmp_path):
    exp = _experiment(tmp_path, (0, 1, 2), {"maml": {}, "hf": {"algorithm": "perfedavg-hf"}})
    for seed in (0, 2):
        _fake_run(tmp_path / "maml" / f"seed{seed}", [3.0, 1.0, 0.4 + seed / 10], {})
    _stopped_run(tmp_path / "maml" / "seed1", 35, [3.0, 1.0])
    for seed, at in ((0, 12), (1, 40), (2, 7)):
        _stopped_run(tmp_path / "hf" / f"seed{seed}", at, [3.0])
    write_report(exp, tmp_path)
    table = (tmp_path / "summary.md").read_text()
    maml = next(line for line in table.splitlines() if line.startswith("| maml "))
    hf = next(line for line in table.splitlines() if line.startswith("| hf "))
    assert "0.500 ± 0.100 (2 of 3 seeds)" in maml  # seeds 0 and 2 only
    assert "seed 1 at round 35" in maml
    assert hf.count("diverged (12, 40, 7)") == 3  # every figure column
    assert "seed 0 at round 12, seed 1 at round 40, seed 2 at round 7" in hf
    csv_text = (tmp_path / "summary.csv").read_text()
    assert "nan" not in csv_text.lower() and "seed 1: diverged (35)" in csv_text
    assert (tmp_path / "mse_vs_round.png").stat().st_size > 0


def test_clients_left_out_of_the_means_are_counted_and_local_new_clients_not_shown(tmp_path):
    exp = _experiment(tmp_path, (0,), {"maml": {}, "local": {}})
    _fake_run(tmp_path / "maml" / "seed0", [3.0, 0.5], {0: 3.0, 1: 1.0})
    summary = json.loads((tmp_path / "maml" / "seed0" / "summary.json").read_text())
    summary |= {"diverged-after": 4, "new-clients-k1-diverged": 2}
    (tmp_path / "maml" / "seed0" / "summary.json").write_text(json.dumps(summary))
    _fake_run(tmp_path / "local" / "seed0", [3.0, 2.0], {0: 9.9, 1: 9.9})  # chance: untrained
    write_report(exp, tmp_path)
    lines = (tmp_path / "summary.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| algorithm"))
    assert "| clients diverged | new clients diverged |" in header
    local = next(line for line in lines if line.startswith("| local "))
    assert "9.900" not in local  # its new-client columns read n/a
    maml = next(line for line in lines if line.startswith("| maml "))
    assert "| 3.000 ± 0.000 | 1.000 ± 0.000 | 4 | 2 |" in maml  # new clients k = 0, 1
