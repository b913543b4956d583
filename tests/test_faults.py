"""Nothing silently wrong: kills, damaged or edited results, changed code, failed runs,
unwritable places, orphaned workers and concurrent commands (faults and failed runs)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from mcbench.cli import main
from mcbench.methods.gan import GAN
from mcbench.plugin.registry import MethodEntry, methods
from mcbench.report.build import load_results
from mcbench.run import store as res
from mcbench.run.runner import RunSpec, finished, stale
from mcbench.run.status import format_status, status
from mcbench.run.suite import run_specs

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
PAIR = [RunSpec("gan", "ring", s, steps=30, eval_every=5, eval_samples=500) for s in (0, 1)]


def cli(*argv: str, env: dict | None = None, **kw) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "mcbench.cli", *argv]
    return subprocess.run(cmd, env=env or ENV, capture_output=True, text=True, **kw)


def numbers(run_dir: Path) -> pd.DataFrame:
    """Metric rows without clocks (what legitimately differs between two runs)."""
    df = pd.read_csv(run_dir / "metrics.csv")
    return df[df.metric != "step_time_ms"].drop(columns="wall_time").reset_index(drop=True)


def folder(out: Path, spec: RunSpec) -> Path:
    return out / "runs" / spec.run_name()


def suite_file(tmp_path: Path, steps: int = 30, method: str = "gan") -> Path:
    path = tmp_path / "pair.toml"
    path.write_text(
        f'methods = ["{method}"]\ndatasets = ["ring"]\nseeds = [0, 1]\n'
        f"steps = {steps}\neval_every = 5\neval_samples = 500\n"
    )
    return path


@pytest.fixture(scope="module")
def pair_reference(tmp_path_factory) -> Path:
    """Seeds 0 and 1 trained together as one replica group, uninterrupted."""
    out = tmp_path_factory.mktemp("pair")
    run_specs(PAIR, out, progress=False, replicas=None)
    return out


def assert_same_numbers(out: Path, ref: Path) -> None:
    for spec in PAIR:
        pd.testing.assert_frame_equal(numbers(folder(out, spec)), numbers(folder(ref, spec)))


# -- 1. a kill between the publishing of two seeds of one group ----------------------


def test_kill_between_two_publishes_resumes_the_whole_group(tmp_path, pair_reference):
    out = tmp_path / "out"
    argv = ["run", "--suite", str(suite_file(tmp_path)), "--out", str(out), "--no-progress"]
    kill = {**ENV, "MCBENCH_TEST_KILL_AFTER_PUBLISH": PAIR[1].run_name()}
    killed = cli(*argv, env=kill)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert res.verify_run(folder(out, PAIR[1])) is not None  # published first
    assert not folder(out, PAIR[0]).exists()  # killed before this one
    st = status(out)
    (entry,) = st["in_progress"]
    assert entry["run"] == PAIR[0].run_name() and entry["checkpoint"]
    assert "resumes from step 25" in format_status(st)

    again = cli(*argv)
    assert again.returncode == 0, again.stderr
    assert "ignoring checkpoint" not in again.stderr
    assert "1 ok, 0 failed, 1 finished earlier" in again.stderr
    assert res.read_config(folder(out, PAIR[0]))["resumed_from"] == [25]
    assert_same_numbers(out, pair_reference)
    table = pd.read_csv(out / "results.csv")
    assert table["run"].nunique() == 2 and set(table["status"]) == {"ok"}
    assert not res.partial_dirs(out)


@pytest.mark.parametrize("member", [0, 1])
def test_damaged_seed_is_repaired_inside_its_group(tmp_path, pair_reference, member):
    out = tmp_path / "out"
    shutil.copytree(pair_reference, out)
    other = folder(out, PAIR[1 - member]) / "config.json"
    before = other.read_bytes()
    gen = folder(out, PAIR[member]) / "generator.pt"
    gen.write_bytes(gen.read_bytes()[:-40])
    outcomes = run_specs(PAIR, out, progress=False, replicas=None)
    assert sorted(bool(o.get("skipped")) for o in outcomes) == [False, True]
    assert other.read_bytes() == before  # the intact member is not published again
    assert_same_numbers(out, pair_reference)
    got = torch.load(gen, weights_only=True)
    want = torch.load(folder(pair_reference, PAIR[member]) / "generator.pt", weights_only=True)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not res.partial_dirs(out)


def test_every_member_of_an_interrupted_group_shows_the_groups_checkpoint(tmp_path):
    class Killed(BaseException):
        pass

    calls = {"n": 0}
    original = GAN.step

    def step(self, real):
        calls["n"] += 1
        if calls["n"] == 17:
            raise Killed
        return original(self, real)

    GAN.step = step
    try:
        with pytest.raises(Killed):
            run_specs(PAIR, tmp_path, progress=False, replicas=None)
    finally:
        GAN.step = original
    entries = status(tmp_path)["in_progress"]
    assert len(entries) == 2
    assert all(e["checkpoint"] and e["checkpoint_step"] == 15 for e in entries)
    assert format_status(status(tmp_path)).count("resumes from step 15") == 2


# -- 2. edited or damaged results ----------------------------------------------------


EDITS = {
    "status": lambda c: c.update(status="failed"),
    "method": lambda c: c.update(method="pacgan"),
    "seed": lambda c: c.update(seed=7),
    "budget": lambda c: c["budget"].update(steps=10_000),
    "hyperparameters": lambda c: c["hyperparameters"].update(lr_g=1.0),
    "complete": lambda c: c.pop("complete"),
}


@pytest.fixture(scope="module")
def one_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    run_specs([PAIR[0]], out, progress=False)
    return out


@pytest.mark.parametrize("edit", [*EDITS, "generator.pt", "metrics.csv"])
def test_edited_results_are_damaged_everywhere(tmp_path, one_run, capsys, edit):
    out = tmp_path / "out"
    shutil.copytree(one_run, out)
    run_dir = folder(out, PAIR[0])
    if edit in EDITS:
        cfg = json.loads((run_dir / "config.json").read_text())
        EDITS[edit](cfg)
        (run_dir / "config.json").write_text(json.dumps(cfg, indent=2))
        names = "config.json"
    else:
        path = run_dir / edit
        path.write_bytes(path.read_bytes()[:-40])
        names = edit
    cfg, why = res.check_run(run_dir)
    assert cfg is None and names in why
    assert finished(run_dir) is None
    # status: damaged, naming the file
    assert main(["status", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["ok"] == [] and [d["run"] for d in shown["damaged"]] == [run_dir.name]
    assert names in shown["damaged"][0]["reason"]
    # report: never a valid run; its note says why
    (out / "results.csv").unlink()
    with pytest.raises(Exception, match="no finished runs"):
        load_results([out])
    assert res.collect(out).empty
    # run: trained again, with the numbers it would have had
    outcomes = run_specs([PAIR[0]], out, progress=False)
    assert not outcomes[0].get("skipped") and outcomes[0]["status"] == "ok"
    said = capsys.readouterr().err
    assert f"{run_dir.name} is trained again: " in said and names in said
    pd.testing.assert_frame_equal(numbers(run_dir), numbers(folder(one_run, PAIR[0])))
    assert res.check_run(run_dir) == (res.read_config(run_dir), None)


def test_report_lists_a_damaged_run_with_its_reason(tmp_path, pair_reference):
    out = tmp_path / "out"
    shutil.copytree(pair_reference, out)
    cfg_path = folder(out, PAIR[1]) / "config.json"
    cfg_path.write_text(cfg_path.read_text().replace('"seed": 1', '"seed": 5'))
    results = load_results([out])
    assert list(results.runs["run"]) == [PAIR[0].run_name()]
    (note,) = [n for n in results.notes if PAIR[1].run_name() in n]
    assert "damaged" in note and "config.json" in note


def test_reference_runs_stay_readable_and_intact():
    """Committed reference runs pass their checksums and load, whether they record the
    code that made them (stale once that code changes: kept, not retrained by a report)
    or predate the record (code unknown)."""
    ref = REPO / "results" / "reference"
    dirs = [
        d
        for sub in ("quick", "quick_compiled", "single_seed", "pacgan_table1_12k")
        for d in res.run_dirs(ref / sub)
    ]
    if not dirs:
        pytest.skip("no committed reference runs")
    for d in dirs:
        cfg, why = res.check_run(d)
        assert why is None, (d.name, why)
        if "code" not in cfg:
            assert stale(cfg) is None  # code unknown: never called stale
    results = load_results([ref / "quick"])
    assert not [n for n in results.notes if "damaged" in n]
    assert len(results.runs) == len(res.run_dirs(ref / "quick"))


# -- 3. changed code -----------------------------------------------------------------


PLUGIN = """
from mcbench.methods.gan import GAN


class Tweak(GAN):
    name = "tweak-gan"
    SCALE = {scale}

    def step(self, real):
        return super().step(real * self.SCALE)
"""


@pytest.mark.parametrize("folder", ["site", "lib/python3/site-packages"])
def test_a_run_whose_method_code_changed_is_trained_again(tmp_path, folder):
    """A plugin on a path of its own, or installed into site-packages like any package
    (where mcbench itself lives after a non-editable install): its code is hashed."""
    site = tmp_path / folder
    (site / "tweak_plugin-0.1.dist-info").mkdir(parents=True)
    (site / "tweak_plugin-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tweak-plugin\nVersion: 0.1\n"
    )
    (site / "tweak_plugin-0.1.dist-info" / "entry_points.txt").write_text(
        "[mcbench.methods]\ntweak = tweak_plugin\n"
    )
    source = site / "tweak_plugin.py"
    source.write_text(PLUGIN.format(scale=1.0))
    env = {**ENV, "PYTHONPATH": str(site)}
    out = tmp_path / "out"
    argv = ["run", "-m", "tweak-gan", "-d", "ring", "--steps", "10", "--eval-every", "5",
            "--eval-samples", "300", "--no-progress", "--out", str(out)]  # fmt: skip
    first = cli(*argv, env=env)
    assert first.returncode == 0 and "1 ok, 0 failed, 0 finished earlier" in first.stderr
    (run_dir,) = res.run_dirs(out)
    old_numbers, old_code = numbers(run_dir), res.read_config(run_dir)["code"]
    same = cli(*argv, env=env)
    assert "0 ok, 0 failed, 1 finished earlier" in same.stderr

    source.write_text(PLUGIN.format(scale=0.5))  # the method's code changes
    edited = cli(*argv, env=env)
    assert edited.returncode == 0, edited.stderr
    assert "1 ok, 0 failed, 0 finished earlier" in edited.stderr
    assert "is trained again: the method's source code changed" in edited.stderr
    assert res.run_dirs(out) == [run_dir]  # same configuration, same folder, replaced
    new_cfg = res.read_config(run_dir)
    assert new_cfg["code"]["method_source"] != old_code["method_source"]
    assert not numbers(run_dir).equals(old_numbers)  # the new code's numbers
    again = cli(*argv, env=env)
    assert "0 ok, 0 failed, 1 finished earlier" in again.stderr


# -- 4. failed runs ------------------------------------------------------------------


class Raises(GAN):
    name = "raises-now"

    def step(self, real):
        raise RuntimeError("a bug in the method")


class NaNLoss(GAN):
    name = "nan-loss"

    def step(self, real):
        losses = super().step(real)
        losses["d"] = losses["d"] * float("nan")
        return losses


@pytest.fixture
def broken(monkeypatch):
    reg = methods()
    for cls in (Raises, NaNLoss):
        monkeypatch.setitem(reg, cls.name, MethodEntry(cls.name, cls, {}, "tests"))


def test_a_suite_whose_runs_all_fail_exits_1_with_reasons(tmp_path, capsys, broken):
    argv = ["run", "-m", "raises-now", "-m", "nan-loss", "-d", "ring", "--steps", "10",
            "--eval-every", "5", "--eval-samples", "300", "--no-progress", "--jobs", "1",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "0 ok, 2 failed" in err
    assert "failed: raises-now-ring-s0-" in err and "RuntimeError: a bug in the method" in err
    assert "failed: nan-loss-ring-s0-" in err and "NaN" in err
    assert "Traceback" not in err
    assert main([*argv, "--verbose"]) == 1  # kept from before: still not ok
    err = capsys.readouterr().err
    assert "failed (earlier): raises-now" in err
    assert "Traceback (most recent call last)" in err and 'raise RuntimeError("a bug' in err
    st = status(tmp_path)
    reasons = {e["run"].split("-ring")[0]: e["reason"] for e in st["failed"]}
    assert "a bug in the method" in reasons["raises-now"] and "NaN" in reasons["nan-loss"]
    assert "a bug in the method" in format_status(st)


# -- 5. unwritable places ------------------------------------------------------------


def leftovers(out: Path) -> list[Path]:
    return [p for p in out.rglob(".*") if p.name.endswith(".tmp") or ".old." in p.name]


def test_results_csv_that_cannot_be_replaced_fails_up_front(tmp_path, capsys):
    (tmp_path / "results.csv").mkdir()
    argv = ["run", "-m", "gan", "-d", "ring", "--steps", "10", "--eval-every", "5",
            "--eval-samples", "300", "--no-progress", "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mcbench: error:") and "results.csv" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert res.run_dirs(tmp_path) == [] and leftovers(tmp_path) == []


def test_results_csv_unwritable_after_training_is_one_line_and_runs_are_safe(
    tmp_path, capsys, monkeypatch
):
    real = os.replace
    calls = {"n": 0}

    def replace(src, dst, *a, **kw):
        if Path(dst).name == "results.csv":
            calls["n"] += 1
            if calls["n"] > 1:  # writable when checked, immutable once trained
                raise PermissionError(1, "Operation not permitted", str(dst))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    argv = ["run", "-m", "gan", "-d", "ring", "--steps", "10", "--eval-every", "5",
            "--eval-samples", "300", "--no-progress", "--jobs", "1",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mcbench: error:") and "results.csv" in err[-1]
    assert "runs are saved" in err[-1]
    (run_dir,) = res.run_dirs(tmp_path)
    assert res.verify_run(run_dir) is not None
    assert leftovers(tmp_path) == []


def test_publish_that_fails_puts_the_old_folder_back(tmp_path, monkeypatch):
    final, staging = tmp_path / "run", tmp_path / ".run.partial"
    final.mkdir()
    (final / "old").write_text("old")
    staging.mkdir()
    real = os.replace

    def replace(src, dst, *a, **kw):
        if Path(src) == staging:
            raise PermissionError(1, "Operation not permitted", str(dst))
        return real(src, dst, *a, **kw)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(PermissionError):
        res.publish(staging, final)
    assert (final / "old").read_text() == "old" and leftovers(tmp_path) == []


def unwritable(path: Path) -> None:
    """Skip unless `path` cannot be created (chmod does not stop root: /sys does)."""
    try:
        path.mkdir()
    except OSError:
        return
    path.rmdir()  # pragma: no cover - a writable /sys: nothing to test here
    pytest.skip(f"{path.parent} is writable here")


def test_unwritable_out_folder_is_one_line_before_any_work():
    out = Path("/sys/mcbench-faults-test")
    unwritable(out)
    got = cli("run", "-m", "gan", "-d", "ring", "--steps", "10", "--no-progress",
              "--out", str(out))  # fmt: skip
    assert got.returncode == 2
    lines = got.stderr.strip().splitlines()
    assert lines[-1].startswith("mcbench: error: cannot write in /sys/mcbench-faults-test")
    assert "Traceback" not in got.stderr


# -- 6. orphans ----------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state


def test_killing_the_parent_ends_its_joblib_workers(tmp_path):
    suite = suite_file(tmp_path, steps=4000)
    out = tmp_path / "out"
    argv = ["run", "--suite", str(suite), "--out", str(out), "--jobs", "2", "--replicas", "1",
            "--no-progress", "--checkpoint-every", "5"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcbench.cli", *argv], env=ENV, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 180
    pids: set[int] = set()
    while len(pids) < 2:
        assert proc.poll() is None and time.time() < deadline, "workers did not start"
        for p in out.glob(f"runs/.*.partial/{res.PROGRESS}"):
            with contextlib.suppress(OSError, ValueError):
                pids.add(json.loads(p.read_text())["pid"])
        time.sleep(0.05)
    assert proc.pid not in pids
    proc.send_signal(signal.SIGKILL)  # the parent only
    proc.wait()
    deadline = time.time() + 20
    while any(_alive(p) for p in pids):
        assert time.time() < deadline, "joblib workers outlived the command"
        time.sleep(0.1)
    st = status(out)
    assert st["ok"] == [] and not any(e["running"] for e in st["in_progress"])


def test_results_csv_is_rebuilt_when_run_starts(tmp_path, one_run):
    out = tmp_path / "out"
    shutil.copytree(one_run, out)
    (out / "results.csv").unlink()  # e.g. killed between publishing and the table
    outcomes = run_specs([PAIR[0]], out, progress=False)
    assert outcomes[0]["skipped"]
    assert pd.read_csv(out / "results.csv")["run"].unique().tolist() == [PAIR[0].run_name()]


# -- 7. concurrent commands ----------------------------------------------------------


def test_a_second_command_says_the_run_is_another_processs(tmp_path):
    spec = RunSpec("gan", "ring", 0, steps=10, eval_every=5, eval_samples=300)
    with res.run_lock(res.lock_path(folder(tmp_path, spec))) as mine:
        assert mine
        got = cli("run", "-m", "gan", "-d", "ring", "--steps", "10", "--eval-every", "5",
                  "--eval-samples", "300", "--no-progress", "--out", str(tmp_path))  # fmt: skip
    assert got.returncode == 1, got.stderr
    assert "0 ok, 0 failed, 0 finished earlier, 1 being run by another process" in got.stderr
    assert f"busy: {spec.run_name()}: another process" in got.stderr
    assert not folder(tmp_path, spec).exists()


def test_report_into_an_unwritable_folder_is_one_line(one_run, capsys):
    out = Path("/sys/mcbench-faults-report")
    unwritable(out)
    code = main(["report", str(one_run), "--out", str(out), "--no-figures"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mcbench: error:") and "mcbench-faults-report" in err[-1]
