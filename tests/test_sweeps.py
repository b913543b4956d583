"""Sweeps that survive: resume after a kill, failure isolation, integrity, Dask."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from mcbench.cli import main
from mcbench.methods.gan import GAN
from mcbench.plugin import registry
from mcbench.plugin.registry import MethodEntry, methods
from mcbench.run import store as res
from mcbench.run.runner import RunSpec, run, train
from mcbench.run.suite import load_suite, run_specs

SPEC = RunSpec("gan", "ring", 0, steps=20, eval_every=5, eval_samples=1000)


class Killed(BaseException):
    """Stands for SIGKILL in-process: not an Exception, so nothing in the runner
    catches it and the run stops where it is."""


def numbers(rows_or_dir) -> pd.DataFrame:
    """Metric rows without what legitimately differs between runs (clocks)."""
    if isinstance(rows_or_dir, Path):
        df = pd.read_csv(rows_or_dir / "metrics.csv")
    else:
        df = pd.DataFrame(rows_or_dir, columns=res.COLUMNS)
    df = df[df.metric != "step_time_ms"].drop(columns="wall_time")
    return df.reset_index(drop=True)


def kill_at(monkeypatch, cls, call: int) -> None:
    """Make `cls.step` raise Killed on its `call`-th call (counted over instances)."""
    original = cls.step
    count = {"n": 0}

    def step(self, real):
        count["n"] += 1
        if count["n"] == call:
            raise Killed
        return original(self, real)

    monkeypatch.setattr(cls, step.__name__, step)


def run_dir(out: Path, spec: RunSpec = SPEC) -> Path:
    return out / "runs" / spec.run_name()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("ref")
    run(SPEC, out)
    return numbers(run_dir(out))


@pytest.mark.parametrize("every", [None, 7])
def test_killed_run_resumes_to_the_same_numbers(tmp_path, monkeypatch, capsys, reference, every):
    kill_at(monkeypatch, GAN, 17)  # after checkpoints at 15 (every eval) or 14 (every 7)
    with pytest.raises(Killed):
        run(SPEC, tmp_path, checkpoint_every=every)
    partial = res.partial_dir(run_dir(tmp_path))
    assert (partial / res.CHECKPOINT).exists() and not run_dir(tmp_path).exists()
    assert main(["status", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert "1 interrupted" in shown and f"step 15/{SPEC.steps}" in shown
    assert f"resumes from step {15 if every is None else 14}" in shown
    monkeypatch.undo()
    cfg = run(SPEC, tmp_path, checkpoint_every=every)
    assert cfg["status"] == "ok" and cfg["resumed_from"] == [15 if every is None else 14]
    pd.testing.assert_frame_equal(numbers(run_dir(tmp_path)), reference)
    assert not partial.exists()  # the checkpoint went away with the staging folder


def _one_name_per_class() -> list[str]:
    first: dict[type, str] = {}
    for name, entry in sorted(methods().items()):
        first.setdefault(entry.cls, name)
    return sorted(first.values())


@pytest.mark.parametrize("name", _one_name_per_class())
def test_every_method_resumes_exactly(tmp_path, monkeypatch, name):
    """Nets, optimisers, RNG streams and a method's own counters all come back."""
    spec = RunSpec(name, "ring", 1, steps=4, eval_every=2, eval_samples=500)
    torch.manual_seed(0)
    whole, _, st = train(spec, torch.device("cpu"))
    assert st["status"] == "ok", st["reason"]
    kill_at(monkeypatch, registry.get_method(name).cls, 4)
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.raises(Killed):
        train(spec, torch.device("cpu"), checkpoint=ckpt)
    monkeypatch.undo()
    torch.manual_seed(123)  # the checkpoint, not luck, must restore the global stream
    resumed, _, st = train(spec, torch.device("cpu"), checkpoint=ckpt)
    assert st["resumed_from"] == [2]
    pd.testing.assert_frame_equal(numbers(resumed), numbers(whole))


class GlobalNoise(GAN):
    """A GAN that also draws from the global torch, numpy and Python streams."""

    name = "global-noise"

    def step(self, real):
        jitter = torch.randn(()) + float(np.random.randn()) + random.random()
        return super().step(real + 1e-2 * jitter)


def test_global_random_streams_are_restored(tmp_path, monkeypatch):
    monkeypatch.setitem(methods(), "global-noise", MethodEntry("global-noise", GlobalNoise))
    spec = RunSpec("global-noise", "ring", 0, steps=8, eval_every=4, eval_samples=500)
    whole, _, _ = train(spec, torch.device("cpu"))
    ckpt = tmp_path / "checkpoint.pt"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(Killed):
        kill_at(mp, GlobalNoise, 6)
        train(spec, torch.device("cpu"), checkpoint=ckpt)
    torch.manual_seed(1), np.random.seed(1), random.seed(1)  # what the checkpoint must undo
    resumed, _, st = train(spec, torch.device("cpu"), checkpoint=ckpt)
    assert st["resumed_from"] == [4]
    pd.testing.assert_frame_equal(numbers(resumed), numbers(whole))


@pytest.mark.slow  # two `mcbench` processes; most of its time is their imports
def test_sigkill_of_a_suite_then_rerun_gives_the_uninterrupted_numbers(tmp_path):
    suite = tmp_path / "two.toml"
    suite.write_text(
        'methods = ["gan"]\ndatasets = ["ring"]\nseeds = [0, 1]\n'
        "steps = 30\neval_every = 5\neval_samples = 500\n"
    )
    specs = load_suite(str(suite)).specs
    # The reference trains as the command does (its seeds as one replica group): replicas
    # equal sequential runs only to rounding, so a sequential reference would compare
    # rounding, not the resume.
    run_specs(specs, tmp_path / "ref", progress=False, replicas=None)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "mcbench.cli", "run", "--suite", str(suite), "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([*cmd, "--no-progress"], env=env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not list((out / "runs").glob(f".*.partial/{res.CHECKPOINT}")):
        assert proc.poll() is None and time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = list((out / "runs").glob(f".*.partial/{res.CHECKPOINT}"))
    assert left, "killed after the run finished: nothing left to resume"
    assert len(res.run_dirs(out)) < len(specs)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    resumed = [res.read_config(d).get("resumed_from") for d in res.run_dirs(out)]
    assert any(r and r[0] % 5 == 0 for r in resumed)  # continued from a checkpoint
    for spec in specs:
        pd.testing.assert_frame_equal(
            numbers(run_dir(out, spec)), numbers(run_dir(tmp_path / "ref", spec))
        )
    table = pd.read_csv(out / "results.csv")
    assert set(table["status"]) == {"ok"} and table["run"].nunique() == len(specs)


# -- failure isolation -------------------------------------------------------------


class NaNAt3(GAN):
    """A GAN whose discriminator loss turns NaN at its third step."""

    name = "nan-at-3"

    def __init__(self, problem, cfg) -> None:
        super().__init__(problem, cfg)
        self.calls = 0

    def step(self, real):
        self.calls += 1
        losses = super().step(real)
        if self.calls >= 3:
            losses["d"] = losses["d"] * float("nan")
        return losses


class Raises(GAN):
    name = "raises"

    def step(self, real):
        raise RuntimeError("a bug in the method")


class NaNSamples(GAN):
    """Finite losses, but a generator that outputs NaN when sampled."""

    name = "nan-samples"

    def sample(self, n, rng=None):
        return torch.full((n, 2), float("nan"))


@pytest.fixture
def broken_methods(monkeypatch):
    reg = methods()
    for cls in (NaNAt3, Raises, NaNSamples):
        monkeypatch.setitem(reg, cls.name, MethodEntry(cls.name, cls, {}, "tests"))


def test_failed_runs_are_recorded_and_the_suite_goes_on(tmp_path, capsys, broken_methods):
    argv = ["run", "-m", "nan-at-3", "-m", "raises", "-m", "nan-samples", "-m", "gan",
            "-d", "ring", "--steps", "10", "--eval-every", "5", "--eval-samples", "500",
            "--no-progress", "--jobs", "1", "--out", str(tmp_path)]  # fmt: skip
    assert main([*argv, "--verbose"]) == 1  # some runs failed: exit status 1
    report = capsys.readouterr()
    assert "1 ok, 3 failed" in report.err
    assert f"{RunSpec('gan', 'ring', 0, 10, 5, 500).run_name()} step 5/10 loss_d=" in report.err
    cfg = {res.read_config(d)["method"]: res.read_config(d) for d in res.run_dirs(tmp_path)}
    assert cfg["gan"]["status"] == "ok"
    assert cfg["nan-at-3"]["status"] == "failed" and cfg["nan-at-3"]["failed_step"] == 3
    assert "NaN" in cfg["nan-at-3"]["reason"]
    assert cfg["raises"]["failed_step"] == 1
    assert "RuntimeError: a bug in the method" in cfg["raises"]["reason"]
    assert cfg["nan-samples"]["failed_step"] == 5 and "samples" in cfg["nan-samples"]["reason"]
    table = pd.read_csv(tmp_path / "results.csv")
    status = table.groupby("method")["status"].first().to_dict()
    assert status == {"gan": "ok", "nan-at-3": "failed", "raises": "failed",
                      "nan-samples": "failed"}  # fmt: skip
    fail_rows = table[table.metric == "failed_at_step"].set_index("method")["value"]
    assert fail_rows.to_dict() == {"nan-at-3": 3.0, "raises": 1.0, "nan-samples": 5.0}
    assert "| raises |" in report.out  # counted in the report, not hidden

    # Re-running keeps failed runs; --retry-failed trains them again.
    assert main(argv) == 1  # failed runs kept: still not ok
    assert "0 ok, 0 failed, 4 finished earlier" in capsys.readouterr().err
    assert main([*argv, "--retry-failed"]) == 1
    assert "0 ok, 3 failed, 1 finished earlier" in capsys.readouterr().err


# -- integrity -----------------------------------------------------------------------


def test_corrupt_checkpoint_is_detected_and_the_run_restarts(tmp_path, monkeypatch, reference):
    kill_at(monkeypatch, GAN, 12)
    with pytest.raises(Killed):
        run(SPEC, tmp_path)
    monkeypatch.undo()
    ckpt = res.partial_dir(run_dir(tmp_path)) / res.CHECKPOINT
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="truncated"):
        res.load_checked(ckpt)
    flipped = bytearray(data)
    flipped[len(data) // 3] ^= 0xFF
    ckpt.write_bytes(bytes(flipped))
    with pytest.raises(ValueError, match="checksum"):
        res.load_checked(ckpt)
    cfg = run(SPEC, tmp_path)
    assert cfg["resumed_from"] == []  # started over rather than trust the bytes
    pd.testing.assert_frame_equal(numbers(run_dir(tmp_path)), reference)


@pytest.mark.parametrize("damage", ["metrics.csv", "generator.pt", "config.json"])
def test_damaged_finished_run_is_not_read_and_is_redone(tmp_path, capsys, reference, damage):
    run(SPEC, tmp_path)
    path = run_dir(tmp_path) / damage
    path.write_bytes(path.read_bytes()[:-40])
    assert res.verify_run(run_dir(tmp_path)) is None
    if damage == "metrics.csv":
        assert res.collect(tmp_path).empty  # never read as a valid result
    assert main(["status", str(tmp_path), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [d["run"] for d in shown["damaged"]] == [SPEC.run_name()]
    cfg = run(SPEC, tmp_path)
    assert not cfg.get("skipped") and cfg["complete"]
    pd.testing.assert_frame_equal(numbers(run_dir(tmp_path)), reference)
    assert run(SPEC, tmp_path)["skipped"]


def test_a_run_held_by_another_process_is_not_trained_twice(tmp_path):
    with res.run_lock(res.lock_path(run_dir(tmp_path))) as mine:
        assert mine
        out = run(SPEC, tmp_path)
    assert out["status"] == "busy" and not run_dir(tmp_path).exists()


def test_gpu_slots_give_concurrent_runs_different_devices(tmp_path, monkeypatch):
    from mcbench.run import suite

    monkeypatch.setattr(suite, "_device_slot_dir", lambda: tmp_path)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with suite.device_slot(None) as a, suite.device_slot(None) as b:
        assert {str(a), str(b)} == {"cuda:0", "cuda:1"}
        with suite.device_slot(None) as c:  # more runs than GPUs: they share
            assert c.type == "cuda"
    with suite.device_slot("cuda") as a:
        assert str(a) == "cuda:0"  # released when the run ended
    with suite.device_slot("cpu") as d:
        assert d == torch.device("cpu")


# -- Dask ----------------------------------------------------------------------------


@pytest.mark.slow  # starts 4 worker processes; most of its time is their imports
def test_local_dask_cluster_runs_the_smoke_suite(tmp_path, capsys):
    """Through a real scheduler and two worker processes; same numbers as in-process
    and as joblib processes."""
    distributed = pytest.importorskip("distributed")
    argv = ["run", "--suite", "smoke", "-m", "gan", "-m", "pacgan", "--steps", "10",
            "--eval-every", "5", "--eval-samples", "1000", "--no-progress"]  # fmt: skip
    assert main([*argv, "--out", str(tmp_path / "serial")]) == 0
    assert main([*argv, "--jobs", "2", "--out", str(tmp_path / "joblib")]) == 0
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        workers = set(client.run(os.getpid).values())
        out = tmp_path / "dask"
        assert main([*argv, "--scheduler", cluster.scheduler_address, "--out", str(out)]) == 0
    assert "| pacgan |" in capsys.readouterr().out
    ran_on = {res.read_config(d)["environment"]["pid"] for d in res.run_dirs(out)}
    assert ran_on <= workers and os.getpid() not in ran_on
    joblib_pids = {
        res.read_config(d)["environment"]["pid"] for d in res.run_dirs(tmp_path / "joblib")
    }
    assert os.getpid() not in joblib_pids
    for d in res.run_dirs(tmp_path / "serial"):
        pd.testing.assert_frame_equal(numbers(out / "runs" / d.name), numbers(d))
        pd.testing.assert_frame_equal(numbers(tmp_path / "joblib" / "runs" / d.name), numbers(d))


def test_unreachable_scheduler_is_one_line_error(tmp_path, capsys, monkeypatch):
    pytest.importorskip("distributed")
    from mcbench.run import suite

    monkeypatch.setattr(suite, "CONNECT_TIMEOUT", "1s")
    argv = ["run", "--suite", "smoke", "--scheduler", "tcp://127.0.0.1:9", "--out",
            str(tmp_path / "x")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in err
    assert len([line for line in err.splitlines() if "error" in line]) == 1
    assert not (tmp_path / "x").exists()  # before any work
