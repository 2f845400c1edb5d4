"""The node config's torch-threads sets torch's thread count in the ClientApp (default 1)."""

from __future__ import annotations

import pytest
import torch
from flwr.app import Context, RecordDict

from client.runtime import DEFAULT_TORCH_THREADS, node_runtime, torch_threads


@pytest.fixture(autouse=True)
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def _context(**node: object) -> Context:
    return Context(
        run_id=1, node_id=1, node_config={"partition-id": 0, "num-partitions": 2, **node},
        state=RecordDict(), run_config={"dataset": "sinusoid"},
    )  # fmt: skip


def test_the_default_is_one_thread():
    assert DEFAULT_TORCH_THREADS == 1
    torch.set_num_threads(2)
    node_runtime(_context())
    assert torch.get_num_threads() == 1


def test_the_node_config_sets_the_count():
    torch.set_num_threads(1)
    node_runtime(_context(**{"torch-threads": 3}))
    assert torch.get_num_threads() == 3
    node_runtime(_context(**{"torch-threads": 1}))
    assert torch.get_num_threads() == 1


def test_zero_keeps_what_the_process_has():
    torch.set_num_threads(2)
    node_runtime(_context(**{"torch-threads": 0}))
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("bad", [-1, 1.5, "2", True])
def test_a_bad_value_names_the_key_and_the_way_out(bad):
    with pytest.raises(ValueError, match=r"node config torch-threads=.* whole number >= 1"):
        torch_threads({"torch-threads": bad})
    with pytest.raises(ValueError, match="torch-threads"):
        node_runtime(_context(**{"torch-threads": bad}))
