"""What a run shows while it trains: a live progress bar on a terminal, and a log line
about every num-rounds / PROGRESS_LINES rounds (every round is in metrics.jsonl).

The bar (rich, which Flower already depends on) shows the round, the elapsed and remaining
time and the latest evaluation; it is drawn only when stderr is a terminal, so logs, CI
and files get the progress lines alone.
"""

from __future__ import annotations

import sys
from logging import DEBUG, INFO

from flwr.supercore import log
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as Bar

from common.config import Settings

PROGRESS_LINES = 20  # a run logs about this many progress lines, whatever its length


def says_progress(s: Settings, row: dict) -> bool:
    """Whether a round's progress line is logged at INFO: the first and final rounds, about
    every num-rounds / PROGRESS_LINES rounds, and any round that dropped a client (the rest
    go to the debug log; every round is in metrics.jsonl)."""
    rnd = row["round"]
    every = max(1, s.num_rounds // PROGRESS_LINES)
    return rnd in (1, s.num_rounds) or rnd % every == 0 or bool(row["dropped"])


def progress_line(s: Settings, row: dict) -> str:
    ev = row["eval"]
    metric = "mse" if s.task.value == "regression" else "acc"
    if f"{metric}-after-mean" not in ev:
        dropped = len(row["dropped"])
        if row["round"] % s.evaluate_every and row["round"] != s.num_rounds:
            # distributed DP: the nodes sample their clients, the count is not released
            accepted = "hidden" if row["accepted"] is None else row["accepted"]
            return (
                f"round {row['round']}/{s.num_rounds} [{s.algorithm}] trained "
                f"{accepted} clients, dropped {dropped} {row['seconds']:.2f}s"
            )
        return f"round {row['round']}/{s.num_rounds}: no evaluation results ({dropped} dropped)"
    return (
        f"round {row['round']}/{s.num_rounds} [{s.algorithm}] "
        f"{metric} before {ev[f'{metric}-before-mean']:.4f} -> personalised "
        f"{ev[f'{metric}-after-mean']:.4f} (worst10 {ev[f'{metric}-after-worst10']:.4f}) "
        f"clients {int(ev['clients'])} dropped {len(row['dropped'])} {row['seconds']:.1f}s"
    )


class Progress:
    """The run's progress: ``with Progress(settings): ... progress.after(row)`` per round."""

    def __init__(self, settings: Settings, bar: bool | None = None) -> None:
        self.settings = settings
        self.draw = sys.stderr.isatty() if bar is None else bar
        self.bar: Bar | None = None
        self.task = 0

    def __enter__(self) -> Progress:
        if self.draw:
            self.bar = Bar(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeRemainingColumn(), TextColumn("{task.fields[metric]}"), transient=True,
            )  # fmt: skip
            self.task = self.bar.add_task(
                str(self.settings.algorithm), total=self.settings.num_rounds, metric=""
            )
            self.bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def after(self, row: dict) -> None:
        """Log round ``row`` (INFO about every num-rounds / PROGRESS_LINES rounds, else
        DEBUG) and move the bar, showing the latest evaluation."""
        s = self.settings
        line = progress_line(s, row)
        log(INFO if says_progress(s, row) else DEBUG, "%s", line)
        if self.bar is not None:
            metric = latest_metric(s, row["eval"])
            update = {"metric": metric} if metric else {}
            self.bar.update(self.task, completed=row["round"], **update)


def latest_metric(s: Settings, ev: dict) -> str:
    """'mse 0.2983' / 'acc 0.9412' after personalising, or '' when the round had none."""
    metric = "mse" if s.task.value == "regression" else "acc"
    value = ev.get(f"{metric}-after-mean")
    return "" if value is None else f"{metric} {value:.4f}"
