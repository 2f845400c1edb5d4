"""Personalise a functional copy of theta on a client's train split; score on its test split.

This is the only evaluation path, used by clients every round (one or a whole cohort at a
time) and by the server for clients never seen in training. Adaptation reads
``x_train``/``y_train`` only and scoring reads ``x_test``/``y_test`` only, so no score is
ever taken on data the model adapted on (the evaluation leak common in public Per-FedAvg
code).

:func:`personalize_scores` is the per-task function: pure, tensors in and out, so
:func:`evaluate_cohort` runs it for many clients at once under ``torch.func.vmap``. A
client is scored after each requested number of steps along *one* adaptation (the scores
after 1 and after 10 steps come from the same batches), and test splits of different
sizes are zero-padded and masked, so batching changes speed, never a score beyond float
rounding. A model vmap cannot batch runs the same function task by task
(common/batching.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from common.batching import map_clients, probe_key, torch_seed
from common.config import Task
from common.data.episodes import EpisodicData, evaluation_episodes
from common.data.types import ClientData
from common.meta import Batch, LossFn, Params, StepSize, adapt
from common.tasks import HostBatch, draw_indices


def loss_fn_for(task: Task, loss: str = "") -> LossFn:
    """The training and scoring loss: the config's ``loss`` (an import path) or, by
    default, cross-entropy for classification and MSE for regression.

    For regression the prediction takes the target's shape first, so a model returning
    [batch] and one returning [batch, 1] are scored alike (never broadcast to a matrix).
    """
    if loss:
        from common.plugins import load_object  # imports the user's module once

        fn = load_object(loss, "loss")
    else:
        fn = F.mse_loss if task is Task.REGRESSION else F.cross_entropy
    if task is Task.CLASSIFICATION:
        return fn
    return lambda pred, target: fn(pred.reshape(target.shape), target)


@dataclass(frozen=True)
class Score:
    loss: float
    accuracy: float | None  # None for regression


@dataclass(frozen=True)
class Personalized:
    """Scores before and after adaptation, and the adapted parameters themselves."""

    before: Score
    after: Score  # after the largest requested step count
    params: Params  # theta after that many steps on the train split (theta for 0 steps)
    by_steps: dict[int, Score]  # every requested step count (0 = before)


def masked_scores(
    model: nn.Module, params: Params, test: tuple[Tensor, Tensor, Tensor], task: Task,
    loss: str = "",
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """(mean loss, accuracy) over the rows of ``test`` = (x, y, mask) where mask is 1.

    A user's ``loss`` is taken on each row as a batch of one (vmapped over the rows), so
    padding rows can be masked out: the score is the mean of per-example losses.
    """
    x, y, mask = test
    out = functional_call(model, params, (x,))
    if loss:
        fn = loss_fn_for(task, loss)
        per_row = vmap(lambda o, t: fn(o[None], t[None]))(out, y)
    elif task is Task.REGRESSION:
        per_row = ((out.reshape(y.shape) - y) ** 2).reshape(len(y), -1).mean(1)
    else:
        per_row = F.cross_entropy(out, y, reduction="none")
    if task is Task.REGRESSION:
        correct = torch.zeros_like(per_row)
    else:
        correct = (out.argmax(dim=1) == y).to(per_row.dtype)
    count = mask.sum()
    return (per_row * mask).sum() / count, (correct * mask).sum() / count


def personalize_scores(
    model: nn.Module,
    params: Params,
    inner_lr: StepSize,
    support: Batch,
    test: tuple[Tensor, Tensor, Tensor],
    *,
    steps: tuple[int, ...],
    task: Task,
    loss: str = "",
) -> tuple[Tensor, Tensor, Params]:
    """Per task: losses and accuracies after each count in ``steps``, and the last params.

    Step i adapts on ``support[i % len(support)]`` (``support`` has a leading step axis).
    theta itself is never changed.
    """
    xs, ys = support
    batches = [(xs[i], ys[i]) for i in range(xs.shape[0])]
    loss_fn = loss_fn_for(task, loss)
    losses, accuracies = [], []
    adapted, done = params, 0
    for k in sorted(set(steps)):
        if k > done:
            # Nothing differentiates through an evaluation, so the inner gradients need no
            # detaching (create_graph=False would only add a detach per tensor and step).
            adapted = adapt(
                model, adapted, batches[done:] + batches[:done], loss_fn, inner_lr, k - done,
                create_graph=True,
            )  # fmt: skip
            done = k
        score, acc = masked_scores(model, adapted, test, task, loss)
        losses.append(score)
        accuracies.append(acc)
    return torch.stack(losses), torch.stack(accuracies), adapted


@dataclass(frozen=True)
class _Task:
    """One personalisation task on the host: adaptation batches and the scored split."""

    client: int  # position of its client in the cohort
    support: HostBatch  # leading step axis
    test: HostBatch


def _tasks_of(
    data: ClientData, index: int, rng: np.random.Generator, max_steps: int, batch_size: int
) -> list[_Task]:
    if isinstance(data, EpisodicData):
        # Each of ``eval_episodes`` N-way K-shot tasks adapts on its whole K-shot support
        # (every step) and is scored on the held-out drawings of its N classes.
        return [
            _Task(index, (e.x_train[None], e.y_train[None]), (e.x_test, e.y_test))
            for e in evaluation_episodes(data, rng)
        ]
    idx = draw_indices(rng, data.num_train, batch_size, max(max_steps, 1))
    return [_Task(index, (data.x_train[idx], data.y_train[idx]), (data.x_test, data.y_test))]


def evaluate_cohort(
    model: nn.Module,
    params: Params,
    inner_lr: StepSize,
    clients: Sequence[ClientData],
    rngs: Sequence[np.random.Generator],
    *,
    steps: Sequence[int],
    batch_size: int,
    task: Task,
    device: torch.device,
    cohort_size: int = 0,
    per_client_params: bool = False,
    keep_params: bool = True,
    loss: str = "",
) -> list[Personalized]:
    """Personalise and score every client of ``clients`` (each with its own ``rng``).

    ``params`` is theta for all clients, or (``per_client_params``) a stack with one row
    per client (the 'local' baseline's own models). ``cohort_size`` > 0 bounds how many
    tasks run in one vmapped call (memory); 0 runs them all at once. An episodic client is
    scored on ``eval_episodes`` tasks and gets their mean; its ``params`` are those of its
    last episode. ``loss`` is the config's loss (an import path; '' for the task's own).
    """
    steps = tuple(sorted({0, *steps}))
    tasks = [
        t
        for i, (data, rng) in enumerate(zip(clients, rngs, strict=True))
        for t in _tasks_of(data, i, rng, max(steps), batch_size)
    ]
    seeds = _task_seeds(tasks, [torch_seed(rng) for rng in rngs])
    losses = np.zeros((len(tasks), len(steps)))
    accuracies = np.zeros((len(tasks), len(steps)))
    adapted: list[Params] = [{} for _ in tasks]
    lr = {n: a.detach() for n, a in inner_lr.items()} if isinstance(inner_lr, dict) else inner_lr
    shared = {n: p.detach() for n, p in params.items()}
    for group in _chunks(_by_support_shape(tasks), cohort_size):
        chosen = [tasks[i] for i in group]
        support, test = (
            stack_to_device([t.support for t in chosen], task, device),
            _stack_padded_test(chosen, task, device),
        )
        start, in_dim = _starting_params(shared, chosen, per_client_params, device)

        def one(p: Params, s: Batch, t: tuple[Tensor, Tensor, Tensor]) -> tuple:
            return personalize_scores(model, p, lr, s, t, steps=steps, task=task, loss=loss)

        chunk_loss, chunk_acc, chunk_params = map_clients(
            one, (in_dim, 0, 0), (start, support, test), seeds=[seeds[i] for i in group],
            key=probe_key("personalize", model, loss), device=device,
        )  # fmt: skip
        losses[group] = chunk_loss.double().cpu().numpy()
        accuracies[group] = chunk_acc.double().cpu().numpy()
        if keep_params:
            for j, i in enumerate(group):
                adapted[i] = {n: p[j] for n, p in chunk_params.items()}
    rows_of: list[list[int]] = [[] for _ in clients]
    for j, t in enumerate(tasks):
        rows_of[t.client].append(j)
    return [_client_result(rows, losses, accuracies, adapted, steps, task) for rows in rows_of]


def _starting_params(
    shared: Params, chosen: list[_Task], per_client_params: bool, device: torch.device
) -> tuple[Params, int | None]:
    """theta for every task (vmap in_dim None), or each task's client's own row (in_dim 0)."""
    if not per_client_params:
        return shared, None
    rows = torch.as_tensor([t.client for t in chosen], device=device)
    return {n: p.index_select(0, rows) for n, p in shared.items()}, 0


def _task_seeds(tasks: list[_Task], client_seeds: list[int]) -> list[int]:
    """A torch seed per task: its client's, split per episode (an episodic client's tasks
    each get their own)."""
    seen: dict[int, int] = {}
    out = []
    for t in tasks:
        j = seen[t.client] = seen.get(t.client, -1) + 1
        seq = np.random.SeedSequence([client_seeds[t.client], j])
        out.append(int(seq.generate_state(1, np.uint64)[0] >> np.uint64(1)))
    return out


def _client_result(
    rows: list[int],
    losses: np.ndarray,
    accuracies: np.ndarray,
    adapted: list[Params],
    steps: tuple[int, ...],
    task: Task,
) -> Personalized:
    if len(rows) == 1:  # one task (plain clients): its row as it is
        loss, acc = losses[rows[0]], accuracies[rows[0]]
    else:  # episodic clients: the mean over their episodes
        loss, acc = losses[rows].mean(axis=0), accuracies[rows].mean(axis=0)
    by_steps = {
        k: Score(float(loss[j]), None if task is Task.REGRESSION else float(acc[j]))
        for j, k in enumerate(steps)
    }
    return Personalized(by_steps[0], by_steps[steps[-1]], adapted[rows[-1]], by_steps)


def _by_support_shape(tasks: list[_Task]) -> list[list[int]]:
    """Task positions grouped by the shape of their adaptation batches (stackable).

    Within a group, tasks are ordered by the size of their test split, so a chunk of
    ``cohort-size`` pads its test splits to similar lengths (Shakespeare roles range from
    tens to thousands of test windows); the order changes which tasks share a call, never
    a score.
    """
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault(t.support[0].shape, []).append(i)
    return [sorted(g, key=lambda i: len(tasks[i].test[0])) for g in groups.values()]


def _chunks(groups: list[list[int]], size: int) -> list[list[int]]:
    if size <= 0:
        return groups
    return [g[i : i + size] for g in groups for i in range(0, len(g), size)]


def _y_dtype(task: Task) -> torch.dtype:
    return torch.float32 if task is Task.REGRESSION else torch.int64


def stack_to_device(batches: Sequence[HostBatch], task: Task, device: torch.device) -> Batch:
    """Equal-shaped host batches stacked on a new leading axis, as the task's dtypes on
    ``device`` (the one place host data becomes tensors for a vmapped call)."""
    x = np.stack([b[0] for b in batches])
    y = np.stack([b[1] for b in batches])
    return (
        torch.as_tensor(x, dtype=torch.float32, device=device),
        torch.as_tensor(y, dtype=_y_dtype(task), device=device),
    )


def _stack_padded_test(
    tasks: list[_Task], task: Task, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Test splits zero-padded to the longest one, with a 0/1 mask of the real rows."""
    longest = max(len(t.test[0]) for t in tasks)
    x0, y0 = tasks[0].test
    x = np.zeros((len(tasks), longest, *x0.shape[1:]), np.float32)
    y = np.zeros((len(tasks), longest, *y0.shape[1:]), y0.dtype)
    mask = np.zeros((len(tasks), longest), np.float32)
    for i, t in enumerate(tasks):
        n = len(t.test[0])
        x[i, :n], y[i, :n], mask[i, :n] = t.test[0], t.test[1], 1.0
    return (
        torch.as_tensor(x, device=device),
        torch.as_tensor(y, dtype=_y_dtype(task), device=device),
        torch.as_tensor(mask, device=device),
    )


def personalize_and_score(
    model: nn.Module,
    params: Params,
    inner_lr: StepSize,
    data: ClientData,
    *,
    steps: int,
    batch_size: int,
    task: Task,
    rng: np.random.Generator,
    device: torch.device,
    loss: str = "",
) -> Personalized:
    """One client: score theta, personalise it ``steps`` steps, score the result.

    The same computation as a cohort of one (:func:`evaluate_cohort`).
    """
    return evaluate_cohort(
        model, params, inner_lr, [data], [rng], steps=(steps,), batch_size=batch_size,
        task=task, device=device, loss=loss,
    )[0]  # fmt: skip


def tensors_of(data: ClientData, task: Task, device: torch.device) -> tuple[Tensor, ...]:
    """(x_train, y_train, x_test, y_test) as tensors on ``device`` with the task's dtypes."""
    return (
        torch.as_tensor(data.x_train, dtype=torch.float32, device=device),
        torch.as_tensor(data.y_train, dtype=_y_dtype(task), device=device),
        torch.as_tensor(data.x_test, dtype=torch.float32, device=device),
        torch.as_tensor(data.y_test, dtype=_y_dtype(task), device=device),
    )
