"""Time per generator update against the unroll depth K (pytest-benchmark).

Outside the default test paths; run explicitly (CPU here, the GPU where there is one):

    pytest benchmarks/tools/test_bench_depth.py --benchmark-enable --benchmark-group-by=param:method

Each point builds the method on `ring` under the common protocol (batch 512), takes two
warm-up updates, then times single updates. On CUDA the peak memory of the timed updates
goes into the benchmark's extra_info; CPU peak memory per K is measured by
`python -m mcbench.depth_study` (one process per point, since RSS peaks never reset).
"""

from __future__ import annotations

import pytest
import torch

from mcbench.plugin.registry import methods
from mcbench.run.runner import RunSpec, build, default_device

KS = [1, 2, 5, 10, 20]
METHODS = ["lbt", "lbt-gan", "unrolled-gan", "lbt-implicit"]


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("method", METHODS)
def test_time_per_update(benchmark, method: str, k: int) -> None:
    if method not in methods():
        pytest.skip(f"{method} is not registered")
    if method == "lbt-implicit" and k != KS[0]:
        pytest.skip("lbt-implicit has no unroll depth (its cost is set by `iterations`)")
    device = default_device()
    m, ds, data_rng = build(RunSpec(method, "ring", 0, 1, 1, 1, {"K": k}), device)
    real = ds.sample(m.problem.batch_size, data_rng, device)
    for _ in range(2):
        m.step(real)

    def update() -> None:
        m.step(real)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    benchmark.pedantic(update, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info.update({"method": method, "K": k, "device": str(device)})
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
        benchmark.extra_info["peak_mem_mb"] = peak / 2**20
    losses = m.step(real)
    assert all(torch.isfinite(v) for v in losses.values())
