"""The side-by-side timing against the LBT authors' code: its arithmetic, and its refusals
when their checkout or a TensorFlow Python is missing (the comparison itself needs both)."""

from __future__ import annotations

import sys

import authors_lbt
import pytest


def test_spread_is_the_largest_interval_distance_from_their_median():
    per_update = [10.0] * 20 + [12.0] * 20 + [11.0] * 20 + [10.0] * 20 + [9.0] * 20
    s = authors_lbt.spread(per_update, interval=20)
    assert s["intervals_ms"] == [10.0, 12.0, 11.0, 10.0, 9.0]
    assert s["median_ms"] == 10.0
    assert s["spread"] == pytest.approx(0.2)  # the 12 ms block, 2 ms from the median 10


def test_their_times_are_read_from_the_last_timing_line():
    out = "Iter 0: ...\nAUTHORS_MS [1.0, 2.0]\nnoise\nAUTHORS_MS [3.5, 4.5]\n"
    assert authors_lbt.parse_authors(out) == [3.5, 4.5]
    with pytest.raises(ValueError):
        authors_lbt.parse_authors("Traceback ...\n")


def test_refuses_in_one_line_without_their_checkout(tmp_path, capsys):
    args = ["--authors-repo", str(tmp_path), "--tf-python", sys.executable, "--out", str(tmp_path)]
    assert authors_lbt.main(args) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "no LBT_toy.py" in out[0]


def test_refuses_in_one_line_without_a_tensorflow_python(tmp_path, capsys):
    (tmp_path / "LBT_toy.py").write_text("")
    probe = tmp_path / "python"
    probe.write_text("#!/bin/sh\necho 'ModuleNotFoundError: no tensorflow' >&2\nexit 1\n")
    probe.chmod(0o755)
    args = ["--authors-repo", str(tmp_path), "--tf-python", str(probe), "--out", str(tmp_path)]
    assert authors_lbt.main(args) == 2
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "lacks what their script needs" in out[0]
    args[3] = str(tmp_path / "missing-python")
    assert authors_lbt.main(args) == 2
    assert "cannot run --tf-python" in capsys.readouterr().out
    assert not (tmp_path / "authors_lbt.md").exists()


def test_our_worker_times_the_harness_update():
    """Our side runs in its own pinned process through the harness's Stepper."""
    ms = authors_lbt.run_ours("lbt[preset=authors-code]", 2, 0, None)
    assert len(ms) == 2 and all(x > 0 for x in ms)
