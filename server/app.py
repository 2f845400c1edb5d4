"""Flower ServerApp: build the initial state, run the rounds, keep everything on disk.

The round loop is written out here (instead of ``Strategy.start``) so that after every
round the server writes the metrics and a checkpoint of theta, alpha and the server
optimizer's state: a killed run resumes from its last completed round (``resume=true``),
with the settings recorded in config.json (server/run_folder.py says which may change).

A run in which no client update was ever accepted has trained nothing: it raises
:class:`TrainingFailed` (in round 1 already when every client replied with an error) and
writes no checkpoint, model.pt or summary.json, so a rerun after the fix starts afresh.

A run that diverged (theta or alpha non-finite, or no update accepted for
``max-stalled-rounds`` rounds after it had trained; server/divergence.py) stops with
summary.json recording ``diverged-at-round`` and why, no model.pt, and raises
:class:`~server.divergence.RunDiverged`, so ``flwr run`` reports it as failed; or, with
``on-divergence = "rollback"``, it goes back and retries with a smaller server step.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from common.arrays import join_state, split_state, to_record, to_tensors
from common.config import Algorithm, ConfigError, Settings, parse_settings, settings_to_run_config
from common.data.registry import check_data_available, smallest_train_split
from common.device import select_device
from common.messages import FINAL
from common.models import model_for
from common.tasks import batch_warnings
from server.delivery import send_and_receive
from server.divergence import (
    ROLLBACK_FILE,
    Divergence,
    LossWatch,
    Rollbacks,
    RunDiverged,
    Snapshot,
    StallCounter,
    nonfinite_key,
)  # fmt: skip
from server.evaluation import Evaluation, collect_evaluation
from server.new_clients import evaluate_new_clients
from server.nodes import NodeDirectory, cohort_size
from server.optimizer import OptimizerConfig
from server.privacy import (
    DPConfig,
    PrivacyState,
    privacy_summary,
    round_within_budget,
    start_privacy,
)  # fmt: skip
from server.progress import Progress
from server.round import (
    ReplyRound,
    RoundOutcome,
    RoundReport,
    SecureRound,
    ServerState,
    pipeline_for,
)
from server.run_folder import Checkpoint, RunFolder, check_matches
from server.strategy import MetaStrategy, SamplingConfig

app = ServerApp()


class TrainingFailed(RuntimeError):
    """No client update was ever accepted: there is no trained model to save or score."""


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_federation(parse_settings(context.run_config), grid)


def initial_state(settings: Settings) -> dict[str, np.ndarray]:
    """theta from the seeded model init (+ alpha = inner-lr everywhere for Meta-SGD)."""
    model = model_for(settings, seed=settings.seed)
    theta = {n: p.detach().numpy().copy() for n, p in model.named_parameters()}
    alpha = {n: np.full_like(p, settings.inner_lr) for n, p in theta.items()}
    return join_state(theta, alpha if settings.learns_inner_lr else None)


def run_federation(settings: Settings, grid: Grid) -> dict[str, float]:
    check_data_available(settings)  # fail before round 1, naming the file and the problem
    for warning in batch_warnings(settings, smallest_train_split(settings)):
        log(WARNING, "%s", warning)
    with RunFolder.for_run(settings.run_dir) as folder:  # not another's folder; one writer
        return _run_rounds(settings, grid, folder)


def _run_rounds(settings: Settings, grid: Grid, folder: RunFolder) -> dict[str, float]:
    """Start (or resume), train and evaluate every round, finish: the whole run."""
    seeded = initial_state(settings)  # built once: the resume check and a fresh start use it
    ckpt = start_or_resume(settings, folder, seeded)
    nodes = NodeDirectory(
        grid, settings.min_available_nodes, settings.node_wait_timeout, settings.round_timeout
    )
    strategy = MetaStrategy(SamplingConfig.from_settings(settings), nodes)
    state = start_state(settings, ckpt, nodes, seeded)
    pipeline = pipeline_for(settings, strategy, OptimizerConfig.from_settings(settings))
    t_run = time.monotonic()
    loop = _RoundLoop(settings, folder, pipeline, strategy, grid, state, ckpt is not None)
    loop.resume(ckpt)
    start = ckpt.server_round + 1 if ckpt else 1
    stopped = loop.run(start, nodes, t_run)  # the last round run when target-epsilon stopped
    if not loop.trained:
        raise TrainingFailed(
            f"no client update was accepted in rounds {start}..{settings.num_rounds} "
            f"({loop.first_drop()}), so there is no trained model: no model.pt or "
            f"summary.json written. Every dropped client and why: {folder.file('metrics.jsonl')}"
        )
    # Score every client on the last model: the one DP allowed, or, resumed after the last
    # round (a crash between its checkpoint and summary.json), the final one again.
    scored = stopped or (settings.num_rounds if start > settings.num_rounds else 0)
    last_eval = loop.final_evaluation(scored, stopped) if scored else loop.last_eval
    if loop.state.privacy is not None and loop.dp is not None:
        last_eval |= privacy_summary(loop.dp, loop.state.privacy)
    return finish(settings, folder, loop.state.theta, last_eval, time.monotonic() - t_run)


def start_or_resume(
    settings: Settings, folder: RunFolder, seeded: dict[str, np.ndarray]
) -> Checkpoint | None:
    """The checkpoint to continue from (its logs cut back to it), or None: a fresh start."""
    ckpt = resume_point(settings, folder, seeded)
    if ckpt is None:
        folder.start_over()
    else:
        for name in ("metrics.jsonl", "clients.jsonl"):
            folder.truncate_jsonl_after(name, ckpt.server_round)
        log(INFO, "resuming from %s at round %d", folder.path, ckpt.server_round + 1)
    folder.record_config(settings_to_run_config(settings))  # its hash goes with theta
    return ckpt


def start_state(
    settings: Settings, ckpt: Checkpoint | None, nodes: NodeDirectory,
    seeded: dict[str, np.ndarray],
) -> ServerState:  # fmt: skip
    """theta, the optimizer's and DP's state of the first round to run. DP refuses, before
    round 1, rounds beyond target-epsilon."""
    state = ServerState(seeded) if ckpt is None else ServerState(ckpt.state, ckpt.optimizer)
    if not settings.dp:
        return state
    saved = PrivacyState.from_json(ckpt.privacy) if ckpt and ckpt.privacy else None
    clients = nodes.wait()
    expected = cohort_size(len(clients), settings.fraction_train)
    node_count = len({node for _, node in clients})
    privacy = start_privacy(
        settings, DPConfig.from_settings(settings), len(clients), node_count, expected, saved
    )
    return replace(state, privacy=privacy)


class _RoundLoop:
    """The rounds of one run: train, guard against divergence (server/divergence.py),
    evaluate, log and checkpoint. It owns the server's state between rounds: the caller
    reads ``state``, ``trained`` and ``last_eval`` once :meth:`run` returns."""

    def __init__(
        self, settings: Settings, folder: RunFolder, pipeline: ReplyRound | SecureRound,
        strategy: MetaStrategy, grid: Grid, state: ServerState, trained: bool,
    ) -> None:  # fmt: skip
        self.settings, self.folder, self.grid = settings, folder, grid
        self.pipeline, self.strategy = pipeline, strategy
        self.dp = pipeline.dp  # the pipeline's own, so the budget check reads the same
        self.state = state  # replaced only when a round steps
        self.trained = trained  # a checkpoint is written only once an update was accepted
        self.last_eval: dict[str, float] = {}
        self.outcome: RoundOutcome | None = None  # the last training round's
        self.evaluation = Evaluation(None)  # the last round's evaluation
        self.rollbacks = Rollbacks()
        self.stall = StallCounter(settings.max_stalled_rounds)
        self.base: Snapshot | None = None  # the state before the last step applied
        self.undo: Snapshot | None = None  # what a rollback of this round restores
        self.watch = LossWatch()  # the shared model's loss before adapting, vs its first
        self.last_good: Snapshot | None = Snapshot(0, state.theta, state.optimizer)
        self.progress = Progress(settings)

    def resume(self, ckpt: Checkpoint | None) -> None:
        """Carry the guard's state over a resume: the step size earlier rollbacks left, the
        loss watch's first evaluated value, the last sound state (a fresh run: clear it)."""
        path = self.folder.file(ROLLBACK_FILE)
        if ckpt is None:
            path.unlink(missing_ok=True)
            return
        if path.exists():
            self.rollbacks = Rollbacks.from_json(json.loads(path.read_text()))
            optimizer = self.rollbacks.optimizer(self.pipeline.optimizer)
            self.pipeline = replace(self.pipeline, optimizer=optimizer)
        self.watch = LossWatch.from_rows(_jsonl_rows(self.folder.file("metrics.jsonl")))
        self.last_good = Snapshot(ckpt.server_round, self.state.theta, ckpt.optimizer)

    def run(self, start: int, nodes: NodeDirectory, t_run: float) -> int:
        """Rounds ``start``.. to the end; the last round run if target-epsilon stopped the
        run early, else 0. Raises :class:`RunDiverged` if the run diverged for good."""
        rnd = start
        with self.progress:
            while rnd <= self.settings.num_rounds:
                t0 = time.monotonic()
                if not self._within_budget(nodes, rnd):
                    return rnd - 1
                divergence = self._train(rnd, t0) or self._evaluate_and_log(rnd, t0)
                rnd = rnd + 1 if divergence is None else self._diverged(divergence, t0, t_run)
        return 0

    def _within_budget(self, nodes: NodeDirectory, rnd: int) -> bool:
        if self.dp is None or self.state.privacy is None:
            return True
        population = len(nodes.wait())
        q = cohort_size(population, self.settings.fraction_train) / population
        return round_within_budget(self.dp, self.state.privacy, q, rnd)

    def _train(self, rnd: int, t0: float) -> Divergence | None:
        """Train round ``rnd``; how the run diverged, if this round shows it did."""
        before = Snapshot(rnd - 1, self.state.theta, self.state.optimizer)
        self.evaluation = Evaluation(None)
        outcome = self.outcome = self.pipeline.train_round(rnd, self.state, self.grid)
        report = outcome.report
        if outcome.theta is not None:
            bad = nonfinite_key(outcome.theta)
            if bad is not None:  # DP's ledger still counts the round's release
                self.state = replace(self.state, privacy=outcome.privacy_state)
                self.undo = before
                why = f"'{bad}' holds NaN or infinite values after the server step"
                return Divergence(rnd, rnd, why)
            self.trained, self.base = True, before
        self.state = outcome.state(self.state)
        if outcome.theta is None and not self.trained and report.every_reply_failed:
            self.folder.append_jsonl("metrics.jsonl", self._row(rnd, {}, t0))
            raise TrainingFailed(
                f"round {rnd}: every client failed and no update was ever accepted, so the "
                f"run stops ({self.first_drop()}); nothing was saved as trained. Every "
                f"dropped client and why: {self.folder.file('metrics.jsonl')}"
            )
        accepted = None if report.failed else report.accepted
        self.stall = self.stall.after(accepted, self.trained, report.asked)
        self.undo = self.base  # a stall: undo the step that led to it
        return self.stall.divergence(rnd, self.first_drop())

    def evaluate(self, rnd: int, final: bool) -> Evaluation:
        """Score the shared model (adapted per client) on a sample of clients."""
        cohort = self.strategy.sample_evaluate(rnd, final)
        config = ConfigRecord({FINAL: final})
        messages = self.strategy.evaluate_messages(rnd, to_record(self.state.theta), cohort, config)
        replies = send_and_receive(self.grid, messages, timeout=self.settings.round_timeout)
        return collect_evaluation(replies, cohort.asked, self.settings.task)

    def final_evaluation(self, scored: int, stopped: int) -> dict[str, float]:
        """Every client scored on the last model, after target-epsilon or a resume."""
        last_eval = dict(self.evaluate(scored, final=True).metrics or {})
        if stopped:
            last_eval["stopped-after-round"] = stopped
        return last_eval

    def _evaluate_and_log(self, rnd: int, t0: float) -> Divergence | None:
        """Evaluate (on evaluation rounds), log and checkpoint round ``rnd``; the divergence
        its evaluation shows (the loss watch), if any, before anything is written."""
        s, folder = self.settings, self.folder
        if rnd == s.num_rounds or rnd % s.evaluate_every == 0:
            self.evaluation = self.evaluate(rnd, final=rnd == s.num_rounds)
        round_eval = dict(self.evaluation.metrics or {})
        self.watch, divergence = self.watch.after(rnd, round_eval)
        if divergence is not None:
            self.undo = self.last_good  # the last state whose evaluation was sound
            return divergence
        self.last_eval = round_eval
        if self.evaluation.metrics is not None:
            self.last_good = Snapshot(rnd, self.state.theta, self.state.optimizer)
        row = self._row(rnd, self.last_eval, t0)
        folder.append_jsonl("metrics.jsonl", row)
        folder.append_jsonl("clients.jsonl", {"round": rnd, "clients": self.evaluation.clients})
        if self.trained:  # before that, theta is the seeded initial one: nothing to keep
            self._checkpoint(rnd, self.state)
        self.progress.after(row)
        return None

    def _checkpoint(self, rnd: int, state: ServerState) -> None:
        privacy = state.privacy.to_json() if state.privacy else None
        self.folder.save_checkpoint(Checkpoint(rnd, state.theta, state.optimizer, privacy))

    def _row(self, rnd: int, eval_metrics: dict[str, float], t0: float) -> dict:
        report = self.outcome.report if self.outcome else RoundReport()
        train = self.outcome.metrics if self.outcome else None
        return {
            "round": rnd,
            "train": dict(train or {}),
            "eval": eval_metrics,
            "accepted": report.accepted,
            "dropped": report.dropped + self.evaluation.dropped,
            "robust": report.robust,
            "privacy": report.privacy,
            "seconds": round(time.monotonic() - t0, 3),
        }

    def first_drop(self) -> str:
        """The round's first dropped client and why, on one line, for an error message."""
        dropped = self.outcome.report.dropped if self.outcome else []
        if not dropped:
            return "no client replied"
        first = " ".join(dropped[0].split())
        return f"first: {first[:300]}{'...' if len(first) > 300 else ''}"

    def _diverged(self, divergence: Divergence, t0: float, t_run: float) -> int:
        """Stop the run as diverged, or roll back: the round to run next."""
        s, undo = self.settings, self.undo
        log(WARNING, "round %d: the run diverged: %s", divergence.stopped_at, divergence.reason)
        if s.on_divergence != "rollback" or self.rollbacks.done >= s.max_rollbacks or not undo:
            self._record_divergence(divergence, t0, t_run)
        # Back to the state before the step that caused it, with a smaller server step. The
        # logs lose the undone rounds (rollback.json keeps why); DP's ledger keeps them.
        self.rollbacks = self.rollbacks.next(s.rollback_lr_factor)
        optimizer = self.rollbacks.optimizer(OptimizerConfig.from_settings(s))
        self.pipeline = replace(self.pipeline, optimizer=optimizer)
        self.state = replace(self.state, theta=undo.theta, optimizer=undo.optimizer)
        self.base, self.stall = undo, StallCounter(s.max_stalled_rounds)
        for name in ("metrics.jsonl", "clients.jsonl"):
            self.folder.truncate_jsonl_after(name, undo.server_round)
        events = _rollback_events(self.folder) + [
            {"round": divergence.server_round, "reason": divergence.reason,
             "to-round": undo.server_round}
        ]  # fmt: skip
        self.folder.write_json(ROLLBACK_FILE, self.rollbacks.to_json() | {"events": events})
        if undo.server_round > 0:  # a resume from here must not find the undone rounds
            self._checkpoint(undo.server_round, self.state)
        log(
            WARNING, "rollback %d/%d: back to the end of round %d, server-lr now %.4g",
            self.rollbacks.done, s.max_rollbacks, undo.server_round, optimizer.lr,
        )  # fmt: skip
        return undo.server_round + 1

    def _record_divergence(self, divergence: Divergence, t0: float, t_run: float) -> None:
        """Log the round, write summary.json as diverged, and stop the run."""
        rnd, reason, s = divergence.stopped_at, divergence.reason, self.settings
        round_eval = dict(self.evaluation.metrics or {})
        self.folder.append_jsonl(
            "metrics.jsonl", self._row(rnd, round_eval, t0) | {"diverged": reason}
        )
        summary = {
            "diverged-at-round": divergence.server_round, "stopped-at-round": rnd,
            "diverged-reason": reason, "rounds": s.num_rounds,
            "seconds": time.monotonic() - t_run, **self.rollbacks.to_json(),
        }  # fmt: skip
        self.folder.write_json("summary.json", summary)
        raise RunDiverged(divergence.server_round, reason, str(self.folder.file("summary.json")))


def _jsonl_rows(path: Path) -> list[dict]:
    """The rows of a JSON-lines log (truncated to the checkpoint already)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _rollback_events(folder: RunFolder) -> list[dict]:
    path = folder.file(ROLLBACK_FILE)
    return list(json.loads(path.read_text()).get("events", [])) if path.exists() else []


def resume_point(
    settings: Settings, folder: RunFolder, state: dict[str, np.ndarray]
) -> Checkpoint | None:
    """The checkpoint to continue from, or None to start at round 1.

    Refuses (ConfigError) a checkpoint without ``resume=true`` and a resume whose settings
    differ from config.json where theta depends on them; RunFolderError when config.json
    is missing or not the one the checkpoint was trained with (their hashes differ);
    CheckpointMismatch if its arrays are not this model's. A checkpoint with no server
    step (left by a run that never accepted an update) holds the seeded initial theta:
    starting over loses nothing.
    """
    ckpt = folder.load_checkpoint()
    if ckpt is None:
        return None
    if ckpt.optimizer.step == 0:
        log(INFO, "%s holds no accepted update; starting over at round 1", folder.path)
        return None
    if not settings.resume:
        raise ConfigError(
            "run-dir", settings.run_dir,
            f"a folder without a checkpoint ({folder.path} holds one at round "
            f"{ckpt.server_round}); set resume=true to continue that run or pick a new run-dir",
        )  # fmt: skip
    now, defaults = settings_to_run_config(settings), settings_to_run_config(Settings())
    for key, (was, new) in folder.check_resumable(now, defaults, ckpt).items():
        level = WARNING if key == "data-path" else INFO  # it must still be the same data
        log(level, "resuming with %s = %r (was %r)", key, new, was)
    check_matches(ckpt, folder.file("checkpoint.npz"), state)
    return ckpt


def finish(
    settings: Settings, folder: RunFolder, state: dict[str, np.ndarray],
    last_eval: dict[str, float], seconds: float,
) -> dict[str, float]:  # fmt: skip
    model_path = folder.save_model(state, settings_to_run_config(settings))
    summary: dict[str, float] = {**last_eval, "rounds": settings.num_rounds, "seconds": seconds}
    # 'local' never trains the shared model: new clients would start from the seeded initial
    # one, chance by construction, so they are not scored as if that were a result.
    if settings.new_clients > 0 and settings.algorithm is not Algorithm.LOCAL:
        model = model_for(settings)
        device = select_device(settings.device, model)
        theta, alpha = split_state(state)
        lr = to_tensors(alpha, device) if alpha is not None else settings.inner_lr
        summary |= evaluate_new_clients(settings, model, to_tensors(theta, device), lr, device)
    folder.write_json("summary.json", summary)
    if not last_eval:
        log(WARNING, "no evaluation results in the final round")
    log(INFO, "final model: %s", model_path)
    log(INFO, "summary:\n%s", "\n".join(f"  {k:28s} {v:.4f}" for k, v in sorted(summary.items())))
    return summary
