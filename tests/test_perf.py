"""The performance script's pieces on tiny sizes: counts, bookkeeping and output format.

No timing assertions: timings on a shared test machine mean nothing. What is checked is
what the numbers are built from (FLOP counts, the overhead's differencing, the suite
projection's arithmetic) and that a whole run writes well-formed files.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
import time

import perf
import pytest
import torch

from mcbench.errors import McbenchError
from mcbench.plugin.protocol import MIXTURE2D
from mcbench.run.runner import RunSpec, build
from mcbench.run.suite import load_suite

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


def test_block_spread_is_the_largest_distance_from_the_median():
    assert perf.block_spread([10.0, 12.0, 9.0, 10.0, 11.0]) == pytest.approx(0.2)
    assert perf.block_spread([5.0]) == 0.0


def test_matmul_peak_is_well_formed():
    out = perf.matmul_peak(CPU, 64, 2)
    assert len(out["flops_per_s"]) == 2
    assert out["best"] == max(out["flops_per_s"]) > 0


def test_bad_options_fail_with_one_line(capsys):
    assert perf.main(["--sections", "overhead,nope"]) == 2
    assert perf.main(["--overhead-steps", "0"]) == 2
    assert perf.main(["--methods", "no-such-method", "--sections", "methods"]) == 2
    assert perf.main(["--steady-methods", "pacgan --compile", "--sections", "steady"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4
    assert "no functional update" in err[-1]
    assert all(line.startswith("perf: error:") for line in err)


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
    spreads = {r["item"]: float(r["value"]) for r in rows if r["metric"] == "spread"}
    assert spreads == {"gan": 0.0, "lbt": 0.0}  # one block each: no distance from itself

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


# -- replicas, graphs and the projection with replicas (issue 8) ------------------------------


def test_replica_stats_arithmetic():
    """ms per group update and per seed-update of each side, the speed-up as the median
    of per-update ratios, FLOP/s of the group update, the R x single FLOP check."""
    out = perf.replica_stats(4, [0.1, 0.2, 0.3], [0.2, 0.5, 0.6], 4000, 1000)
    assert out["ratios"] == pytest.approx([2.0, 2.5, 2.0])
    assert out["speedup"] == pytest.approx(2.0)
    assert out["ms_per_group_update"] == pytest.approx(200.0)
    assert out["ms_per_seed_update_replicas"] == pytest.approx(50.0)
    assert out["ms_per_seed_update_sequential"] == pytest.approx(125.0)
    assert out["flops_per_s"] == pytest.approx(4000 / 0.2)
    assert out["updates"] == 3 and out["flops_match"] is True
    assert perf.replica_stats(4, [0.1], [0.2], 3999, 1000)["flops_match"] is False


def test_replica_fractions_and_best_against_target():
    """Fraction = group FLOP/s / peak; the best R per method decides the target."""
    section = {
        "target": perf.REPLICA_TARGET,
        "methods": {
            "a": [{"R": 1, "flops_per_s": 20.0}, {"R": 4, "flops_per_s": 60.0}],
            "b": [{"R": 1, "flops_per_s": 30.0}, {"R": 4, "flops_per_s": 10.0}],
        },
    }
    perf.add_replica_fractions(section, 100.0)
    assert [r["peak_fraction"] for r in section["methods"]["a"]] == pytest.approx([0.2, 0.6])
    assert section["best"]["a"] == {"R": 4, "peak_fraction": pytest.approx(0.6), "met": True}
    assert section["best"]["b"] == {"R": 1, "peak_fraction": pytest.approx(0.3), "met": False}
    assert section["peak"] == 100.0


def test_timed_updates_fewer_for_large_r():
    assert [perf.timed_updates(32, 2, r) for r in (1, 4, 16, 64)] == [32, 8, 2, 2]
    assert perf.timed_updates(5, 1, 2) == 3


def test_time_alternating_order():
    """A B, B A, A B, and each duration lands in its own function's list: `a` sleeps 20 ms,
    so every time of `a` is at least that, and `b`'s (a no-op) are positive."""
    calls = []

    def a():
        calls.append("a")
        time.sleep(0.02)

    ta, tb = perf.time_alternating(a, lambda: calls.append("b"), 3, CPU)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert len(ta) == len(tb) == 3
    assert min(ta) >= 0.02 and min(tb) > 0


def test_group_update_flops_count_batched_matmuls():
    """FlopCounterMode counts bmm/baddbmm: an R-replica GAN update is R x the analytic
    count of one update, and one StackedLinear is R x a Linear."""
    from mcbench.plugin.replicas import StackedLinear
    from mcbench.run.runner import build_group

    p = MIXTURE2D
    m, _, _ = build_group([RunSpec("gan", "ring", s, 1, 1, 1) for s in range(2)], CPU)
    n = m.problem.batch_size
    analytic = perf.gan_step_flops(p.latent_dim, p.hidden, 2, p.batch_size)
    assert perf.count_flops(lambda: m.step(m.problem.sample_real(n))) == 2 * analytic
    lin = StackedLinear([torch.nn.Linear(5, 7) for _ in range(3)])
    assert perf.count_flops(lambda: lin(torch.zeros(3, 11, 5))) == 3 * 2 * 11 * 5 * 7


def test_nearest_replicas_prefers_smaller_on_tie():
    assert perf.nearest_replicas(5, [1, 4, 16, 64]) == 4
    assert perf.nearest_replicas(10, [4, 16]) == 4
    assert perf.nearest_replicas(100, [1, 4, 16, 64]) == 64
    assert perf.nearest_replicas(3, [3]) == 3


def test_projection_with_replicas(tmp_path):
    """A measured method trains at its per seed-update replica cost at the suite's R
    (nearest measured R); the others keep the sequential cost and are named."""
    suite = tmp_path / "s.toml"
    suite.write_text(
        'methods = ["gan", "lbt"]\ndatasets = ["ring"]\nseeds = [0, 1, 2]\n'
        "steps = 40\neval_every = 20\neval_samples = 1000\n"
    )
    step = {"gan": 0.01, "lbt": 0.1}
    gen, diag, metric = {"gan": 0.5, "lbt": 0.5}, {"gan": 0.0, "lbt": 0.0}, {"ring": 0.25}
    base = perf.project_suite(str(suite), step, gen, 1000, diag, metric, 1000)
    assert "replicas" not in base
    per_seed = {"gan": {1: 0.012, 2: 0.004, 4: 0.002}}
    out = perf.project_suite(str(suite), step, gen, 1000, diag, metric, 1000, per_seed)
    pr = out["replicas"]
    eval_one = 2 * (0.5 + 0.25)  # two evaluations a run
    gan = pr["per_method"]["gan"]
    assert (gan["R"], gan["R_measured"], gan["source"]) == (3, 2, "replicas")
    assert gan["total_s"] == pytest.approx(3 * (40 * 0.004 + eval_one))
    assert gan["sequential_s"] == pytest.approx(out["per_method"]["gan"]["total_s"])
    lbt = pr["per_method"]["lbt"]
    assert lbt["source"] == "sequential" and pr["sequential"] == ["lbt"]
    assert lbt["total_s"] == pytest.approx(out["per_method"]["lbt"]["total_s"])
    assert pr["total_s"] == pytest.approx(gan["total_s"] + lbt["total_s"])
    md = "\n".join(perf._projection_replicas_md(out, True))
    assert "| gan | 3 | 2 | 4 |" in md and "Sequential cost used for lbt" in md


def test_graphs_not_measured_on_cpu():
    """No CUDA: no number, a reason; the Markdown says so and the CSV has no rows."""
    out = perf.measure_graphs(["gan"], "ring", CPU, [1], 0, 1, 1)
    assert out["measured"] is False and out["reason"] == perf.NO_CUDA
    assert "entries" not in out
    md = "\n".join(perf._graphs_md(out))
    assert "Not measured: CUDA graphs need a CUDA device" in md
    assert perf.rows_of({"sections": {"graphs": out}}) == []


def test_graphs_bookkeeping_with_a_stand_in_capture(monkeypatch):
    """The timing and skip bookkeeping, on a CPU with a capture that replays eagerly:
    None from capture_step, or a method without replicas at R > 1, are skipped notes."""
    monkeypatch.setattr(perf, "replica_capable", lambda sel: sel == "gan")

    def capture(method, real):
        assert real.shape[method.problem.batch_dim] == method.problem.batch_size
        if type(method).__name__ != "GAN":
            return None
        return lambda r: method.step(r)

    out = perf.measure_graphs(["gan", "pacgan"], "ring", CPU, [1, 2], 0, 1, 2, capture)
    assert out["measured"] is True
    assert [(e["method"], e["R"]) for e in out["entries"]] == [("gan", 1), ("gan", 2)]
    for e in out["entries"]:
        assert len(e["eager_s"]) == len(e["graph_s"]) == 2
        assert e["ms_graph_per_seed"] == pytest.approx(e["ms_graph"] / e["R"])
    skipped = {(s["method"], s["R"]): s["reason"] for s in out["skipped"]}
    assert "returned None" in skipped[("pacgan", 1)]
    assert skipped[("pacgan", 2)] == perf.NOT_REPLICA
    md = "\n".join(perf._graphs_md(out))
    assert "| gan | 2 |" in md and "Not measured: pacgan at R=2" in md


def test_replicas_and_graphs_sections_tiny(tmp_path, monkeypatch):
    """R in 1,2 with one timed update: JSON, CSV and Markdown of the replicas section
    (peak measured with it), a method without replicas skipped with a note, and the
    graphs section not measured on the CPU."""
    real = perf.replica_capable
    monkeypatch.setattr(perf, "replica_capable", lambda sel: sel != "pacgan" and real(sel))
    out = tmp_path / "perf"
    argv = ["--out", str(out), "--sections", "replicas,graphs", "--replicas-list", "1,2"]
    argv += ["--replica-methods", "gan,pacgan", "--replica-warmup", "0"]
    argv += ["--replica-seed-updates", "1", "--replica-min-updates", "1"]
    argv += ["--peak-size", "64", "--peak-reps", "1"]
    assert perf.main(argv) == 0

    res = json.loads((out / "perf.json").read_text())
    assert set(res["sections"]) == {"peak", "replicas", "graphs"}
    rs = res["sections"]["replicas"]
    assert rs["device"] == "cpu" and res["sections"]["graphs"]["device"] == "cpu"
    assert [r["R"] for r in rs["methods"]["gan"]] == [1, 2]
    assert all(r["updates"] == 1 and r["flops_match"] for r in rs["methods"]["gan"])
    assert rs["skipped"] == {"pacgan": perf.NOT_REPLICA}
    assert rs["best"]["gan"]["R"] in (1, 2)
    peak = res["sections"]["peak"]["best"]
    for r in rs["methods"]["gan"]:
        assert r["peak_fraction"] == pytest.approx(r["flops_per_s"] / peak)

    with open(out / "perf.csv") as f:
        rows = list(csv.DictReader(f))
    items = {r["item"] for r in rows if r["section"] == "replicas"}
    assert items == {"gan R=1", "gan R=2", "gan"}
    assert not [r for r in rows if r["section"] == "graphs"]

    md = (out / "perf.md").read_text()
    assert "## Replicas: R seeds in one update" in md
    assert "| gan | 2 | 1 |" in md  # R, timed updates
    assert f"target: at least {perf.REPLICA_TARGET:.2f}" in md
    assert "Not measured: pacgan" in md
    assert "Not measured: CUDA graphs need a CUDA device (this run: cpu)." in md


def test_replica_and_graph_options_fail_with_one_line(capsys):
    assert perf.main(["--replicas-list", "0,2"]) == 2
    assert perf.main(["--graph-replicas", "a"]) == 2
    assert perf.main(["--replicas-list", "2,2"]) == 2
    assert perf.main(["--sections", "replicas", "--replica-methods", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 4 and all(line.startswith("perf: error:") for line in err)


def test_steady_section_tiny(tmp_path, monkeypatch):
    """The issue-16 section: intervals, spread against their median, fraction of the peak
    measured in the section, and the neighbour job started and stopped; a selector
    ending in --compile runs through the harness's compiled update (not compiled here:
    the write-back path, fast) with the eager update's FLOPs."""
    from mcbench.run import compiled

    monkeypatch.setattr(compiled, "BACKEND", "none")
    out = tmp_path / "perf"
    argv = ["--out", str(out), "--sections", "steady", "--steady-methods", "gan,gan --compile"]
    argv += ["--steady-updates", "4", "--steady-interval", "2", "--method-warmup", "1"]
    argv += ["--peak-size", "64", "--peak-reps", "1"]
    assert perf.main(argv) == 0
    st = json.loads((out / "perf.json").read_text())["sections"]["steady"]
    g = st["methods"]["gan"]
    assert len(g["interval_ms_per_update"]) == 2
    med = statistics.median(g["interval_ms_per_update"])
    assert g["ms_median"] == pytest.approx(med)
    assert g["spread"] == pytest.approx(
        max(abs(x - med) for x in g["interval_ms_per_update"]) / med
    )
    assert g["peak_fraction"] == pytest.approx(g["flops_per_s"] / st["peak"])
    probes = g["probe_flops_per_s"]  # one after each interval
    assert len(probes) == len(g["interval_ms_per_update"]) and min(probes) > 0
    assert st["peak"] == max(st["peaks"]) and st["load"] is True
    assert st["methods"]["gan --compile"]["flops_per_update"] == g["flops_per_update"] > 0
    md = (out / "perf.md").read_text()
    assert "Steady updates" in md and "gan --compile" in md


def test_neighbour_load_is_stopped():
    with perf.neighbour_load(True) as proc:
        assert proc.poll() is None  # running
    assert proc.poll() is not None
    with perf.neighbour_load(False) as none:
        assert none is None


def test_steady_interval_must_fit(capsys):
    assert (
        perf.main(["--sections", "steady", "--steady-updates", "5", "--steady-interval", "10"]) == 2
    )
    assert "--steady-interval" in capsys.readouterr().err


def test_python_m_mcbench_perf_runs_the_tool(tmp_path):
    """`python -m mcbench.perf` (the name the README and issue 16 use) is the tool."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "mcbench.perf", "--sections", "nonsense", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert "unknown section(s) nonsense" in out.stderr
