"""Same seed, same CPU: the same numbers, run after run."""

import pandas as pd

from mcbench.run.runner import RunSpec, run


def numbers(out, spec):
    run(spec, out)
    df = pd.read_csv(next((out / "runs").glob("*/metrics.csv")))
    df = df[df.metric != "step_time_ms"]
    return df.drop(columns="wall_time").reset_index(drop=True)


def test_same_seed_same_numbers(tmp_path):
    spec = RunSpec("gan", "ring", 3, steps=30, eval_every=15, eval_samples=2000)
    a = numbers(tmp_path / "a", spec)
    b = numbers(tmp_path / "b", spec)
    pd.testing.assert_frame_equal(a, b)
    c = numbers(tmp_path / "c", RunSpec("gan", "ring", 4, 30, 15, 2000))
    assert not a["value"].equals(c["value"])
