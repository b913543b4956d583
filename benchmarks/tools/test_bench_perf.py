"""The measurements of `python benchmarks/tools/perf.py` as pytest-benchmark benchmarks.

Outside the default test paths; run explicitly, on a quiet machine:

    pytest benchmarks/tools/test_bench_perf.py --benchmark-enable --benchmark-group-by=group

One thread (set here), the GPU where there is one. Groups: `overhead` (whole GAN runs of
the harness and of the bare loop, and the interleaved marginal-cost ratio in the
extra_info of `test_overhead_ratio`), `peak` (fp32 matmul, GFLOP/s in extra_info),
`metrics` (500,000 samples of ring and grid), `update` (one generator update of every
registered method, FLOPs and GFLOP/s in extra_info), `generate` (500,000 samples),
`replicas` (one update of an R-replica group of gan and lbt, R = 1, 4, 16, 64; ms per
seed-update and FLOPs in extra_info) and `graphs` (an update replayed from a captured
CUDA graph; CUDA only, skipped elsewhere). The suite projection, processes against
threads and the interleaved replicas-against-sequential ratios need the script (they
combine numbers or run several processes).
"""

from __future__ import annotations

import perf
import pytest
import torch

from mcbench.datasets import get_dataset
from mcbench.plugin.registry import methods
from mcbench.run.runner import RunSpec, build, build_group, default_device, derive_seed, generate

RUN_STEPS = 300
EVAL_SAMPLES = 500_000
PEAK_SIZE = 2048
UPDATE_METHODS = [*methods(), "lbt[preset=paper]"]
REPLICA_METHODS = ["gan", "lbt"]
REPLICAS = [1, 4, 16, 64]
GRAPH_METHODS = ["gan", "unrolled-gan", perf.LBT_GRAPH_METHOD]
GRAPH_REPLICAS = [1, 64]


def _min_seconds(benchmark) -> float | None:
    """The fastest round, or None when benchmarks are disabled (a single plain call)."""
    return benchmark.stats.stats.min if benchmark.stats else None


@pytest.mark.benchmark(group="overhead")
@pytest.mark.parametrize("loop", ["bare", "harness"])
def test_gan_run(benchmark, loop: str) -> None:
    """A whole GAN run of RUN_STEPS updates on ring: construction included (constant)."""
    device = default_device()
    run = perf.bare_run if loop == "bare" else perf.harness_run
    benchmark.pedantic(run, args=(RUN_STEPS, device), rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"loop": loop, "steps": RUN_STEPS, "device": str(device)})


@pytest.mark.benchmark(group="overhead")
def test_overhead_ratio(benchmark) -> None:
    """The script's measurement: marginal cost per update, harness / bare, interleaved."""
    device = default_device()
    out = benchmark.pedantic(
        perf.measure_overhead, args=(device, RUN_STEPS, 30, 5), rounds=1, iterations=1
    )
    benchmark.extra_info.update(
        {
            "ratio_median": out["ratio_median"],
            "ratios": out["ratios"],
            "ms_per_update": out["ms_median"],
            "target": out["target"],
            "device": str(device),
        }
    )
    assert out["ratio_median"] > 0


@pytest.mark.benchmark(group="peak")
def test_matmul_peak(benchmark) -> None:
    device = default_device()
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(PEAK_SIZE, PEAK_SIZE, generator=g, device=device)
    b = torch.randn(PEAK_SIZE, PEAK_SIZE, generator=g, device=device)

    def mm() -> None:
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    benchmark.pedantic(mm, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"size": PEAK_SIZE, "device": str(device)})
    if (t := _min_seconds(benchmark)) is not None:
        benchmark.extra_info["gflops_best"] = 2 * PEAK_SIZE**3 / t / 1e9


@pytest.mark.benchmark(group="metrics")
@pytest.mark.parametrize("dataset", ["ring", "grid"])
def test_metrics_500k(benchmark, dataset: str) -> None:
    ds = get_dataset(dataset)
    rng = torch.Generator().manual_seed(derive_seed(0, f"perf-{dataset}"))
    x = ds.sample(EVAL_SAMPLES, rng, torch.device("cpu"))
    out = benchmark.pedantic(ds.evaluate, args=(x,), rounds=3, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"samples": EVAL_SAMPLES, "modes": len(ds.centers)})
    assert out["modes_covered"] == len(ds.centers)  # true samples cover every mode


@pytest.mark.benchmark(group="update")
@pytest.mark.parametrize("method", UPDATE_METHODS)
def test_update(benchmark, method: str) -> None:
    """One generator update (the runner's real-data draw included) on ring."""
    device = default_device()
    m, ds, data_rng = build(RunSpec(method, "ring", 0, 1, 1, 1), device)
    n = m.problem.batch_size

    def update() -> None:
        m.step(ds.sample(n, data_rng, device))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(2):
        update()
    flops = perf.count_flops(update)
    benchmark.pedantic(update, rounds=10, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"method": method, "flops": flops, "device": str(device)})
    if (t := _min_seconds(benchmark)) is not None:
        benchmark.extra_info["gflops_at_best"] = flops / t / 1e9


@pytest.mark.benchmark(group="generate")
def test_generate_500k(benchmark) -> None:
    device = default_device()
    m, _, _ = build(RunSpec("gan", "ring", 0, 1, 1, 1), device)
    rng = torch.Generator(device).manual_seed(0)
    x = benchmark.pedantic(
        generate, args=(m, EVAL_SAMPLES, rng), rounds=3, iterations=1, warmup_rounds=1
    )
    assert x.shape == (EVAL_SAMPLES, 2)


@pytest.mark.benchmark(group="replicas")
@pytest.mark.parametrize("replicas", REPLICAS)
@pytest.mark.parametrize("method", REPLICA_METHODS)
def test_replica_update(benchmark, method: str, replicas: int) -> None:
    """One update of an R-replica group (seeds 0..R-1) on ring, real-data draw included."""
    if not perf.replica_capable(method):
        pytest.skip(perf.NOT_REPLICA)
    device = default_device()
    specs = [RunSpec(method, "ring", seed, 1, 1, 1) for seed in range(replicas)]
    m, _, _ = build_group(specs, device)
    n = m.problem.batch_size

    def update() -> None:
        m.step(m.problem.sample_real(n))
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    update()
    flops = perf.count_flops(update)
    rounds = perf.timed_updates(32, 2, replicas)
    benchmark.pedantic(update, rounds=rounds, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update(
        {"method": method, "R": replicas, "flops": flops, "device": str(device)}
    )
    if (t := _min_seconds(benchmark)) is not None:
        benchmark.extra_info["ms_per_seed_update_at_best"] = 1000 * t / replicas
        benchmark.extra_info["gflops_at_best"] = flops / t / 1e9


@pytest.mark.benchmark(group="graphs")
@pytest.mark.parametrize("replicas", GRAPH_REPLICAS)
@pytest.mark.parametrize("method", GRAPH_METHODS)
def test_graph_update(benchmark, method: str, replicas: int) -> None:
    """One update replayed from a captured CUDA graph (fresh real batch each time)."""
    device = default_device()
    if device.type != "cuda":
        pytest.skip(perf.NO_CUDA)
    capture, why = perf.load_capture_step()
    if capture is None:
        pytest.skip(why)
    if replicas > 1 and not perf.replica_capable(method):
        pytest.skip(perf.NOT_REPLICA)
    m = perf.build_for(method, "ring", replicas, device, capturable=True)
    n = m.problem.batch_size
    for _ in range(3):  # capture needs the optimiser states to exist
        m.step(m.problem.sample_real(n))
    replay = capture(m, m.problem.sample_real(n))
    if replay is None:
        pytest.skip("capture_step returned None (capture impossible)")

    def update() -> None:
        replay(m.problem.sample_real(n))
        torch.cuda.synchronize(device)

    benchmark.pedantic(update, rounds=20, iterations=1, warmup_rounds=3)
    benchmark.extra_info.update({"method": method, "R": replicas, "device": str(device)})
    if (t := _min_seconds(benchmark)) is not None:
        benchmark.extra_info["ms_per_seed_update_at_best"] = 1000 * t / replicas
