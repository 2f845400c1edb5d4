"""The one background sampler: ticks until stopped, ends early on request, never hides a
failed sample; the memory samplers built on it still see a live process tree."""

from __future__ import annotations

import os
import threading
import time

import pytest

from common.background_sampler import BackgroundSampler, SamplerError
from simulations.bench.proc_memory import TreeSampler


class Counter(BackgroundSampler):
    def __init__(self, limit: int | None = None, fail_at: int | None = None) -> None:
        self.interval = 0.001
        self.ticks = 0
        self.limit, self.fail_at = limit, fail_at
        self.ticked = threading.Event()

    def tick(self) -> bool:
        self.ticks += 1
        self.ticked.set()
        if self.ticks == self.fail_at:
            raise ValueError("sensor unplugged")
        return self.limit is None or self.ticks < self.limit


def test_ticks_until_stopped_and_the_thread_is_gone_after():
    with Counter() as sampler:
        assert sampler.ticked.wait(5)
        time.sleep(0.05)
    seen = sampler.ticks
    assert seen >= 2  # a loop, not a single call
    assert not sampler._thread.is_alive()
    time.sleep(0.02)
    assert sampler.ticks == seen  # nothing ticks after stop


def test_tick_returning_false_ends_sampling_without_stop():
    sampler = Counter(limit=3)
    sampler.start()
    sampler._thread.join(timeout=5)
    assert not sampler._thread.is_alive()
    assert sampler.ticks == 3
    sampler.stop()  # still fine after the thread ended by itself


def test_a_failed_sample_is_raised_by_stop_not_swallowed():
    sampler = Counter(fail_at=2)
    sampler.start()
    sampler._thread.join(timeout=5)
    with pytest.raises(SamplerError, match="Counter") as err:
        sampler.stop()
    assert isinstance(err.value.__cause__, ValueError)
    assert sampler.ticks == 2  # the thread ended at the failure


def test_a_sampler_without_tick_fails_loudly():
    with pytest.raises(SamplerError) as err, BackgroundSampler():
        pass
    assert isinstance(err.value.__cause__, NotImplementedError)


def test_a_sampler_starts_once():
    with Counter() as sampler, pytest.raises(RuntimeError, match="already started"):
        sampler.start()


def test_tree_sampler_sees_this_process_memory():
    with TreeSampler(os.getpid(), interval=0.01) as sampler:
        time.sleep(0.1)
    assert len(sampler.samples) >= 2
    assert sampler.peak > 10 * 2**20  # this interpreter alone holds more than 10 MiB
    assert sampler.by_round()[0] is sampler.samples[-1]  # no metrics file: round 0


def test_every_sampler_in_the_project_is_this_one():
    from deploy.measure.node_footprint import NodeSampler
    from simulations.bench.bench_cohort import GpuSampler
    from simulations.bench.bench_scale import TreeMeter

    for sampler in (TreeSampler, TreeMeter, NodeSampler, GpuSampler):
        assert issubclass(sampler, BackgroundSampler), sampler


def test_tree_meter_reads_cpu_seconds_at_each_round_row(tmp_path):
    from simulations.bench.bench_scale import TreeMeter

    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"round": 1}\n{"round": 2}\n')
    meter = TreeMeter(os.getpid(), metrics, interval=0.01)
    meter.start()
    sum(i * i for i in range(200_000))  # spend some CPU while it samples
    meter.stop()
    assert sorted(meter.cpu_at_round) == [1, 2]
    assert meter.cpu_total > 0 and meter.peak > 10 * 2**20
