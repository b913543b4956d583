"""`mcbench evaluate`: closed-form values on exact and collapsed samples, one-line errors."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mcbench.datasets import get_dataset


def mcbench(*args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("mcbench")
    return subprocess.run(
        [str(exe), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def test_exact_and_collapsed_samples(tmp_path):
    ds = get_dataset("ring")
    g = np.random.default_rng(0)
    n = 100_000
    exact = ds.centers[g.integers(8, size=n)] + ds.std * g.standard_normal((n, 2))
    one = ds.centers[5] + ds.std * g.standard_normal((n, 2))
    np.save(tmp_path / "exact.npy", exact)
    np.save(tmp_path / "one.npy", one.astype(np.float32))
    r = mcbench("evaluate", "ring", str(tmp_path / "exact.npy"), "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["high_quality_pct"] == pytest.approx(100 * (1 - math.exp(-4.5)), abs=0.2)
    assert m["modes_covered"] == 8 and m["intra_mode_kl"] < 0.01
    r = mcbench("evaluate", "ring", str(tmp_path / "one.npy"), "--json")
    m = json.loads(r.stdout)
    assert m["modes_covered"] == 1 and m["reverse_kl"] == pytest.approx(math.log(8))
    plain = mcbench("evaluate", "ring", str(tmp_path / "one.npy"))
    assert plain.returncode == 0 and "modes_covered" in plain.stdout


def test_both_mode_rules_are_reported(tmp_path):
    """Spread evenly at low quality: no mode by LBT's rule, every mode by VEEGAN/PacGAN's
    (first 2,500 samples); both printed, with their labels; NaN is null in --json."""
    x = np.random.default_rng(1).uniform(-3, 3, size=(5_000, 2))
    np.save(tmp_path / "spread.npy", x)
    m = json.loads(mcbench("evaluate", "ring", str(tmp_path / "spread.npy"), "--json").stdout)
    assert m["modes_covered"] == 0 and m["modes_covered_any"] == 8
    assert 0 < m["high_quality_pct_2500"] < 10 and m["reverse_kl_2500"] >= 0
    plain = mcbench("evaluate", "ring", str(tmp_path / "spread.npy")).stdout
    assert "modes (≥1 HQ, N=2,500)" in plain
    row = next(line.split() for line in plain.splitlines() if line.startswith("modes_covered "))
    assert row[:3] == ["modes_covered", "0", "modes"]
    np.save(tmp_path / "few.npy", x[:1000])
    few = json.loads(mcbench("evaluate", "ring", str(tmp_path / "few.npy"), "--json").stdout)
    assert few["modes_covered_any"] is None and few["modes_covered"] == 0


@pytest.mark.parametrize(
    "dataset, content, message",
    [
        ("ring", np.zeros((10, 3)), "shape"),
        ("ring", np.array([[0.0, np.nan]] * 4), "NaN"),
        ("rings", np.zeros((10, 2)), "unknown dataset 'rings'"),
        ("ring", b"not a numpy file", "is not a .npy file"),
        ("ring", None, "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, dataset, content, message):
    path = tmp_path / "s.npy"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        np.save(path, content)
    r = mcbench("evaluate", dataset, str(path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in r.stderr
