"""The TensorBoard live view: each run's recorded curves land in its folder's tb/ as it
trains, read back here with TensorBoard's own EventAccumulator; off by default, and a
one-line error naming the extra where TensorBoard is not installed."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
import torch

from mcbench.cli import main
from mcbench.errors import McbenchError
from mcbench.run.runner import RunSpec, run_group, train_group
from mcbench.run.tensorboard import TB_DIR, check_available

CPU = torch.device("cpu")


def specs(steps: int = 4, eval_every: int = 2) -> list[RunSpec]:
    return [RunSpec("gan", "ring", s, steps, eval_every, 100) for s in (0, 1)]


def scalars(folder) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of the event files in `folder`, as TensorBoard reads them;
    each step must appear once."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(folder))
    acc.Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        events = acc.Scalars(tag)
        out[tag] = {e.step: e.value for e in events}
        assert len(out[tag]) == len(events), f"{tag}: a step shows more than once"
    return out


def as_written(rows) -> dict[str, dict[int, float]]:
    """metric -> {step: value} of a run's rows, at TensorBoard's float32 precision."""
    out: dict[str, dict[int, float]] = {}
    for step, metric, value in rows:
        out.setdefault(metric, {})[int(step)] = float(np.float32(value))
    return out


def same(a: dict, b: dict) -> bool:
    """Equal, NaN equal to NaN (a metric undefined on few samples)."""
    return a.keys() == b.keys() and all(
        a[t].keys() == b[t].keys()
        and all(
            x == y or (np.isnan(x) and np.isnan(y))
            for x, y in zip(a[t].values(), b[t].values(), strict=True)
        )
        for t in a
    )


def test_each_runs_curves_land_in_its_folder_and_read_back_equal(tmp_path):
    pytest.importorskip("tensorboard")
    group = specs()
    configs = run_group(group, tmp_path, CPU, tensorboard=True)
    assert [c["status"] for c in configs] == ["ok", "ok"] and configs[0]["replicas"] == 2
    for s in group:
        folder = tmp_path / "runs" / s.run_name()
        metrics = pd.read_csv(folder / "metrics.csv")
        want = as_written(metrics[["step", "metric", "value"]].itertuples(index=False))
        got = scalars(folder / TB_DIR)
        assert same(got, want)  # every curve, step and value of metrics.csv, nothing else
        assert set(got["loss_d"]) == {2, 4}
    assert configs[0]["tensorboard"] == TB_DIR


def test_a_resumed_run_shows_each_step_once(tmp_path):
    pytest.importorskip("tensorboard")
    group, ckpt = specs(eval_every=1), tmp_path / "checkpoint.pt"
    folders = [tmp_path / "a", tmp_path / "b"]
    train_group(group, CPU, checkpoint=ckpt, checkpoint_every=2, tensorboard=folders)
    # the checkpoint of step 2 is still there: a second attempt resumes from it and
    # writes steps 3 and 4 again, which must replace the first attempt's
    again, _ = train_group(group, CPU, checkpoint=ckpt, tensorboard=folders)
    assert again[0][1]["resumed_from"] == [2]
    for r, folder in enumerate(folders):
        rows = [(row["step"], row["metric"], row["value"]) for row in again[r][0]]
        assert same(scalars(folder), as_written(rows))
        assert len(list(folder.glob("events.out.tfevents.*"))) == 2


def test_it_is_off_by_default_and_refused_in_one_line_without_tensorboard(
    tmp_path, monkeypatch, capsys
):
    group = specs(steps=2)[:1]
    run_group(group, tmp_path, CPU)
    assert not (tmp_path / "runs" / group[0].run_name() / TB_DIR).exists()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    with pytest.raises(McbenchError, match=r"pip install 'mcbench\[tensorboard\]'"):
        check_available()
    argv = ["run", "-m", "gan", "-d", "ring", "--steps", "2", "--out", str(tmp_path / "x")]
    assert main([*argv, "--no-progress", "--tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "mcbench[tensorboard]" in err
    assert not (tmp_path / "x" / "runs").exists()  # before any work
