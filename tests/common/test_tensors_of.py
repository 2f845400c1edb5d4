"""tensors_of: a client's splits as tensors with the task's dtypes (used by the ONNX export,
the personalize command and the curvature study), values unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.config import Task
from common.data.types import ClientData
from common.scoring import tensors_of


@pytest.mark.parametrize(
    ("task", "y_dtype"), [(Task.CLASSIFICATION, torch.int64), (Task.REGRESSION, torch.float32)]
)
def test_tensors_of_keeps_the_values_and_gives_each_split_its_dtype(task, y_dtype):
    r = np.random.default_rng(0)
    y_train, y_test = np.array([0, 2, 1]), np.array([1, 0])
    if task is Task.REGRESSION:
        y_train, y_test = r.random((3, 1)), r.random((2, 1))
    data = ClientData(r.random((3, 4)), y_train, r.random((2, 4)), y_test)
    out = tensors_of(data, task, torch.device("cpu"))
    for tensor, array in zip(out, (data.x_train, y_train, data.x_test, y_test), strict=True):
        assert tensor.device.type == "cpu"
        np.testing.assert_allclose(tensor.numpy(), array, rtol=1e-6)
    assert [t.dtype for t in out] == [torch.float32, y_dtype, torch.float32, y_dtype]
