"""Optional dependencies: ``import alsals`` needs only torch; the integrations import their framework
lazily and, when it is missing, say which extra to install. (One subprocess runs every check: a fresh
interpreter is the only way to see what an import pulls in.)"""

import json
import subprocess
import sys
import textwrap

import pytest

FRAMEWORKS = ("lightning", "pytorch_lightning", "transformers", "accelerate")

SCRIPT = f"""
import json, sys
import torch
import alsals, alsals.amp, alsals.integrations
alsals.ALSALS([torch.zeros(2, requires_grad=True)])
report = {{"imported": sorted(m for m in {FRAMEWORKS!r} if m in sys.modules)}}
for module in ("lightning", "transformers"):
    sys.modules[module] = None  # as if it were not installed
    try:
        __import__("alsals.integrations." + module)
    except ImportError as error:
        report[module] = str(error)
    else:
        report[module] = "imported"
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def report():
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)], capture_output=True, text=True, timeout=120,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_import_alsals_imports_no_framework(report):
    assert report["imported"] == []


@pytest.mark.parametrize("module", ["lightning", "transformers"])
def test_missing_framework_names_the_extra(report, module):
    message = report[module]
    assert f"pip install 'alsals[{module}]'" in message
    assert f"alsals.integrations.{module}" in message
