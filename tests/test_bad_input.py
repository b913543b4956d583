"""Nothing silently wrong: bad input to report, run, evaluate ends in one line on stderr
and exit status 2 before any work starts; unknown names suggest the near miss; small
rough edges (single-point curves, the suite's time claim) say what is true."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mcbench.errors import McbenchError

METRICS_CSV = "method,dataset,seed,step,metric,value,wall_time\ngan,ring,0,10,modes_covered,8,1.0\n"


def mcbench(*args: str | Path) -> subprocess.CompletedProcess:
    script = Path(sys.executable).with_name("mcbench")
    cmd = [str(script)] if script.exists() else [sys.executable, "-m", "mcbench.cli"]
    return subprocess.run(
        [*cmd, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def refused(done: subprocess.CompletedProcess, message: str) -> str:
    """Exit 2 and exactly one stderr line, the error, holding `message`."""
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("mcbench: error: ") and message in lines[0], lines[0]
    assert len(lines[0]) < 300, lines[0]
    return lines[0]


def run_folder(path: Path, config: dict) -> Path:
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(config))
    (path / "metrics.csv").write_text(METRICS_CSV)
    return path


# -- report -------------------------------------------------------------------------


def test_report_refuses_a_foreign_results_csv(tmp_path):
    (tmp_path / "results.csv").write_text("a,b\n1,2\n")
    refused(mcbench("report", tmp_path), "is not an mcbench results.csv: none of the columns")
    assert not (tmp_path / "report").exists()


def test_report_refuses_a_results_csv_with_words_for_steps(tmp_path):
    (tmp_path / "results.csv").write_text(
        "method,dataset,seed,step,metric,value\ngan,ring,0,x,m,1\n"
    )
    refused(mcbench("report", tmp_path), "non-numeric column(s) step")


def test_report_refuses_a_run_folder_whose_config_is_empty(tmp_path):
    run = run_folder(tmp_path / "run", {})
    line = refused(mcbench("report", run), "no finished runs under")
    assert "config.json has no method, dataset, seed" in line
    assert not (run / "report").exists()


def test_report_out_naming_a_file_is_refused_before_writing(tmp_path):
    run = run_folder(tmp_path / "run", {"method": "gan", "dataset": "ring", "seed": 0})
    target = tmp_path / "a-file"
    target.write_text("mine")
    refused(mcbench("report", run, "--out", target), f"{target} is a file, not a folder")
    refused(mcbench("report", run, "--out", target / "sub"), "is a file, not a folder")
    assert target.read_text() == "mine"


def test_report_on_a_file_says_what_it_is(tmp_path):
    f = tmp_path / "results.csv"
    f.write_text(METRICS_CSV)
    refused(mcbench("report", f), "is a file: expected a results folder")


def test_a_valid_run_folder_still_reports(tmp_path):
    """The checks refuse foreign files only: a minimal mcbench run still makes a report."""
    from mcbench.report.build import load_results

    run = run_folder(tmp_path / "run", {"method": "gan", "dataset": "ring", "seed": 0})
    results = load_results([run])
    assert results.runs["selector"].tolist() == ["gan"] and not results.notes


# -- run ----------------------------------------------------------------------------


def test_suite_file_that_is_not_utf8(tmp_path):
    suite = tmp_path / "latin1.toml"
    suite.write_bytes('description = "caf\xe9"\n'.encode("latin-1"))
    out = tmp_path / "out"
    refused(mcbench("run", "--suite", suite, "--out", out), "is not UTF-8 text")
    assert not out.exists()


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("pacgan[m=1]", "m must be at least 2 (m=1 is the plain GAN"),
        ("pacgan[m=600]", "m=600 is larger than the batch size 512"),
    ],
)
def test_pacgan_pack_size_is_checked_before_any_work(tmp_path, selector, message):
    out = tmp_path / "out"
    refused(mcbench("run", "-m", selector, "-d", "ring", "--out", out), message)
    assert not out.exists()


@pytest.mark.parametrize("selector", ["unrolled-gan[K=1000000000]", "lbt[K=1000000000]"])
def test_unroll_depth_is_checked_against_memory_before_any_work(tmp_path, selector):
    """An unroll that could never fit is refused at planning, with the estimate."""
    out = tmp_path / "out"
    line = refused(mcbench("run", "-m", selector, "-d", "ring", "--out", out), "K=1000000000")
    assert "need" in line and "PB" in line and "more than the" in line
    assert not out.exists()


def test_pacgan_pack_check_is_the_protocols():
    """m above the batch is refused only where the batch counts samples: a batch counted
    in packs (PacGAN's code) always fills them."""
    from mcbench.methods.pacgan import PacGAN, PacGANConfig
    from mcbench.plugin.protocol import get_protocol

    proto = get_protocol("mixture2d")
    PacGAN.check_protocol(PacGANConfig(m=proto.batch_size), proto)
    with pytest.raises(McbenchError, match="larger than the batch size"):
        PacGAN.check_protocol(PacGANConfig(m=proto.batch_size + 1), proto)
    PacGAN.check_protocol(
        PacGANConfig(m=proto.batch_size + 1), dataclasses.replace(proto, batch_in_packs=True)
    )


# -- evaluate -----------------------------------------------------------------------


@pytest.fixture
def ring_samples() -> np.ndarray:
    import torch

    from mcbench.datasets import get_dataset

    x = get_dataset("ring").sample(3000, torch.Generator().manual_seed(0), torch.device("cpu"))
    return x.numpy().astype(np.float64)


def test_evaluate_refuses_an_ambiguous_npz_and_takes_key(tmp_path, ring_samples):
    path = tmp_path / "two.npz"
    np.savez(path, samples=ring_samples, labels=np.zeros((3000, 2)))
    refused(mcbench("evaluate", "ring", path), "holds 2 arrays (samples, labels): name the")
    refused(mcbench("evaluate", "ring", path, "--key", "sample"), "did you mean 'samples'?")
    done = mcbench("evaluate", "ring", path, "--key", "samples", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["modes_covered"] == 8


def test_evaluate_refuses_overflowing_values_without_warnings(tmp_path):
    path = tmp_path / "huge.npy"
    np.save(path, np.full((3000, 2), 1e300))
    line = refused(mcbench("evaluate", "ring", path), "overflow the metrics' float64")
    assert "1e+300" in line


def test_evaluate_json_is_strict_json_and_warns_on_few_samples(tmp_path, ring_samples):
    path = tmp_path / "five.npy"
    np.save(path, ring_samples[:5])
    done = mcbench("evaluate", "ring", path, "--json")
    assert done.returncode == 0, done.stderr

    def no_constants(name: str):
        raise AssertionError(f"bare {name} in --json output")

    values = json.loads(done.stdout, parse_constant=no_constants)
    assert values["reverse_kl_2500"] is None
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mcbench: warning: only 5 samples"), lines
    assert "(80 for 8 modes)" in lines[0] and "need 2,500 and are NaN" in lines[0]


def test_enough_samples_get_no_warning(tmp_path, ring_samples):
    path = tmp_path / "enough.npy"
    np.save(path, ring_samples)
    done = mcbench("evaluate", "ring", path)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("random.npy", np.random.default_rng(0).bytes(2000), "is not a .npy file (no NumPy"),
        (
            "header.npy",
            b"\x93NUMPY\x01\x00\x76\x02" + np.random.default_rng(1).bytes(700),
            "damaged NumPy header or data",
        ),
        ("hello.npz", b"hello", "is not an .npz file (not a zip archive)"),
        ("words.csv", b"1,2\n3,abc\n", "could not convert string 'abc'"),
    ],
)
def test_unreadable_samples_are_one_short_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    refused(mcbench("evaluate", "ring", path), message)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.array([["a", "b"]]), "samples must be numbers, got dtype <U1"),
        (np.array([object()], dtype=object), "holds Python objects (pickled)"),
    ],
)
def test_samples_that_are_not_numbers(tmp_path, array, message):
    from mcbench.cli import read_samples

    path = tmp_path / "x.npz"
    np.savez(path, x=array)
    with pytest.raises(McbenchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_samples(str(path))


def test_evaluate_on_a_folder_says_what_it_is(tmp_path):
    refused(mcbench("evaluate", "ring", tmp_path), "is a folder: expected a samples file")


# -- unknown names ------------------------------------------------------------------


def test_unknown_method_suggests_the_near_miss(tmp_path):
    line = refused(mcbench("run", "-m", "pacgen", "-d", "ring", "--out", tmp_path / "o"), "")
    assert "unknown method 'pacgen' (did you mean 'pacgan'" in line and "; choices: " in line


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (("dataset", "rng"), "unknown dataset 'rng' (did you mean 'ring'"),
        (("suite", "quik"), "unknown suite 'quik' (did you mean 'quick'"),
        (("method", "lbt[preset=author]"), "no preset 'author' (did you mean 'authors-code'"),
        (("method", "pacgan[mm=3]"), "no hyperparameter 'mm' (did you mean 'm'"),
        (("method", "nosuch"), "unknown method 'nosuch'; choices: "),  # nothing close
    ],
)
def test_unknown_names_suggest_the_near_miss(call, message):
    from mcbench.datasets import get_dataset
    from mcbench.plugin.registry import resolve
    from mcbench.run.suite import load_suite

    kind, name = call
    do = {"dataset": get_dataset, "suite": load_suite, "method": resolve}[kind]
    with pytest.raises(McbenchError) as err:
        do(name)
    assert message in str(err.value)


# -- rough edges ----------------------------------------------------------------------


def test_single_point_curves_get_markers(tmp_path, monkeypatch):
    """Runs evaluated only at their last step are single points: drawn with a marker."""
    from mcbench.report import figures

    rows = pd.DataFrame(
        [
            (m, "ring", s, 500, "modes_covered", v, 1.0, f"{m}-ring-s{s}", "ok")
            for m, v in (("gan", 3.0), ("pacgan", 6.0))
            for s in (0, 1)
        ],
        columns=[
            "method",
            "dataset",
            "seed",
            "step",
            "metric",
            "value",
            "wall_time",
            "run",
            "status",
        ],
    )
    seen = []
    save = figures._save

    def spy(fig, *args, **kwargs):
        seen.extend(line for ax in fig.axes for line in ax.lines)
        return save(fig, *args, **kwargs)

    monkeypatch.setattr(figures, "_save", spy)
    palette = figures._palette(["gan", "pacgan"])
    assert figures.curves(rows, ["ring"], "mixture2d", "step", tmp_path, False, palette)
    drawn = [line for line in seen if line.get_label() in ("gan", "pacgan")]
    assert len(drawn) == 2 and all(line.get_marker() == "o" for line in drawn)


def test_isolated_points_only_are_marked():
    from mcbench.report.figures import _isolated

    y = np.array([1.0, np.nan, 2.0, 3.0, np.nan, 4.0])
    assert _isolated(y).tolist() == [True, False, False, False, False, True]


def test_stacked_quick_claims_no_unmeasured_time():
    from mcbench.run.suite import suite_description

    text = suite_description("stacked-quick")
    assert "min" not in text.replace("not measured", "") and "not measured" in text


def test_suite_path_that_is_a_folder(tmp_path):
    from mcbench.run.suite import load_suite

    folder = tmp_path / "mine.toml"
    folder.mkdir()
    with pytest.raises(McbenchError, match="is a folder: expected a TOML file"):
        load_suite(str(folder))
