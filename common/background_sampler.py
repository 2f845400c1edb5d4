"""One background sampler: a thread that takes a sample every ``interval`` seconds.

Every measurement in the project watches something while a run goes on: the memory of a
process tree (simulations/bench/proc_memory.py, simulations/bench/bench_scale.py), a
deployed node's footprint (deploy/measure/node_footprint.py), the GPU's utilisation
(simulations/bench/bench_cohort.py). They differ only in what one sample reads, so the
thread, its start and stop, and how a failing sample surfaces live here once. Both
``simulations/`` and ``deploy/`` import it, and neither imports the other.
"""

from __future__ import annotations

import threading
from typing import Self


class SamplerError(RuntimeError):
    """A sample raised in the background thread; raised again by :meth:`stop`."""


class BackgroundSampler:
    """Calls :meth:`tick` on a daemon thread every ``interval`` seconds until stopped.

    Use it as a context manager (``with Sampler(...) as s:``) or call :meth:`start` and
    :meth:`stop`. :meth:`tick` returns False to end sampling early (what it watches is
    gone). An exception in :meth:`tick` ends the thread and is raised again by
    :meth:`stop`, so a measurement never reports figures from a sampler that died.
    """

    interval: float = 1.0
    thread_name: str = "background-sampler"

    def tick(self) -> bool:
        """Take one sample; return False to stop sampling."""
        raise NotImplementedError(f"{type(self).__name__} must define tick()")

    def start(self) -> None:
        if getattr(self, "_thread", None) is not None:
            raise RuntimeError(f"{type(self).__name__} was already started; make a new one")
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread, wait for it, and raise what a sample raised, if anything did."""
        self._stopping.set()
        self._thread.join()
        if self._failure is not None:
            raise SamplerError(
                f"{type(self).__name__}: a sample failed, so its figures are incomplete"
            ) from self._failure

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set() and self.tick():
                self._stopping.wait(self.interval)
        except Exception as err:  # kept for stop(), which raises it in the caller's thread
            self._failure = err
