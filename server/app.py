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
from logging import DEBUG, INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from common.arrays import from_record, join_state, split_state, to_record, to_tensors
from common.config import (
    Algorithm,
    ConfigError,
    Settings,
    parse_settings,
    settings_to_run_config,
)  # fmt: skip
from common.data.registry import check_data_available, smallest_train_split
from common.device import select_device
from common.messages import FINAL
from common.models import model_for
from common.tasks import batch_warnings
from server.aggregate import OptimizerConfig, OptimizerState
from server.delivery import send_and_receive
from server.divergence import (
    ROLLBACK_FILE,
    Divergence,
    LossWatch,
    Rollbacks,
    RunDiverged,
    Snapshot,
    StallCounter,
    federation_failed,
    nonfinite_key,
)  # fmt: skip
from server.new_clients import evaluate_new_clients
from server.nodes import NodeDirectory, cohort_size
from server.privacy import (
    NOT_PRIVATE,
    DPConfig,
    PrivacyBudgetExceeded,
    PrivacyState,
    check_budget,
    check_delta,
    check_tolerated_drops,
    start_state,
)  # fmt: skip
from server.run_folder import Checkpoint, RunFolder, check_matches
from server.strategy import MetaStrategy

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
    state = initial_state(settings)
    optimizer_state, start = OptimizerState(), 1
    ckpt = resume_point(settings, folder, state)
    if ckpt is None:
        folder.start_over()
    else:
        state, optimizer_state, start = ckpt.state, ckpt.optimizer, ckpt.server_round + 1
        for name in ("metrics.jsonl", "clients.jsonl"):
            folder.truncate_jsonl_after(name, ckpt.server_round)
        log(INFO, "resuming from %s at round %d", folder.path, start)
    folder.record_config(settings_to_run_config(settings))  # its hash goes with theta

    nodes = NodeDirectory(
        grid, settings.min_available_nodes, settings.node_wait_timeout, settings.round_timeout
    )
    strategy = MetaStrategy(settings, nodes, optimizer_config(settings), optimizer_state)
    if strategy.dp is not None:  # refuses, before round 1, rounds beyond target-epsilon
        saved = PrivacyState.from_json(ckpt.privacy) if ckpt and ckpt.privacy else None
        strategy.privacy = _start_privacy(settings, strategy.dp, nodes, saved)
    t_run = time.monotonic()
    loop = _RoundLoop(settings, folder, strategy, grid, to_record(state), ckpt is not None)
    loop.resume(ckpt)
    stopped = loop.run(start, nodes, t_run)  # the last round run when target-epsilon stopped
    state, trained, last_eval = from_record(loop.record), loop.trained, loop.last_eval
    # Score every client on the last model: the one DP allowed, or, resumed after the last
    # round (a crash between its checkpoint and summary.json), the final one again.
    scored = stopped or (settings.num_rounds if start > settings.num_rounds else 0)
    if scored and trained:
        replies = send_and_receive(
            grid,
            strategy.configure_evaluate(scored, loop.record, ConfigRecord({FINAL: True}), grid),
            timeout=settings.round_timeout,
        )
        last_eval = dict(strategy.aggregate_evaluate(scored, replies) or {})  # type: ignore[arg-type]
        if stopped:
            last_eval["stopped-after-round"] = stopped
    if strategy.privacy is not None and strategy.dp is not None:
        last_eval |= {
            "epsilon": strategy.privacy.ledger.epsilon(strategy.dp.delta, strategy.dp.accountant),
            "delta": strategy.dp.delta,
            "noise-multiplier": strategy.privacy.noise_multiplier,
            "final-clip": strategy.privacy.clip,
        }
        if strategy.dp.reproducible:  # loudly: this run's epsilon protects no one
            last_eval["not-a-private-release"] = 1.0
    if not trained:
        raise TrainingFailed(
            f"no client update was accepted in rounds {start}..{settings.num_rounds} "
            f"({_first_drop(strategy)}), so there is no trained model: no model.pt or "
            f"summary.json written. Every dropped client and why: {folder.file('metrics.jsonl')}"
        )
    return finish(settings, folder, state, last_eval, time.monotonic() - t_run)


class _RoundLoop:
    """The rounds of one run: train, guard against divergence (server/divergence.py),
    evaluate, log and checkpoint. The caller reads ``record``, ``trained`` and
    ``last_eval`` once :meth:`run` returns."""

    def __init__(
        self, settings: Settings, folder: RunFolder, strategy: MetaStrategy, grid: Grid,
        record: ArrayRecord, trained: bool,
    ) -> None:  # fmt: skip
        self.settings, self.folder, self.strategy, self.grid = settings, folder, strategy, grid
        self.record = record  # theta as sent; replaced only when a round aggregates
        self.trained = trained  # a checkpoint is written only once an update was accepted
        self.last_eval: dict[str, float] = {}
        self.train_metrics: MetricRecord | None = None
        self.rollbacks = Rollbacks()
        self.stall = StallCounter(settings.max_stalled_rounds)
        self.base: Snapshot | None = None  # the state before the last step applied
        self.undo: Snapshot | None = None  # what a rollback of this round restores
        self.watch = LossWatch()  # the shared model's loss before adapting, vs its first
        self.last_good: Snapshot | None = Snapshot(0, record, strategy.optimizer_state)
        self.round_eval: dict[str, float] = {}

    def resume(self, ckpt: Checkpoint | None) -> None:
        """Carry the guard's state over a resume: the step size earlier rollbacks left, the
        loss watch's first evaluated value, the last sound state (a fresh run: clear it)."""
        path = self.folder.file(ROLLBACK_FILE)
        if ckpt is None:
            path.unlink(missing_ok=True)
            return
        if path.exists():
            self.rollbacks = Rollbacks.from_json(json.loads(path.read_text()))
            self.strategy.optimizer = self.rollbacks.optimizer(self.strategy.optimizer)
        self.watch = LossWatch.from_rows(_jsonl_rows(self.folder.file("metrics.jsonl")))
        self.last_good = Snapshot(ckpt.server_round, self.record, ckpt.optimizer)

    def run(self, start: int, nodes: NodeDirectory, t_run: float) -> int:
        """Rounds ``start``.. to the end; the last round run if target-epsilon stopped the
        run early, else 0. Raises :class:`RunDiverged` if the run diverged for good."""
        rnd = start
        while rnd <= self.settings.num_rounds:
            t0 = time.monotonic()
            if not _within_budget(self.strategy, nodes, rnd):
                return rnd - 1
            divergence = self._train(rnd, t0) or self._evaluate_and_log(rnd, t0)
            if divergence is None:
                rnd += 1
            else:
                rnd = self._diverged(divergence, t0, t_run)
        return 0

    def _train(self, rnd: int, t0: float) -> Divergence | None:
        """Train round ``rnd``; how the run diverged, if this round shows it did."""
        s, strategy, grid = self.settings, self.strategy, self.grid
        before = Snapshot(rnd - 1, self.record, strategy.optimizer_state)
        self.round_eval = {}
        if s.secagg:
            replies: list[Message] = []
            new_record, self.train_metrics = strategy.train_secure(rnd, self.record, grid)
        else:
            messages = strategy.configure_train(rnd, self.record, ConfigRecord(), grid)
            replies = list(send_and_receive(grid, messages, timeout=s.round_timeout))
            new_record, self.train_metrics = strategy.aggregate_train(rnd, replies)
        if new_record is not None:
            bad = nonfinite_key(from_record(new_record))
            if bad is not None:
                self.undo = before
                why = f"'{bad}' holds NaN or infinite values after the server step"
                return Divergence(rnd, rnd, why)
            self.record, self.trained, self.base = new_record, True, before
        elif not self.trained and replies and all(m.has_error() for m in replies):
            self.folder.append_jsonl("metrics.jsonl", _round_row(rnd, strategy, None, {}, t0))
            raise TrainingFailed(
                f"round {rnd}: every client failed and no update was ever accepted, so the "
                f"run stops ({_first_drop(strategy)}); nothing was saved as trained. Every "
                f"dropped client and why: {self.folder.file('metrics.jsonl')}"
            )
        asked = sum(len(p) for p in strategy.asked.values())
        failed = not s.secagg and federation_failed(replies, asked)
        accepted = None if failed else strategy.report.accepted
        self.stall = self.stall.after(accepted, self.trained, asked)
        self.undo = self.base  # a stall: undo the step that led to it
        return self.stall.divergence(rnd, _first_drop(strategy))

    def _evaluate_and_log(self, rnd: int, t0: float) -> Divergence | None:
        """Evaluate (on evaluation rounds), log and checkpoint round ``rnd``; the divergence
        its evaluation shows (the loss watch), if any, before anything is written."""
        s, strategy, folder = self.settings, self.strategy, self.folder
        final = rnd == s.num_rounds
        eval_metrics = None
        if final or rnd % s.evaluate_every == 0:
            messages = strategy.configure_evaluate(
                rnd, self.record, ConfigRecord({FINAL: final}), self.grid
            )
            replies = send_and_receive(self.grid, messages, timeout=s.round_timeout)
            eval_metrics = strategy.aggregate_evaluate(rnd, replies)
        else:
            strategy.report.eval_clients = []
        self.round_eval = dict(eval_metrics or {})  # type: ignore[arg-type]
        self.watch, divergence = self.watch.after(rnd, self.round_eval)
        if divergence is not None:
            self.undo = self.last_good  # the last state whose evaluation was sound
            return divergence
        self.last_eval = self.round_eval
        if eval_metrics is not None:
            self.last_good = Snapshot(rnd, self.record, strategy.optimizer_state)
        row = _round_row(rnd, strategy, self.train_metrics, self.last_eval, t0)
        folder.append_jsonl("metrics.jsonl", row)
        clients = strategy.report.eval_clients
        folder.append_jsonl("clients.jsonl", {"round": rnd, "clients": clients})
        if self.trained:  # before that, theta is the seeded initial one: nothing to keep
            self._checkpoint(rnd, self.record, strategy.optimizer_state)
        log(INFO if says_progress(s, row) else DEBUG, "%s", progress_line(s, row))
        return None

    def _checkpoint(self, rnd: int, record: ArrayRecord, optimizer: OptimizerState) -> None:
        privacy = self.strategy.privacy.to_json() if self.strategy.privacy else None
        self.folder.save_checkpoint(Checkpoint(rnd, from_record(record), optimizer, privacy))

    def _diverged(self, divergence: Divergence, t0: float, t_run: float) -> int:
        """Stop the run as diverged, or roll back: the round to run next."""
        s, folder, undo = self.settings, self.folder, self.undo
        rnd, reason = divergence.stopped_at, divergence.reason
        log(WARNING, "round %d: the run diverged: %s", rnd, reason)
        if s.on_divergence != "rollback" or self.rollbacks.done >= s.max_rollbacks or not undo:
            row = _round_row(rnd, self.strategy, self.train_metrics, self.round_eval, t0)
            folder.append_jsonl("metrics.jsonl", row | {"diverged": reason})
            summary = {
                "diverged-at-round": divergence.server_round, "stopped-at-round": rnd,
                "diverged-reason": reason, "rounds": s.num_rounds,
                "seconds": time.monotonic() - t_run, **self.rollbacks.to_json(),
            }  # fmt: skip
            folder.write_json("summary.json", summary)
            raise RunDiverged(divergence.server_round, reason, str(folder.file("summary.json")))
        # Back to the state before the step that caused it, with a smaller server step. The
        # logs lose the undone rounds (rollback.json keeps why); DP's ledger keeps them.
        self.rollbacks = self.rollbacks.next(s.rollback_lr_factor)
        self.strategy.optimizer = self.rollbacks.optimizer(optimizer_config(s))
        self.strategy.optimizer_state = undo.optimizer
        self.record, self.base = undo.record, undo
        self.stall = StallCounter(s.max_stalled_rounds)
        for name in ("metrics.jsonl", "clients.jsonl"):
            folder.truncate_jsonl_after(name, undo.server_round)
        events = _rollback_events(folder) + [
            {"round": divergence.server_round, "reason": reason, "to-round": undo.server_round}
        ]
        folder.write_json(ROLLBACK_FILE, self.rollbacks.to_json() | {"events": events})
        if undo.server_round > 0:  # a resume from here must not find the undone rounds
            self._checkpoint(undo.server_round, undo.record, undo.optimizer)
        log(
            WARNING, "rollback %d/%d: back to the end of round %d, server-lr now %.4g",
            self.rollbacks.done, s.max_rollbacks, undo.server_round, self.strategy.optimizer.lr,
        )  # fmt: skip
        return undo.server_round + 1


def _jsonl_rows(path: Path) -> list[dict]:
    """The rows of a JSON-lines log (truncated to the checkpoint already)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _rollback_events(folder: RunFolder) -> list[dict]:
    path = folder.file(ROLLBACK_FILE)
    return list(json.loads(path.read_text()).get("events", [])) if path.exists() else []


def _start_privacy(
    settings: Settings, dp: DPConfig, nodes: NodeDirectory, saved: PrivacyState | None
) -> PrivacyState:
    """DP's state for the first round to run: resumed, or with z configured or calibrated.

    The sampling rate q = k / N needs N, the clients on the nodes connected now."""
    clients = nodes.wait()
    population = len(clients)
    check_delta(dp.delta, population)
    if settings.dp_mechanism == "distributed":  # (the node count is only needed there)
        check_tolerated_drops(settings, len({node for _, node in clients}))
    expected = cohort_size(population, settings.fraction_train)
    q = expected / population
    state, planned = start_state(settings, dp, q, expected, saved)
    log(
        INFO,
        "DP: noise multiplier %.4g, clip %.4g, Poisson sampling q = %d/%d = %.4g; epsilon "
        "after round %d: %.4g at delta %g",
        state.noise_multiplier, state.clip, expected, population, q, settings.num_rounds,
        planned, dp.delta,
    )  # fmt: skip
    if dp.reproducible:
        log(WARNING, "DP: %s; epsilon does not hold against anyone who knows the seed", NOT_PRIVATE)
    return state


def _within_budget(strategy: MetaStrategy, nodes: NodeDirectory, rnd: int) -> bool:
    """Whether round ``rnd`` may run without exceeding target-epsilon at today's q.

    The plan is checked before round 1; q grows when nodes leave (k / N with fewer N),
    so each round is checked again and the run stops before the round that would exceed."""
    dp, privacy = strategy.dp, strategy.privacy
    if dp is None or privacy is None or not dp.target_epsilon:
        return True
    population = len(nodes.wait())
    q = cohort_size(population, strategy.settings.fraction_train) / population
    try:
        check_budget(privacy.ledger, q, privacy.noise_multiplier, 1, dp)
    except PrivacyBudgetExceeded as err:
        log(WARNING, "round %d not run, the run stops here: %s", rnd, err)
        return False
    return True


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


def _round_row(
    rnd: int, strategy: MetaStrategy, train_metrics: MetricRecord | None,
    eval_metrics: dict[str, float], t0: float,
) -> dict:  # fmt: skip
    return {
        "round": rnd,
        "train": dict(train_metrics or {}),
        "eval": eval_metrics,
        "accepted": strategy.report.accepted,
        "dropped": strategy.report.dropped,
        "robust": strategy.report.robust,
        "privacy": strategy.report.privacy,
        "seconds": round(time.monotonic() - t0, 3),
    }


def _first_drop(strategy: MetaStrategy) -> str:
    """The round's first dropped client and why, on one line, for an error message."""
    if not strategy.report.dropped:
        return "no client replied"
    first = " ".join(strategy.report.dropped[0].split())
    return f"first: {first[:300]}{'...' if len(first) > 300 else ''}"


def optimizer_config(s: Settings) -> OptimizerConfig:
    return OptimizerConfig(
        s.server_optimizer, s.server_lr, s.server_beta1, s.server_beta2, s.server_eps
    )


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
