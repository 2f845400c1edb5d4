"""What a saved torch file holds, read from the file itself (no tensor is materialised).

``torch.save`` and ``torch.jit.save`` both write a zip whose pickles name every tensor
storage as ``('storage', type, key, location, numel)``, where ``location`` is the device the
tensor lived on when it was saved (``'cpu'``, ``'cuda:0'``). A file with a ``'cuda:0'``
storage loads only where CUDA exists, and there it loads onto the GPU: so the device of what
was stored is checked here, not inferred from ``torch.load``, which would move or refuse it.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path


class _Anything:
    """Stands in for every class a pickle names; accepts whatever unpickling does to it."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        pass

    def __call__(self, *args: object, **kwargs: object) -> _Anything:
        return _Anything()

    def __setitem__(self, key: object, value: object) -> None:
        pass

    def __setstate__(self, state: object) -> None:
        pass

    def append(self, value: object) -> None:
        pass

    def extend(self, values: object) -> None:
        pass


def storage_locations(path: str | Path) -> set[str]:
    """The devices that the tensors in a ``torch.save`` / ``torch.jit.save`` file came from."""
    found: set[str] = set()

    class Reader(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> type:
            return _Anything

        def persistent_load(self, pid: tuple) -> _Anything:
            found.add(pid[3])  # ('storage', type, key, location, numel)
            return _Anything()

    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            if name.endswith(".pkl") and not name.endswith(".debug_pkl"):
                Reader(io.BytesIO(archive.read(name))).load()
    return found
