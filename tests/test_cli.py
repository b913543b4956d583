"""Bad input: one line naming the problem, exit status 2, and no work done."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mcbench.cli import main
from mcbench.datasets import DATASETS
from mcbench.errors import McbenchError

BASE = ["run", "-m", "gan", "-d", "ring", "--steps", "20", "--eval-every", "10"]
SUITE = 'methods = ["gan"]\ndatasets = ["ring"]\nseeds = [0]\n'
BUDGET = "steps = 20\neval_every = 10\neval_samples = 1000\n"


def mcbench_command() -> list[str]:
    script = Path(sys.executable).with_name("mcbench")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mcbench.cli"]


def rejected(err: str, message: str) -> None:
    lines = err.strip().splitlines()
    assert lines[-1].startswith("mcbench: error: "), err
    assert message in lines[-1], err
    assert sum("error" in line for line in lines) == 1, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "--steps", "0", "-m", "gan", "-d", "ring"], "--steps: must be a positive integer"),
        (["run", "-m", "nosuch", "-d", "ring"], "unknown method 'nosuch'; choices: "),
    ],
)
def test_console_script_rejects_bad_input(tmp_path, args, message):
    out = tmp_path / "out"
    done = subprocess.run(
        [*mcbench_command(), *args, "--out", str(out)], capture_output=True, text=True
    )
    assert done.returncode == 2
    rejected(done.stderr, message)
    assert not out.exists()


CASES = {
    "jobs 0": (["--jobs", "0"], "argument --jobs/-j: must be a positive integer, got 0"),
    "jobs -2": (["--jobs", "-2"], "must be a positive integer, got -2"),
    "threads 0": (["--threads", "0"], "argument --threads: must be a positive integer"),
    "steps word": (["--steps", "ten"], "expected a positive integer, got 'ten'"),
    "eval-every 0": (["--eval-every", "0"], "argument --eval-every: must be a positive"),
    "eval-samples -1": (["--eval-samples", "-1"], "argument --eval-samples: must be"),
    "checkpoint-every 0": (["--checkpoint-every", "0"], "--checkpoint-every: must be"),
    "negative seed": (["--seeds", "-1"], "argument --seeds: seeds must be >= 0, got -1"),
    "eval after the end": (["--steps", "5"], "eval_every (10) must not exceed steps (5)"),
    "unknown dataset": (["-d", "nosuch"], "unknown dataset 'nosuch'; choices: "),
    "hyperparameter range": (["-m", "gan[d_steps=0]"], "d_steps must be > 0, got 0"),
    "hyperparameter type": (["-m", "gan[d_steps=x]"], "d_steps='x' is not a valid int"),
    "unknown hyperparameter": (["-m", "gan[lr=1]"], "has no hyperparameter 'lr'; choices:"),
    "malformed selector": (["-m", "gan[d_steps]"], "malformed parameter 'd_steps'"),
    "unknown device": (["--device", "gpu0"], "unknown device 'gpu0'; e.g. cpu, cuda, cuda:1"),
    "unknown suite": (["--suite", "nosuch"], "unknown suite 'nosuch'; choices: "),
    "unknown suite file": (["--suite", "nosuch.toml"], "suite file nosuch.toml does not exist"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_run_option_is_rejected_before_any_work(tmp_path, capsys, case):
    extra, message = CASES[case]
    out = tmp_path / "out"
    assert main([*BASE, *extra, "--out", str(out)]) == 2
    rejected(capsys.readouterr().err, message)
    assert not out.exists()


def test_method_without_dataset(capsys):
    assert main(["run", "-m", "gan"]) == 2
    rejected(capsys.readouterr().err, "give --suite, or at least one --method and one --dataset")


TOML_CASES = {
    "malformed": ("methods = [gan\n", "malformed TOML"),
    "steps type": (SUITE + 'steps = "ten"\neval_every = 1\neval_samples = 9\n',
                   "steps must be a positive integer, got 'ten'"),
    "datasets type": ('methods = ["gan"]\ndatasets = "ring"\nseeds = [0]\n' + BUDGET,
                      "datasets must be a non-empty list of names, got 'ring'"),
    "methods type": ('methods = "some"\ndatasets = ["ring"]\nseeds = [0]\n' + BUDGET,
                     'methods must be a list of names or "all"'),
    "negative seed": ('methods = ["gan"]\ndatasets = ["ring"]\nseeds = [-1]\n' + BUDGET,
                      "seeds must be a list of non-negative integers"),
    "unknown key": (SUITE + BUDGET + "step = 3\n", "unknown key(s) step; valid: "),
    "missing key": (SUITE + "steps = 20\neval_every = 10\n", "missing key 'eval_samples'"),
    "eval after the end": (SUITE + "steps = 5\neval_every = 10\neval_samples = 9\n",
                           "eval_every (10) must not exceed steps (5)"),
    "checkpoint_every": (SUITE + BUDGET + "checkpoint_every = 0\n",
                         "checkpoint_every must be a positive integer, got 0"),
    "params method": (SUITE + BUDGET + "[params.nosuch]\nk = 1\n",
                      "[params.nosuch] names an unknown method; choices: "),
    "params value": (SUITE + BUDGET + "[params.gan]\nd_steps = -1\n", "d_steps must be > 0"),
    "budget dataset": (SUITE + BUDGET + "[budget.grid]\nsteps = 9\n",
                       "[budget.grid] names a dataset not in the suite; datasets: ring"),
    "budget value": (SUITE + BUDGET + "[budget.ring]\nsteps = 0\n",
                     "dataset ring: steps must be a positive integer, got 0"),
    "budget key": (SUITE + BUDGET + "[budget.ring]\nlr = 1\n", "[budget.ring] unknown key(s) lr"),
    "exclude": (SUITE + BUDGET + 'exclude = ["nosuch"]\n', "exclude names unknown method"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(TOML_CASES))
def test_bad_suite_file_is_rejected_before_any_work(tmp_path, capsys, case):
    text, message = TOML_CASES[case]
    suite = tmp_path / "bad.toml"
    suite.write_text(text)
    out = tmp_path / "out"
    assert main(["run", "--suite", str(suite), "--out", str(out)]) == 2
    rejected(capsys.readouterr().err, message)
    assert not out.exists()


def test_missing_data_folder_is_rejected_before_any_work(tmp_path, capsys, monkeypatch):
    if "cifar10" not in DATASETS:
        pytest.skip("no cifar10 dataset registered")
    monkeypatch.setenv("MCBENCH_DATA", str(tmp_path / "empty"))
    out = tmp_path / "out"
    assert main(["run", "-m", "gan", "-d", "cifar10", "--steps", "2", "--out", str(out)]) == 2
    rejected(capsys.readouterr().err, f"not found at {tmp_path / 'empty'}")
    assert not out.exists()


def test_dataset_check_hook_runs_before_any_work(tmp_path, capsys, monkeypatch):
    """A dataset that defines check() is asked before the first run starts."""
    from mcbench.datasets.mixtures import ring

    def check() -> None:
        raise McbenchError("data for 'faraway' not found at /nowhere")

    def missing():
        ds = ring()
        ds.check = check
        return ds

    monkeypatch.setitem(DATASETS, "faraway", missing)
    out = tmp_path / "out"
    assert main(["run", "-m", "gan", "-d", "faraway", "--out", str(out)]) == 2
    rejected(capsys.readouterr().err, "data for 'faraway' not found at /nowhere")
    assert not out.exists()


def test_out_is_a_file(tmp_path, capsys):
    out = tmp_path / "file"
    out.write_text("")
    assert main([*BASE, "--out", str(out)]) == 2
    rejected(capsys.readouterr().err, "exists and is not a folder")


def test_status_of_a_folder_without_runs(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 2
    rejected(capsys.readouterr().err, f"no runs under {tmp_path}")


def test_readme_scaling_out_commands_exist():
    """The commands README's "Scaling out" section asks a new user to type."""
    pytest.importorskip("distributed")
    for cmd in (["dask", "scheduler", "--help"], ["dask", "worker", "--help"]):
        exe = shutil.which(cmd[0], path=os.path.dirname(sys.executable))
        assert exe, "the dask command comes with dask[distributed]"
        assert subprocess.run([exe, *cmd[1:]], capture_output=True).returncode == 0


def test_device_this_machine_lacks(tmp_path, capsys):
    import torch

    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    out = tmp_path / "out"
    assert main([*BASE, "--device", device, "--out", str(out)]) == 2
    rejected(capsys.readouterr().err, f"--device {device}: ")
    assert not out.exists()
