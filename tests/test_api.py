"""mcbench.api: the README's notebook example runs as written; run, load, evaluate and the
report helpers behave as the command line does, on tiny budgets."""

import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
import torch

from mcbench import api
from mcbench.datasets import get_dataset
from mcbench.errors import McbenchError
from mcbench.run.store import COLUMNS, run_dirs

ROOT = Path(__file__).resolve().parents[1]
TINY = {"steps": 20, "eval_every": 10, "eval_samples": 1000, "progress": False}


def readme_notebook_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(
        r"<!-- notebook-example -->\s*```python\n(.*?)```\s*<!-- /notebook-example -->", text, re.S
    )
    assert m, "README lost its Python-interface example (<!-- notebook-example --> markers)"
    return m.group(1)


def test_readme_notebook_example_runs(tmp_path, monkeypatch, capsys):
    """The example as printed, in a fresh working folder (its outputs land there)."""
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    code = readme_notebook_example()
    exec(compile(code, "README.md:notebook-example", "exec"), {"__name__": "__readme__"})
    out = capsys.readouterr().out
    assert "| gan |" in out and "| pacgan2 |" in out  # the final table of both methods
    assert "modes_covered" in out
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.stat().st_size > 5_000 for p in pngs)
    assert (tmp_path / "results").is_dir()  # relative `out` lands in the working folder
    import matplotlib.pyplot as plt

    plt.close("all")


def test_the_api_leaves_a_notebooks_matplotlib_backend_alone(tmp_path):
    """Drawing a report uses no pyplot state: a backend the user named (Jupyter names its
    inline one; here pdf) survives the api importing the report."""
    code = textwrap.dedent(f"""
        import matplotlib
        matplotlib.use("pdf")
        from mcbench import McbenchError, api
        try:
            api.load({str(tmp_path / "missing")!r})  # imports the report, then fails
        except McbenchError:
            pass
        print(matplotlib.get_backend())
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "pdf"


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """gan on ring, seeds 0 and 1, 20 updates, evaluated at 10 and 20."""
    out = tmp_path_factory.mktemp("api") / "res"
    return out, api.run("gan", "ring", seeds=[0, 1], out=out, **TINY)


def test_run_returns_the_tidy_rows_of_its_grid(grid):
    out, df = grid
    assert list(df.columns[: len(COLUMNS)]) == COLUMNS
    assert {"run", "status"} <= set(df.columns)
    assert set(df["method"]) == {"gan"} and set(df["dataset"]) == {"ring"}
    assert set(df["seed"]) == {0, 1} and df["run"].nunique() == 2
    assert set(df["status"]) == {"ok"}
    evals = df[df["metric"] == "modes_covered"]
    assert sorted(evals["step"]) == [10, 10, 20, 20]
    assert (out / "results.csv").is_file() and len(run_dirs(out)) == 2
    assert df.attrs["results_dir"] == str(out)


def test_run_again_reads_finished_runs_and_returns_only_its_grid(grid):
    out, df = grid
    again = api.run(["gan"], ["ring"], seeds=(1, 0), out=out, **TINY)
    cols = [*COLUMNS, "run"]
    key = ["run", "step", "metric"]
    pd.testing.assert_frame_equal(  # wall_time included: nothing was trained again
        again[cols].sort_values(key).reset_index(drop=True),
        df[cols].sort_values(key).reset_index(drop=True),
    )
    one = api.run("gan", "ring", seeds=np.int64(1), out=out, **TINY)
    assert set(one["seed"]) == {1}  # the folder holds seed 0 as well


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"methods": "no-such-gan"}, "unknown method 'no-such-gan'"),
        ({"methods": "gan[q=1]"}, "no hyperparameter 'q'"),
        ({"datasets": "rings"}, "unknown dataset 'rings'"),
        ({"steps": 0}, "steps must be a positive integer"),
        ({"eval_every": 50}, "eval_every (50) must not exceed steps (20)"),
        ({"seeds": [-1]}, "seeds must be a list of non-negative integers"),
        ({"jobs": 0}, "jobs must be a positive integer"),
        ({"replicas": 0}, "replicas must be a positive integer"),
        ({"colour": "red"}, "unknown option(s) colour"),
        ({"methods": 3}, "methods must be a name or a list of names"),
        ({"device": "nodevice"}, "unknown device 'nodevice'"),
    ],
)
def test_run_mistakes_are_one_line_errors_before_any_work(tmp_path, kwargs, message):
    args = {"methods": "gan", "datasets": "ring", "out": tmp_path / "res", **TINY, **kwargs}
    with pytest.raises(McbenchError) as err:
        api.run(**args)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "res" / "runs").exists()


def test_run_out_must_be_a_folder(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(McbenchError, match="exists and is not a folder"):
        api.run("gan", "ring", out=tmp_path / "file", **TINY)


def test_load_reads_results_folders_run_folders_and_several(grid, tmp_path):
    out, df = grid
    cols = [*COLUMNS, "run", "status"]
    key = ["run", "step", "metric"]
    whole = api.load(out)
    pd.testing.assert_frame_equal(
        whole[cols].sort_values(key).reset_index(drop=True),
        df[cols].sort_values(key).reset_index(drop=True),
    )
    run_dir = run_dirs(out)[0]
    single = api.load(run_dir)
    assert set(single["run"]) == {run_dir.name}
    csv_only = tmp_path / "csv-only"  # a results.csv without its run folders
    csv_only.mkdir()
    (csv_only / "results.csv").write_text((out / "results.csv").read_text())
    assert api.load(str(csv_only))["run"].nunique() == 2
    merged = api.load([out, csv_only], run_dir)  # a run found twice is read once
    assert len(merged) == len(whole)
    with pytest.raises(McbenchError, match="does not exist"):
        api.load(tmp_path / "missing")
    with pytest.raises(McbenchError, match="at least one"):
        api.load()


def test_final_summary_table_and_plot(grid):
    _, df = grid
    fin = api.final(df)
    assert set(fin["step"]) == {20} and fin["run"].nunique() == 2
    assert len(fin) == len(df[df["step"] == 20])
    stats = api.summary(df).set_index("metric")
    modes = fin.loc[fin["metric"] == "modes_covered", "value"]
    assert stats.loc["modes_covered", "n"] == 2
    assert stats.loc["modes_covered", "mean"] == pytest.approx(modes.mean())
    assert stats.loc["modes_covered", "std"] == pytest.approx(modes.std(ddof=1))
    md = api.table(df)
    assert md.startswith("### ring") and "| gan | 2 (0) |" in md
    with pytest.raises(McbenchError, match="error must be one of"):
        api.table(df, error="var")
    with pytest.raises(McbenchError, match="lacks column"):
        api.summary(df.drop(columns="status"))

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2)
    assert api.plot(df, "reverse_kl", ax=a) is a
    (line,) = a.get_lines()  # one method: one line, through the mean over seeds
    mean = df[df["metric"] == "reverse_kl"].groupby("step")["value"].mean()
    np.testing.assert_allclose(line.get_xdata(), mean.index)
    np.testing.assert_allclose(line.get_ydata(), mean.values)
    assert line.get_label() == "gan" and len(a.collections) == 1  # its ±1 std band
    ax = api.plot(df, x="wall_time")
    assert ax.figure is not fig and ax.get_xlabel().startswith("training time")
    with pytest.raises(McbenchError, match="no ok rows of metric 'kl'"):
        api.plot(df, "kl", ax=b)
    two = pd.concat([df, df.assign(dataset="grid")])
    with pytest.raises(McbenchError, match="pass dataset="):
        api.plot(two)
    assert api.plot(two, dataset="grid", ax=b) is b
    plt.close("all")


def test_evaluate_any_array_as_the_cli(tmp_path):
    ds = get_dataset("ring")
    g = np.random.default_rng(0)
    n = 20_000
    exact = ds.centers[g.integers(8, size=n)] + ds.std * g.standard_normal((n, 2))
    m = api.evaluate("ring", exact)
    assert m["modes_covered"] == 8
    assert m["high_quality_pct"] == pytest.approx(100 * (1 - math.exp(-4.5)), abs=0.5)
    assert all(type(v) is float for v in m.values())
    assert api.evaluate("ring", torch.from_numpy(exact).float()) == pytest.approx(m, rel=1e-5)
    one = api.evaluate("ring", (ds.centers[2] + ds.std * g.standard_normal((n, 2))).tolist())
    assert one["modes_covered"] == 1 and one["reverse_kl"] == pytest.approx(math.log(8))
    np.save(tmp_path / "s.npy", exact)
    assert api.evaluate("ring", tmp_path / "s.npy") == m


@pytest.mark.parametrize(
    "dataset, samples, message",
    [
        ("ring", np.zeros((10, 3)), "shape"),
        ("ring", np.array([[0.0, np.nan]] * 4), "NaN"),
        ("ring", torch.full((4, 2), float("inf")), "NaN or inf"),
        ("ring", [["a", "b"]], "must be numbers"),
        ("ring", [[0.0, 1.0], [2.0]], "not an array"),
        ("rings", np.zeros((10, 2)), "unknown dataset 'rings'"),
        ("ring", "missing.npy", "does not exist"),
    ],
)
def test_evaluate_bad_samples_are_one_line_errors(dataset, samples, message):
    with pytest.raises(McbenchError) as err:
        api.evaluate(dataset, samples)
    assert message in str(err.value) and "\n" not in str(err.value)
