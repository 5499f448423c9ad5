"""Packaging: one version, typed, the public names."""

import importlib.metadata
from pathlib import Path

import alsals


def test_the_version_is_single_sourced():
    assert alsals.__version__ == importlib.metadata.version("alsals")
    changelog = (Path(__file__).resolve().parents[1] / "CHANGELOG.md").read_text(encoding="utf-8")
    assert alsals.__version__.split(".dev")[0] in changelog


def test_the_package_is_typed_and_exports_its_names():
    assert (Path(alsals.__file__).parent / "py.typed").exists()
    for name in alsals.__all__:
        assert getattr(alsals, name) is not None
