"""The layout keeps its promises: no import cycles, and nothing but the harness installed.

Imports are read from the source with `ast`, at every level (a function-level import
counts as much as a top-level one: hiding a cycle inside a function still makes one).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder of each installed package (pyproject's package-dir).
PACKAGES = {
    "mcbench": ROOT / "benchmarks" / "mcbench",
    "mcbench.methods": ROOT / "methods",
    "mcbench.metrics": ROOT / "metrics",
    "mcbench.datasets": ROOT / "datasets",
}


def modules() -> dict[str, Path]:
    """Every installed module by dotted name."""
    found: dict[str, Path] = {}
    for pkg, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([pkg, *parts])] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The installed modules that `path` imports, at any level of the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
            # `from pkg import submodule` imports the submodule; `from mod import name`
            # only the module
            names = [n for n in names[:-1] if n in known] or [node.module]
        else:
            continue
        out.update(n for n in names if n in known)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    mods = modules()
    assert "mcbench.run.runner" in mods and "mcbench.methods.gan" in mods
    graph = {m: imports_of(p, set(mods)) - {m} for m, p in mods.items()}
    assert cycles(graph) == []


@pytest.mark.slow
def test_wheel_holds_the_harness_and_no_development_module(tmp_path):
    """Built as users install it: no tests, no benchmarks/tools, no pytest-benchmark files."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        check=True,
        capture_output=True,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )  # fmt: skip
    (wheel,) = tmp_path.glob("mcbench-*.whl")
    names = [n for n in zipfile.ZipFile(wheel).namelist() if not n.split("/")[0].endswith("-info")]
    assert all(n.startswith("mcbench/") for n in names), names
    stems = {Path(n).stem for n in names}
    assert not {s for s in stems if s.startswith(("test_", "conftest"))}
    tools = {"perf", "replica_check", "check_report_html", "reproduce", "gpu_check", "authors_lbt"}
    # mcbench/perf.py is only the `python -m mcbench.perf` launcher of benchmarks/tools/perf.py
    assert not stems & tools - {"perf"}
    assert [n for n in names if Path(n).stem == "perf"] in ([], ["mcbench/perf.py"])
    if "mcbench/perf.py" in names:
        launcher = zipfile.ZipFile(wheel).read("mcbench/perf.py").decode()
        assert "def matmul_peak" not in launcher and '"tools" / "perf.py"' in launcher
    for needed in (
        "mcbench/run/runner.py",
        "mcbench/methods/gan.py",
        "mcbench/run/suites/quick.toml",
    ):
        assert needed in names
    assert "mcbench/report/published.csv" in names
