"""Client data: what each federated client holds, built from settings and a partition id.

``registry`` is the entry point (``load_client_data``, ``check_data_available``,
``dataset_info``); ``readers`` parse the official formats, ``partition`` splits a dataset
into clients, ``sinusoid`` and ``synthetic`` generate a client's data from its index.
"""

from common.data.registry import (
    DatasetInfo,
    check_data_available,
    dataset_info,
    input_shape,
    load_client_data,
    num_classes,
)
from common.data.types import ClientData, DataError

__all__ = [
    "ClientData",
    "DataError",
    "DatasetInfo",
    "check_data_available",
    "dataset_info",
    "input_shape",
    "load_client_data",
    "num_classes",
]
