"""Methods are found by name from files in methods/ and from entry points (installed
plugin packages)."""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
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


def mcbench(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mcbench")
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
        timeout=300,
    )


@pytest.fixture
def fresh_registry():
    registry.methods.cache_clear()
    yield
    registry.methods.cache_clear()


def install_as_distribution(site: Path, code: str) -> str:
    """Write `code` as module mypkg.lsgan of a tiny installed distribution under `site`
    (a dist-info with an entry point in group mcbench.methods naming the module), as
    `pip install` of a plugin package leaves it; returns the method's name."""
    (site / "mypkg").mkdir(parents=True)
    (site / "mypkg" / "__init__.py").write_text("")
    (site / "mypkg" / "lsgan.py").write_text(code)
    info = site / "mypkg-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mypkg\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(f"[{registry.ENTRY_POINT_GROUP}]\nlsgan = mypkg.lsgan\n")
    names = re.findall(r"^\s+name\s*=\s*[\"']([^\"']+)[\"']", code, re.M)
    assert len(names) == 1, f"README's example should define one method name, found {names}"
    return names[0]


def test_readme_method_example_shows_up_and_trains(tmp_path):
    """README's "Add a method" code, installed as a plugin package (an entry point),
    never written into the source tree: `mcbench list` shows it and `mcbench run` trains
    it, also from a non-editable install."""
    site = tmp_path / "site"
    name = install_as_distribution(site, readme_example())
    path = os.pathsep.join([str(site), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {"PYTHONPATH": path}
    listed = mcbench("list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    entry = json.loads(listed.stdout)["methods"].get(name)
    assert entry and "entry point" in entry["origin"] and "mypkg" in entry["origin"], entry
    out = tmp_path / "res"
    budget = ["--steps", "20", "--eval-every", "10", "--eval-samples", "1000", "--seeds", "0"]
    ran = mcbench(
        "run", "-m", name, "-d", "ring", *budget, "--no-progress", "--out", str(out), env=env
    )
    assert ran.returncode == 0, ran.stderr
    assert f"| {name} |" in ran.stdout
    (run_dir,) = (out / "runs").glob(f"{name}-ring-s0-*/")
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["status"] == "ok" and cfg["method"] == name
    steps = pd.read_csv(run_dir / "metrics.csv").query("metric == 'modes_covered'")["step"]
    assert sorted(steps) == [10, 20]


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
