"""The performance script's pieces on tiny sizes: counts, bookkeeping and output format.

No timing assertions: timings on a shared test machine mean nothing. What is checked is
what the numbers are built from (FLOP counts, the overhead's differencing, the suite
projection's arithmetic) and that a whole run writes well-formed files.
"""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from mcbench import perf
from mcbench.errors import McbenchError
from mcbench.protocol import MIXTURE2D
from mcbench.runner import RunSpec, build
from mcbench.suite import load_suite

CPU = torch.device("cpu")


def harness_gan():
    m, ds, data_rng = build(RunSpec("gan", "ring", 0, 1, 1, 1), CPU)
    return m, lambda: m.step(ds.sample(m.problem.batch_size, data_rng, CPU))


def test_bare_loop_uses_the_harness_nets():
    """The bare loop is the same GAN: same layer shapes for G and D, same Adam settings."""
    m, _ = harness_gan()
    bare = perf.BareGAN(CPU)
    for ours, theirs in ((bare.G, m.G), (bare.D, m.D)):
        assert [p.shape for p in ours.parameters()] == [p.shape for p in theirs.parameters()]
    for ours, theirs in ((bare.opt_g, m.opt_g), (bare.opt_d, m.opt_d)):
        a, b = ours.param_groups[0], theirs.param_groups[0]
        assert (a["lr"], a["betas"]) == (b["lr"], b["betas"])
    d, g = bare.step()
    assert torch.isfinite(d) and torch.isfinite(g)


def test_gan_flops_counted_equal_analytic_and_bare():
    """FlopCounterMode on the harness's GAN update, on the bare update, and the count
    from layer sizes agree exactly (so the two loops do the same matmul work)."""
    p = MIXTURE2D
    _, step = harness_gan()
    bare = perf.BareGAN(CPU)
    analytic = perf.gan_step_flops(p.latent_dim, p.hidden, 2, p.batch_size)
    assert perf.count_flops(step) == analytic
    assert perf.count_flops(bare.step) == analytic


def test_linear_flops_closed_form():
    assert perf.linear_flops([3, 5, 7], 11) == (2 * 11 * (3 * 5 + 5 * 7), 2 * 11 * 3 * 5)


def test_overhead_differencing_and_interleaving():
    """Marginal cost per step (T(w + s) - T(w)) / s from known affine runners; the
    order alternates A B, B A; a first untimed call of each pays one-time costs."""
    calls = []

    def runner(name, fixed, per_step):
        def run(steps, device):
            calls.append((name, steps))
            return fixed + per_step * steps

        return run

    out = perf.measure_overhead(
        CPU, 40, 10, 3, {"a": runner("a", 0.5, 0.003), "b": runner("b", 0.1, 0.002)}
    )
    assert out["ratio_median"] == pytest.approx(1.5)
    assert out["ms_median"]["a"] == pytest.approx(3.0)
    assert out["ms_median"]["b"] == pytest.approx(2.0)
    assert len(out["ratios"]) == 3
    assert calls[:2] == [("a", 10), ("b", 10)]
    names = [n for n, s in calls[2:] if s == 50]
    assert names == ["a", "b", "b", "a", "a", "b"]


def test_evaluation_count_matches_the_runner():
    """The runner evaluates at every multiple of eval_every and at the last step."""
    for steps, every in ((20, 10), (25, 10), (7, 7), (1, 1), (10, 3)):
        expected = len({s for s in range(1, steps + 1) if s % every == 0 or s == steps})
        assert perf.evaluations(steps, every) == expected


def test_projection_arithmetic():
    """Every run of the smoke suite: steps x step cost + evaluations x (scaled
    generation + scaled metric + diagnostics), summed per method and in total."""
    suite = load_suite("smoke")
    names = sorted({s.method for s in suite.specs})
    step = {m: 0.001 * (i + 1) for i, m in enumerate(names)}
    gen = {m: 0.5 + i for i, m in enumerate(names)}
    diag = {m: 0.01 * i for i, m in enumerate(names)}
    metric = {"ring": 0.25}
    out = perf.project_suite("smoke", step, gen, 1000, diag, metric, 2000)
    total = 0.0
    for s in suite.specs:
        n_eval = perf.evaluations(s.steps, s.eval_every)
        one = gen[s.method] * s.eval_samples / 1000 + 0.25 * s.eval_samples / 2000
        cost = s.steps * step[s.method] + n_eval * (one + diag[s.method])
        assert out["per_method"][s.method]["total_s"] == pytest.approx(cost)
        total += cost
    assert out["total_s"] == pytest.approx(total)
    assert sum(v["share"] for v in out["per_method"].values()) == pytest.approx(1.0)
    with pytest.raises(McbenchError, match="no measured step cost"):
        perf.project_suite("smoke", {}, gen, 1000, diag, metric, 2000)


def test_matmul_peak_is_well_formed():
    out = perf.matmul_peak(CPU, 64, 2)
    assert len(out["flops_per_s"]) == 2
    assert out["best"] == max(out["flops_per_s"]) > 0


def test_bad_options_fail_with_one_line(capsys):
    assert perf.main(["--sections", "overhead,nope"]) == 2
    assert perf.main(["--overhead-steps", "0"]) == 2
    assert perf.main(["--methods", "no-such-method", "--sections", "methods"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3
    assert all(line.startswith("mcbench.perf: error:") for line in err)


def test_whole_run_tiny(tmp_path):
    """Every in-process section on tiny sizes writes JSON, CSV and Markdown that agree."""
    suite = tmp_path / "tiny.toml"
    suite.write_text(
        'methods = ["gan", "lbt"]\ndatasets = ["ring", "grid"]\nseeds = [0, 1]\n'
        "steps = 30\neval_every = 10\neval_samples = 1000\n"
    )
    out = tmp_path / "perf"
    argv = ["--out", str(out), "--sections", "overhead,peak,metrics,methods,projection"]
    argv += ["--overhead-steps", "2", "--overhead-warmup", "1", "--overhead-reps", "1"]
    argv += ["--peak-size", "64", "--peak-reps", "1", "--eval-samples", "500"]
    argv += ["--eval-reps", "1", "--method-warmup", "0", "--method-steps", "1"]
    argv += ["--method-reps", "1", "--methods", "gan", "--extra-methods", ""]
    argv += ["--suite", str(suite)]
    assert perf.main(argv) == 0

    res = json.loads((out / "perf.json").read_text())
    dev = res["device"]
    assert dev["device"] == "cpu" and dev["torch"] == torch.__version__
    assert dev["torch_threads"] == 1 and dev["cpu"]
    assert set(res["sections"]) == {"overhead", "peak", "metrics", "methods", "projection"}
    assert set(res["sections"]["methods"]) == {"gan", "lbt"}  # the suite's methods join
    assert res["gan_flops_match"] is True
    proj = res["sections"]["projection"]
    assert len(proj["runs"]) == 2 * 2 * 2
    assert proj["total_h"] == pytest.approx(proj["total_s"] / 3600)

    with open(out / "perf.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and set(rows[0]) == {*perf.CSV_COLUMNS, "device", "cpu", "threads", "torch", "gpu"}
    assert {(r["device"], r["threads"], r["torch"]) for r in rows} == {("cpu", "1", dev["torch"])}
    assert all(math.isfinite(float(r["value"])) for r in rows)
    ratio = [r for r in rows if r["metric"] == "ratio" and r["section"] == "overhead"]
    assert float(ratio[0]["value"]) == pytest.approx(res["sections"]["overhead"]["ratio_median"])
    fractions = {r["item"] for r in rows if r["metric"] == "peak_fraction"}
    assert fractions == {"gan", "lbt"}

    md = (out / "perf.md").read_text()
    for heading in ("Harness overhead", "Matmul peak", "Metric evaluation", "Every method"):
        assert f"## {heading}" in md
    assert "| **total** | 8 |" in md
    assert dev["cpu"] in md.splitlines()[0]


def test_processes_against_threads_bookkeeping(monkeypatch):
    """P processes x 1 thread against 1 process x P threads, alternating; the ratio is the
    median of per-repetition ratios of summed throughputs."""
    calls = []

    def fake(processes, threads, seconds, warmup, dataset):
        calls.append((processes, threads))
        return {"updates_per_s": 30.0 if threads == 1 else 20.0}

    monkeypatch.setattr(perf, "run_workers", fake)
    out = perf.measure_processes(2, 0.1, 0, 3, "ring")
    assert calls == [(2, 1), (1, 2), (1, 2), (2, 1), (2, 1), (1, 2)]
    assert out["ratio_median"] == pytest.approx(1.5)


@pytest.mark.slow
def test_worker_process_handshake():
    """A real worker: it starts on 'go', runs at least the window, with the threads asked
    for (one process: a torch import costs seconds on a loaded machine)."""
    out = perf.run_workers(1, 2, 0.2, 0, "ring")
    (w,) = out["workers"]
    assert w["threads"] == 2 and w["steps"] >= 1 and w["seconds"] >= 0.2
    assert out["updates_per_s"] == pytest.approx(w["steps"] / w["seconds"])
