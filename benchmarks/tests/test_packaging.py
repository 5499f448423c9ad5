"""Two packages: ``alsals`` needs torch alone and ships no command; ``alsals_bench`` has no import
cycle and every module imports on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import tomllib

import alsals_bench

PACKAGE = Path(alsals_bench.__file__).resolve().parent
ROOT = PACKAGE.parents[2]
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")


def _imports(module: str) -> set[str]:
    """The sibling modules ``module`` imports anywhere (module level or inside functions)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1:  # from . import x / from .x import y
                if node.module:
                    out.add(node.module.split(".")[0])
                else:
                    out |= {a.name for a in node.names}
            elif node.module and node.module.startswith("alsals_bench."):
                out.add(node.module.split(".")[1])
            elif node.module == "alsals_bench":
                out |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("alsals_bench."):
                    out.add(a.name.split(".")[1])
    return {m for m in out if m in MODULES and m != module}


def test_the_import_graph_has_no_cycle():
    graph = {m: _imports(m) for m in MODULES}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        if state.get(m) == 1:
            raise AssertionError("import cycle: " + " -> ".join(path[path.index(m):] + [m]))
        if state.get(m) == 2:
            return
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            visit(n)
        path.pop()
        state[m] = 2

    for m in MODULES:
        visit(m)
    # the two cycles of the old benchmark are gone
    assert "cli" not in graph["overhead"] and "report" not in graph["plots"]
    assert "cli" not in set().union(*(graph[m] for m in MODULES if m not in ("cli", "__main__")))


@pytest.mark.parametrize("module", MODULES)
def test_every_module_imports_on_its_own(module):
    code = f"import importlib, sys; importlib.import_module('alsals_bench.{module}'); " \
           "assert 'matplotlib' not in sys.modules or {m!r} == 'plots'".replace("{m!r}", repr(module))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_importing_the_package_is_light():
    code = "import sys, alsals_bench; assert not {'torch', 'numpy', 'matplotlib'} & set(sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_alsals_imports_and_steps_without_numpy():
    """numpy made unimportable (as if not installed: its import raises ModuleNotFoundError, which is
    what torch checks for); ``import alsals`` and a few steps work."""
    code = textwrap.dedent("""
        import importlib.abc, importlib.machinery, sys, warnings

        class Refuse(importlib.abc.Loader):
            def create_module(self, spec):
                raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)

            def exec_module(self, module):
                raise ModuleNotFoundError("unreachable")

        class NoNumpy(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "numpy" or name.startswith("numpy."):
                    return importlib.machinery.ModuleSpec(name, Refuse())
                return None

        sys.meta_path.insert(0, NoNumpy())
        warnings.simplefilter("ignore")  # torch warns that it could not initialise NumPy
        import torch, alsals
        w = torch.nn.Parameter(torch.ones(3))
        opt = alsals.ALSALS([w])
        for _ in range(3):
            opt.step(lambda: (w ** 2).sum())
        assert "numpy" not in sys.modules
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def _toml(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def test_the_library_depends_on_torch_alone_and_ships_no_command():
    root = _toml(ROOT / "pyproject.toml")
    project = root["project"]
    assert project["dependencies"] == ["torch>=2.2"]
    assert "scripts" not in project and "gui-scripts" not in project
    assert "bench" not in project.get("optional-dependencies", {})
    assert "benchmarks/tests" in root["tool"]["pytest"]["ini_options"]["testpaths"]
    assert not (ROOT / "src" / "alsals" / "bench").exists()


def test_the_benchmark_package_has_its_command_and_dependencies():
    bench = _toml(ROOT / "benchmarks" / "pyproject.toml")["project"]
    assert bench["name"] == "alsals-bench"
    assert bench["scripts"] == {"alsals-bench": "alsals_bench.cli:main"}
    deps = " ".join(bench["dependencies"])
    for name in ("alsals", "numpy", "scipy", "matplotlib", "SaLSa-Optimizer", "schedulefree", "dog-optimizer"):
        assert name in deps


def test_the_dev_pins_cover_the_benchmarks_scientific_stack():
    pins = dict(line.split("==") for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    for name in ("torch", "numpy", "scipy", "scikit-learn", "matplotlib", "SaLSa-Optimizer"):
        assert name in pins, name


@pytest.mark.slow
def test_the_alsals_wheel_holds_the_library_only(tmp_path):
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, timeout=300, capture_output=True)
    wheel = next(tmp_path.glob("alsals-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        metadata = z.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert not any(n.endswith("entry_points.txt") for n in names)
    assert not any("bench" in n for n in names)
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "extra ==" not in r] == ["Requires-Dist: torch>=2.2"]
