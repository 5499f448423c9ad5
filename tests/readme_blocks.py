"""Extract the python code blocks of README.md that follow a `<!-- readme-test: NAME -->` marker."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"<!-- readme-test: ([\w-]+) -->\s*\n```python\n(.*?)\n```", re.S)


def readme_blocks() -> dict:
    """``{name: code}`` for every marked block."""
    return {name: code for name, code in _BLOCK.findall(README.read_text(encoding="utf-8"))}
