"""The README's mixed-precision and framework examples run as written (CPU, tiny sizes).

Each marked block runs in a fresh interpreter, in a temporary working directory (the Trainers write
their logs there). The two Lightning blocks share one interpreter (each in its own namespace) to pay
Lightning's import once.
"""

import os
import subprocess
import sys
import textwrap

import pytest

from readme_blocks import readme_blocks

EXPECTED = {
    "frameworks-amp-bf16": (),
    "frameworks-amp-fp16": (),
    "frameworks-lightning-automatic": ("lightning",),
    "frameworks-lightning-manual": ("lightning",),
    "frameworks-hf-trainer": ("transformers", "accelerate"),
    "frameworks-accelerate": ("accelerate",),
}
GROUPS = {
    "amp-bf16": ["frameworks-amp-bf16"],
    "amp-fp16": ["frameworks-amp-fp16"],
    "lightning": ["frameworks-lightning-automatic", "frameworks-lightning-manual"],
    "hf-trainer": ["frameworks-hf-trainer"],
    "accelerate": ["frameworks-accelerate"],
}

RUNNER = """
import runpy, sys
for path in sys.argv[1:]:
    runpy.run_path(path, run_name="__main__")
"""


def test_readme_has_the_framework_examples():
    assert set(EXPECTED) <= set(readme_blocks())


def _param(group, names):
    needs = sorted({module for name in names for module in EXPECTED[name]})
    marks = [pytest.mark.integration] if needs else []
    return pytest.param(group, names, needs, marks=marks, id=group)


@pytest.mark.parametrize("group, names, needs", [_param(g, n) for g, n in GROUPS.items()])
def test_readme_framework_example_runs(group, names, needs, tmp_path):
    for module in needs:
        pytest.importorskip(module)
    blocks = readme_blocks()
    paths = []
    for name in names:
        path = tmp_path / f"{name}.py"
        path.write_text(blocks[name] + "\n", encoding="utf-8")
        paths.append(str(path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(RUNNER), *paths],
        capture_output=True, text=True, timeout=180, cwd=tmp_path, env=env,
    )
    assert result.returncode == 0, result.stderr[-4000:]
