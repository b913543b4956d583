"""Methods are found by name from files in methods/ and from entry points."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mcbench.errors import McbenchError
from mcbench.plugin import registry
from mcbench.plugin.method import Method

ROOT = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- add-method-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README lost its Add-a-method example"
    return m.group(1)


def mcbench(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mcbench")
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=300,
    )


@pytest.fixture
def fresh_registry():
    registry.methods.cache_clear()
    yield
    registry.methods.cache_clear()


def test_readme_method_file_shows_up_and_runs_in_a_suite(tmp_path):
    """Follow README's "Add a method": one new file in methods/, no other edit."""
    path = ROOT / "methods" / f"readme_example_{os.getpid()}.py"
    path.write_text(readme_example())
    try:
        listed = mcbench("list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert "lsgan" in json.loads(listed.stdout)["methods"]
        out = tmp_path / "res"
        ran = mcbench(
            "run", "--suite", "smoke", "--method", "lsgan", "--no-progress", "--out", str(out)
        )
        assert ran.returncode == 0, ran.stderr
        assert "| lsgan |" in ran.stdout
        cfg = json.loads(next((out / "runs").glob("lsgan-*/config.json")).read_text())
        assert cfg["status"] == "ok"
    finally:
        path.unlink()


def test_entry_point_plugin_is_found(tmp_path, monkeypatch, fresh_registry):
    pkg = tmp_path / "extplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent("""
        from mcbench.plugin.method import Method

        class External(Method):
            name = "external-gan"
    """)
    )
    dist = tmp_path / "extplug-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: extplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mcbench.methods]\nexternal-gan = extplug:External\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = registry.get_method("external-gan")
    assert issubclass(entry.cls, Method) and "entry point" in entry.origin


def test_selectors_and_unknown_names(fresh_registry):
    assert registry.parse_selector("pacgan[m=3, preset=x]") == ("pacgan", {"m": "3", "preset": "x"})
    with pytest.raises(McbenchError, match=r"unknown method 'nope'; choices: .*gan"):
        registry.get_method("nope")
    with pytest.raises(McbenchError, match="malformed"):
        registry.parse_selector("gan[m]")
    with pytest.raises(McbenchError, match="no hyperparameter 'q'"):
        registry.resolve("gan[q=1]")
    with pytest.raises(McbenchError, match="d_steps must be > 0"):
        registry.resolve("gan[d_steps=0]")
    with pytest.raises(McbenchError, match="not a valid int"):
        registry.resolve("gan[d_steps=two]")
    _, cfg = registry.resolve("gan[d_steps=3]")
    assert cfg.d_steps == 3


def test_all_means_one_name_per_distinct_configuration():
    from mcbench.run.suite import load_suite

    names = {s.method for s in load_suite("smoke").specs}
    assert "pacgan2" in names and "pacgan" not in names  # pacgan's default is m=2
    assert {"pacgan3", "pacgan4", "gan"} <= names
    assert names == set(registry.distinct_methods())
