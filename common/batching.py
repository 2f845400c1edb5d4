"""One per-client function over a cohort: vmapped when the model allows it, else client by client.

Local training (client/train.py) and personalisation (common/scoring.py) each write
the work of one client as a pure function and run a cohort of clients through
:func:`map_clients`. Most models batch under ``torch.func.vmap``; some cannot: ``nn.GRU``
and ``nn.LSTM`` (their fused kernels have no batching rule), a Python branch on a
tensor's value, ``.item()``. Once per process and kind of work, a probe runs the vmapped
function on two clients of the real cohort; if that raises, one warning names the reason
and from then on the same function is called client by client and the results are
stacked. It is never a second copy of the math, so the loop gives what vmap gives up to
the float rounding of batched kernels (tests/common/test_user_model.py checks both).

Randomness inside the model (dropout) comes from torch's generator, seeded from the
clients' own seeds: in the loop each client draws from a stream of its own seed, so its
result does not depend on which clients share its cohort; under vmap
(``randomness="different"``) each client gets different draws from one stream seeded by
the whole cohort's seeds. Either way a run is reproducible and torch's global generator is
left as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch.func import vmap
from torch.utils._pytree import tree_flatten, tree_map

from common.streams import TORCH_STREAM

log = logging.getLogger("flwr")


_VMAP_PROBLEM: dict[Hashable, str | None] = {}  # per process: key -> why vmap failed, or None


def torch_seed(rng: np.random.Generator) -> int:
    """A torch seed for one client from its numpy generator, without drawing from it."""
    seq = rng.bit_generator.seed_seq
    child = np.random.SeedSequence(seq.entropy, spawn_key=(*seq.spawn_key, TORCH_STREAM))
    return int(child.generate_state(1, np.uint64)[0] >> np.uint64(1))


def map_clients(
    fn: Callable[..., Any],
    in_dims: tuple[int | None, ...],
    args: tuple[Any, ...],
    *,
    seeds: Sequence[int],
    key: Hashable,
    device: torch.device,
) -> Any:
    """``fn`` for every client: args with in_dim 0 carry a leading client axis, args with
    None are shared; the outputs are stacked on a leading client axis.

    ``seeds`` (one per client) seed the model's randomness; ``key`` names the kind of work
    for the once-per-process probe (settings and what the function does).
    """
    if _vmap_problem(fn, in_dims, args, key, device) is None:
        with _seeded(int(np.random.SeedSequence(list(seeds)).generate_state(1)[0]), device):
            return vmap(fn, in_dims=in_dims, randomness="different")(*args)
    outputs = []
    for i, seed in enumerate(seeds):
        with _seeded(seed, device):
            outputs.append(fn(*_row(args, in_dims, i)))
    return tree_map(lambda *rows: torch.stack(rows), *outputs)


def probe_key(kind: str, model: torch.nn.Module, *extra: Hashable) -> Hashable:
    """What decides whether vmap can batch a kind of work: the function (``kind``, e.g.
    'train-second-order'), the model's classes (a GRU anywhere in it) and ``extra``
    (the loss)."""
    return (kind, type(model), tuple(type(m) for m in model.modules()), *extra)


def vmap_problem(key: Hashable) -> str | None:
    """Why vmap failed for ``key`` in this process (None: it batches, or was not probed)."""
    return _VMAP_PROBLEM.get(key)


def _vmap_problem(
    fn: Callable[..., Any], in_dims: tuple[int | None, ...], args: tuple[Any, ...],
    key: Hashable, device: torch.device,
) -> str | None:  # fmt: skip
    if key in _VMAP_PROBLEM:
        return _VMAP_PROBLEM[key]
    n = _num_clients(args, in_dims)
    pair = torch.tensor([0, min(1, n - 1)], device=device)
    toy = tuple(
        a if d is None else tree_map(lambda t: t.index_select(0, pair), a)
        for a, d in zip(args, in_dims, strict=True)
    )
    problem = None
    try:
        with _seeded(0, device):
            vmap(fn, in_dims=in_dims, randomness="different")(*toy)
    except Exception as err:  # any failure of the batched call: the loop is the fallback
        problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        log.warning(
            "this model cannot run clients together under torch.func.vmap (%s); clients "
            "now run one after another with the same per-client function (slower, same "
            "results). docs/models.md, 'Models vmap cannot batch'",
            problem,
        )
    _VMAP_PROBLEM[key] = problem
    return problem


def _num_clients(args: tuple[Any, ...], in_dims: tuple[int | None, ...]) -> int:
    for a, d in zip(args, in_dims, strict=True):
        if d is not None:
            return tree_flatten(a)[0][0].shape[0]
    raise ValueError("map_clients needs at least one argument with a client axis (in_dim 0)")


def _row(args: tuple[Any, ...], in_dims: tuple[int | None, ...], i: int) -> tuple[Any, ...]:
    return tuple(
        a if d is None else tree_map(lambda t: t[i], a) for a, d in zip(args, in_dims, strict=True)
    )


@contextmanager
def _seeded(seed: int, device: torch.device):  # type: ignore[no-untyped-def]
    """torch's generator for ``device`` seeded with ``seed``, restored afterwards."""
    cuda = device.type == "cuda"
    index = device.index if device.index is not None else 0
    with torch.random.fork_rng(devices=[index] if cuda else []):
        if cuda:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(seed)  # lazy-safe: queued until CUDA starts
        else:
            torch.default_generator.manual_seed(seed)
        yield
