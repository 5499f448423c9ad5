"""What a step costs in memory, measured (docs/algorithm.md, "Cost and memory").

Each measurement runs ``tests/memory_probe.py`` in a fresh process: the peak resident memory one
step adds, in bytes per fp32 parameter. ``torch.optim.Adam(foreach=True)`` holds the gradient and one
intermediate (8 bytes); an amortized ALSALS step the same; a searched step one parameter-sized buffer
more (the copy of ``w0`` beside the direction: 12 bytes), freed when the step returns.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc to reset the peak RSS"),
]

PROBE = Path(__file__).with_name("memory_probe.py")


def peak_bytes_per_parameter(kind):
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(PROBE), kind], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return float(result.stdout.strip().splitlines()[-1])


def test_transient_memory_per_step_against_adam():
    adam = peak_bytes_per_parameter("adam")
    amortized = peak_bytes_per_parameter("alsals-amortized")
    searched = peak_bytes_per_parameter("alsals-searched")
    assert adam == pytest.approx(8.0, abs=0.5)
    assert amortized <= adam + 0.1  # an amortized step costs what Adam's step costs
    assert searched <= adam + 4.0 + 0.1  # one copy of the parameters more, while the search runs
