"""The SuperNode footprint sampler sees each component's peak memory and ClientApp time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deploy.measure.node_footprint import NodeSampler

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc")

ALLOCATE_MIB = 96
# Stands in for a ClientApp process: allocates and touches ALLOCATE_MIB, holds it 1 s.
CLIENTAPP = f"""
import time
block = bytearray({ALLOCATE_MIB} * 1024 * 1024)
for i in range(0, len(block), 4096):
    block[i] = 1
time.sleep(1.0)
"""


def test_sampler_reports_a_child_components_peak_and_lifetime(tmp_path):
    script = tmp_path / "flwr-clientapp"  # named like Flower's process so it is grouped so
    script.write_text(CLIENTAPP)
    launch = f"import subprocess, sys; subprocess.run([sys.executable, {str(script)!r}])"
    parent = subprocess.Popen([sys.executable, "-c", launch], env=os.environ)
    with NodeSampler(parent.pid, interval=0.05) as sampler:
        parent.wait(timeout=60)
    footprint = sampler.footprint()
    assert footprint.clientapp_processes == 1
    assert footprint.peak_rss_mib["flwr-clientapp"] >= ALLOCATE_MIB
    assert footprint.peak_tree_rss_mib >= footprint.peak_rss_mib["flwr-clientapp"]
    assert 0.8 <= footprint.clientapp_seconds < 30
