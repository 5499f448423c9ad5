"""The README's core examples run as written."""

import subprocess
import sys

import pytest

from readme_blocks import readme_blocks

CORE = sorted(name for name in readme_blocks() if name.startswith("core-"))


def test_readme_has_the_core_examples():
    assert {"core-quickstart", "core-scheduler"} <= set(CORE)


@pytest.mark.parametrize("name", CORE)
def test_readme_example_runs(name):
    code = readme_blocks()[name]
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
