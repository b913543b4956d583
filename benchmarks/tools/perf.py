"""Performance of the harness on this machine, as ratios measured in one run (issue 8).

Sections (each can be chosen with --sections):
  overhead    the harness's GAN step (mcbench.run.runner.train: registry method on ring, the
              runner's real-data sampling, timing and loss checks) against a bare
              hand-written PyTorch loop doing the same step (same nets, Adam, batch).
              Per-step cost of each is the marginal cost T(warmup + steps) - T(warmup)
              over `steps`, so construction, warm-up and the final evaluation cancel;
              repetitions alternate A B B A ..., the ratio is the median of the
              per-repetition ratios. Target (issue 8): at most 1.10 on CPU.
  peak        dense fp32 torch.mm of n x n at the run's thread count (best of reps), at
              the start and the end of the run; the larger is the peak.
  metrics     the mixture metrics of --eval-samples samples of ring (8 modes) and grid
              (100 modes), drawn from the true distribution.
  methods     generator updates per second of every registered method (and of the
              suite's and --extra-methods' selectors) on --dataset, blocks of updates
              round-robin over methods; FLOPs of one update counted with
              torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions), so
              achieved FLOP/s as a fraction of the peak, the spread of its blocks (largest
              distance from their median, over it); and what one evaluation costs
              (generating --eval-samples samples and the method's diagnostics).
  replicas    one update of an R-replica group (mcbench.run.runner.build_group: R seeds
              trained together) against R updates of the single-seed run, for each
              --replica-methods method whose class has `vectorized = True` and each R in
              --replicas-list; interleaved, medians: ms per seed-update of each, the
              speed-up, and the group update's FLOP/s as a fraction of the peak (which
              this section therefore also measures). Target (issue 8): with replicas,
              the GAN and LBT steps reach at least 0.5 of the matmul peak on CPU.
  graphs      one update replayed from a captured CUDA graph
              (mcbench.run.graphs.capture_step) against the eager update, for
              --graph-methods at each R in --graph-replicas; CUDA only (on a CPU the
              section says it was not measured). Target: an LBT update (K=5, M=15)
              in at most 10 ms.
  projection  the --suite's wall time (every run's updates and evaluations) from the
              measured costs, one process at --threads threads: hours per method; and,
              where the replicas section measured a method, the same with its seeds
              trained together (per seed-update cost at the suite's R, or the nearest
              measured R).
  steady      the issue-16 targets: each --steady-methods method trained for
              --steady-updates updates in intervals of --steady-interval, one seed, with
              (--steady-load, default) another single-threaded job busy on a second core:
              ms per update of each interval, the spread (largest distance of an
              interval from the median, over the median) and the update's FLOP/s as a
              fraction of the matmul peak measured in this section under the same load;
              a matmul probe after each interval shows how much the host itself moved.
              Targets (issue 16): LBT >= 0.47 and GAN >= 0.45 of the peak; spread <= 15%.
A selector ending in " --compile" (methods and steady sections; by default gan and lbt)
is timed as `mcbench run --compile` trains it: the harness's Stepper running the
method's functional update compiled whole (compiled before timing starts); its FLOPs
are the eager update's (the same work; compiled matmuls are not dispatched through the
Python mode that counts them).
  processes   GAN throughput of --processes processes of 1 thread each against one
              process of --processes threads (CPU only), in overlapping windows.

Writes perf.json (raw numbers, settings, device), perf.csv and perf.md to --out.

    python benchmarks/tools/perf.py --out results/reference/perf
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

from mcbench.datasets import get_dataset
from mcbench.errors import McbenchError
from mcbench.plugin.protocol import MIXTURE2D
from mcbench.plugin.registry import methods, resolve
from mcbench.run.compiled import check_compilable
from mcbench.run.graphs import Stepper
from mcbench.run.runner import (
    RunSpec,
    build,
    build_group,
    cpu_model,
    default_device,
    derive_seed,
    generate,
    train,
)
from mcbench.run.steady import keep_freed_memory

CSV_COLUMNS = ("section", "item", "metric", "value", "unit")
SECTIONS = (
    "overhead",
    "peak",
    "metrics",
    "methods",
    "replicas",
    "graphs",
    "projection",
    "steady",
    "processes",
)
STEADY_TARGETS = {"lbt": 0.47, "gan": 0.45}  # issue 16: fraction of the matmul peak
STEADY_SPREAD_TARGET = 0.15  # issue 16: 20-update intervals within 15% of the median
LOAD_JOB = (
    "import torch\n"
    "torch.set_num_threads(1)\n"
    "a = torch.randn(512, 512)\n"
    "while True:\n"
    "    a = torch.tanh(a @ a / 512)\n"
)
OVERHEAD_TARGET = 1.10  # issue 8: the harness adds at most 10% per GAN step on CPU
REPLICA_TARGET = 0.5  # issue 8: with replicas, GAN and LBT steps reach 0.5 of the CPU peak
LBT_GRAPH_TARGET_MS = 10.0  # issue 8: an LBT update (K=5, M=15) in 10 ms with CUDA graphs
LBT_GRAPH_METHOD = "lbt[preset=paper]"
NO_CUDA = "CUDA graphs need a CUDA device"


# -- device and timing -------------------------------------------------------------------


def device_info(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on: CPU model, threads, torch, GPU."""
    info: dict[str, Any] = {
        "device": str(device),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "host": platform.node(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
    }
    try:
        info["cpus_usable"] = len(os.sched_getaffinity(0))
        info["load_avg"] = list(os.getloadavg())
    except (AttributeError, OSError):  # not on Linux
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    return info


def now(device: torch.device) -> float:
    """Wall time after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


# -- 1. the bare loop and the harness ------------------------------------------------------


class BareGAN:
    """The GAN step written by hand in plain PyTorch: what the harness is compared with.

    Same nets (the 2-D protocol's MLPs), losses, Adam settings, batch and ring data as
    `mcbench.run.runner.train` running ``gan`` on ``ring``; none of the harness's code.
    """

    def __init__(self, device: torch.device, seed: int = 0) -> None:
        p = MIXTURE2D
        act = {"tanh": nn.Tanh, "relu": nn.ReLU}[p.activation]

        def net(d_in: int, d_out: int) -> nn.Sequential:
            layers: list[nn.Module] = []
            for h in p.hidden:
                layers += [nn.Linear(d_in, h), act()]
                d_in = h
            return nn.Sequential(*layers, nn.Linear(d_in, d_out)).to(device)

        ring = get_dataset("ring")
        torch.manual_seed(seed)
        self.device, self.n, self.latent = device, p.batch_size, p.latent_dim
        self.gen = torch.Generator(device).manual_seed(seed)
        self.centers = torch.as_tensor(ring.centers, dtype=torch.float32, device=device)
        self.std = ring.std
        self.G, self.D = net(p.latent_dim, 2), net(2, 1)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=p.lr_g, betas=p.betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=p.lr_d, betas=p.betas)

    def step(self) -> tuple[torch.Tensor, torch.Tensor]:
        n, g, dev = self.n, self.gen, self.device
        idx = torch.randint(len(self.centers), (n,), generator=g, device=dev)
        real = self.centers[idx] + self.std * torch.randn(n, 2, generator=g, device=dev)
        fake = self.G(torch.randn(n, self.latent, generator=g, device=dev)).detach()
        loss_d = F.softplus(-self.D(real)).mean() + F.softplus(self.D(fake)).mean()
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()
        z = torch.randn(n, self.latent, generator=g, device=dev)
        loss_g = F.softplus(-self.D(self.G(z))).mean()
        self.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        self.opt_g.step()
        return loss_d.detach(), loss_g.detach()


def bare_run(steps: int, device: torch.device) -> float:
    """Seconds to build the bare GAN and take `steps` updates."""
    t0 = now(device)
    bare = BareGAN(device)
    for _ in range(steps):
        bare.step()
    return now(device) - t0


HARNESS_EVAL_SAMPLES = 1_000  # the runner evaluates once at the end; it cancels out


def harness_run(steps: int, device: torch.device) -> float:
    """Seconds for `mcbench.run.runner.train` to run ``gan`` on ``ring`` for `steps` updates
    (one evaluation, of few samples, at the end)."""
    spec = RunSpec("gan", "ring", 0, steps, steps, HARNESS_EVAL_SAMPLES)
    t0 = now(device)
    _, _, status = train(spec, device)
    dt = now(device) - t0
    if status["status"] != "ok":
        raise McbenchError(f"the harness's GAN run failed: {status['reason']}")
    return dt


def measure_overhead(
    device: torch.device,
    steps: int,
    warmup: int,
    reps: int,
    runners: dict[str, Callable[[int, torch.device], float]] | None = None,
) -> dict[str, Any]:
    """Marginal seconds per step of the harness and of the bare loop, interleaved."""
    runners = runners or {"harness": harness_run, "bare": bare_run}
    names = list(runners)
    for name in names:  # first calls pay one-time costs (imports, allocator): untimed
        runners[name](warmup, device)
    per_step: dict[str, list[float]] = {k: [] for k in names}
    raw: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    ratios = []
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]  # A B, B A, ...: drift cancels
        for name in order:
            long = runners[name](warmup + steps, device)
            short = runners[name](warmup, device)
            raw[name].append((long, short))
            per_step[name].append((long - short) / steps)
        ratios.append(per_step[names[0]][-1] / per_step[names[1]][-1])
    return {
        "steps": steps,
        "warmup": warmup,
        "reps": reps,
        "run_s_long_short": raw,
        "per_step_s": per_step,
        "ratios": ratios,
        "ratio_median": median(ratios),
        "ms_median": {k: 1000 * median(v) for k, v in per_step.items()},
        "target": OVERHEAD_TARGET,
    }


# -- 2. FLOPs and the matmul peak ----------------------------------------------------------


def linear_flops(dims: list[int], n: int) -> tuple[int, int]:
    """(forward FLOPs of an MLP with layer widths `dims` on n rows, of its first layer)."""
    total = sum(2 * n * a * b for a, b in itertools.pairwise(dims))
    return total, 2 * n * dims[0] * dims[1]


def gan_step_flops(latent: int, hidden: tuple[int, ...], data_dim: int, n: int) -> int:
    """Matmul FLOPs of one GAN update (one D step, one G step), from the layer sizes.

    D step: G forward (its output detached), D forward on real and fake, D backward:
    weight gradients everywhere, input gradients past the first layer (the inputs need
    none). G step: G and D forward; D backward with weight and input gradients; G
    backward with weight gradients, input gradients past the first layer.
    """
    fg, fg1 = linear_flops([latent, *hidden, data_dim], n)
    fd, fd1 = linear_flops([data_dim, *hidden, 1], n)
    d_step = fg + 2 * fd + 2 * fd + 2 * (fd - fd1)
    g_step = fg + fd + 2 * fd + fg + (fg - fg1)
    return d_step + g_step


def count_flops(fn: Callable[[], Any]) -> int:
    """Matmul and convolution FLOPs of one call (forward and backward), counted at the
    dispatcher. FlopCounterMode's module tracking cannot follow `autograd.grad` into a
    leaf input (WGAN-GP's penalty on interpolates); the count does not need it."""
    counts = [0]

    class Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            flop = flop_registry.get(func._overloadpacket)
            if flop is not None:
                counts[0] += flop(*args, **(kwargs or {}), out_val=out)
            return out

    with Count():
        fn()
    return int(counts[0])


def matmul_peak(device: torch.device, size: int, reps: int) -> dict[str, Any]:
    """FLOP/s of a dense fp32 n x n matmul, best and median of `reps` after one warm-up."""
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(size, size, generator=g, device=device)
    b = torch.randn(size, size, generator=g, device=device)
    out = torch.empty(size, size, device=device)
    torch.mm(a, b, out=out)
    rates = []
    for _ in range(reps):
        t0 = now(device)
        torch.mm(a, b, out=out)
        rates.append(2 * size**3 / (now(device) - t0))
    return {"size": size, "reps": reps, "flops_per_s": rates, "best": max(rates)}


# -- 3. metric evaluation ------------------------------------------------------------------


def measure_metrics(datasets: list[str], n: int, reps: int) -> dict[str, Any]:
    """Seconds to evaluate n samples of each dataset (its own true samples), interleaved."""
    data = {}
    for name in datasets:
        ds = get_dataset(name)
        rng = torch.Generator().manual_seed(derive_seed(0, f"perf-{name}"))
        data[name] = (ds, ds.sample(n, rng, torch.device("cpu")))
    times: dict[str, list[float]] = {k: [] for k in datasets}
    values = {}
    for _ in range(reps):
        for name, (ds, x) in data.items():
            t0 = time.perf_counter()
            values[name] = ds.evaluate(x)
            times[name].append(time.perf_counter() - t0)
    return {
        name: {
            "samples": n,
            "modes": len(getattr(data[name][0], "centers", [])),
            "seconds": times[name],
            "seconds_median": median(times[name]),
            "values": values[name],
        }
        for name in datasets
    }


# -- 4. every method -------------------------------------------------------------------------


def method_list(chosen: str, extra: list[str], suite_selectors: list[str]) -> list[str]:
    """`chosen` ("all": every registered name, or a comma list), then the suite's and
    the extra selectors not already there; every one is resolved (bad names fail now)."""
    out = (
        list(methods()) if chosen == "all" else [s.strip() for s in chosen.split(",") if s.strip()]
    )
    for s in [*suite_selectors, *extra]:
        if s not in out:
            out.append(s)
    for s in out:
        _check_selector(s)
    return out


def measure_methods(
    selectors: list[str],
    dataset: str,
    device: torch.device,
    warmup: int,
    steps: int,
    reps: int,
    eval_samples: int,
    generate_reps: int,
) -> dict[str, Any]:
    """Per-update time (blocks round-robin over methods), FLOPs of one update, and the
    cost of one evaluation's generation and diagnostics."""
    built = {sel: updater(sel, dataset, device) for sel in selectors}

    def block(sel: str, k: int) -> None:
        for _ in range(k):
            built[sel][1]()

    for sel in selectors:
        block(sel, warmup)  # a compiled update compiles here
    per_step = time_blocks({s: lambda s=s: block(s, 1) for s in selectors}, steps, reps, device)
    flops = {sel: count_flops(built[sel][2]) for sel in selectors}
    gen: dict[str, list[float]] = {s: [] for s in selectors}
    diag: dict[str, list[float]] = {s: [] for s in selectors}
    for sel in selectors:  # warm the generation path on a small batch
        generate(built[sel][0], min(eval_samples, 1024), torch.Generator(device).manual_seed(0))
    for r in range(generate_reps):
        for sel in selectors:
            m = built[sel][0]
            rng = torch.Generator(device).manual_seed(derive_seed(r, "perf-eval"))
            t0 = now(device)
            generate(m, eval_samples, rng)
            t1 = now(device)
            m.diagnostics()
            gen[sel].append(t1 - t0)
            diag[sel].append(now(device) - t1)
    out = {}
    for sel in selectors:
        s = median(per_step[sel])
        out[sel] = {
            "step_s": per_step[sel],
            "step_s_median": s,
            "updates_per_s": 1.0 / s,
            "flops_per_update": flops[sel],
            "flops_per_s": flops[sel] / s,
            "generate_s": median(gen[sel]),
            "generate_samples": eval_samples,
            "diagnostics_s": median(diag[sel]),
            "spread": block_spread(per_step[sel]),
        }
    return out


COMPILE = " --compile"  # a selector so suffixed is timed as `mcbench run --compile` trains it


def updater(
    selector: str, dataset: str, device: torch.device
) -> tuple[Any, Callable[[], Any], Callable[[], Any]]:
    """(method, one timed update, one eager update) of a fresh one-seed run: the update
    as the harness's Stepper runs it (compiled for a selector ending in --compile; the
    first call compiles), and the method's eager `step`, whose FLOPs are counted for
    both (a compiled update does the same work, but its matmuls are not dispatched
    through the Python mode that counts them)."""
    base, compiled = selector.removesuffix(COMPILE), selector.endswith(COMPILE)
    m, ds, data_rng = build(RunSpec(base, dataset, 0, 1, 1, 1, compiled=compiled), device)
    stepper = Stepper(m, device, compiled=compiled)
    n = m.problem.batch_size

    def one() -> None:
        stepper(ds.sample(n, data_rng, device))

    def eager() -> None:
        m.step(ds.sample(n, data_rng, device))

    return m, one, eager


def block_spread(blocks: list[float]) -> float:
    """The largest distance of a timed block from the blocks' median, over the median."""
    mid = median(blocks)
    return max(abs(b - mid) for b in blocks) / mid


# -- 4a. steady: the issue-16 targets under a neighbour's load -----------------------------


@contextlib.contextmanager
def neighbour_load(on: bool):
    """A single-threaded matmul job busy for the duration (the other core's neighbour)."""
    if not on:
        yield None
        return
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", LOAD_JOB], env=env)
    try:
        time.sleep(2.0)  # let it start working
        yield proc
    finally:
        proc.kill()
        proc.wait()


PROBE_SIZE = 512  # a 268-MFLOP matmul, about 3 ms on one core of our CPU
PROBE_REPS = 3


def measure_steady(
    selectors: list[str],
    dataset: str,
    device: torch.device,
    updates: int,
    interval: int,
    warmup: int,
    load: bool,
    peak_size: int,
    peak_reps: int,
) -> dict[str, Any]:
    """Each method's `updates` updates timed in intervals of `interval`, one method after
    another, with the matmul peak measured under the same conditions before and after.

    After each interval a short matmul probe (`probe_size`, best of PROBE_REPS, not
    timed as update time) measures how fast the host was just then: on a shared machine
    it moves by 10-25% within minutes, for every program on it, and its range says how
    much of an update's spread the machine alone could explain. (Scaling each interval
    by its probe was tried and does not take the drift out: the probe's own noise is as
    large, and an update and a matmul slow down differently.)"""
    probe_size = min(PROBE_SIZE, peak_size)
    out: dict[str, Any] = {
        "updates": updates,
        "interval": interval,
        "load": load,
        "keep_freed_memory": keep_freed_memory(),
        "methods": {},
    }
    with neighbour_load(load):
        peaks = [matmul_peak(device, peak_size, peak_reps)["best"]]
        for sel in selectors:
            _, one, eager_one = updater(sel, dataset, device)
            for _ in range(warmup):
                one()
            flops = count_flops(eager_one)
            ms, probes = [], []
            for _ in range(max(1, updates // interval)):
                t0 = now(device)
                for _ in range(interval):
                    one()
                ms.append((now(device) - t0) / interval * 1e3)
                probes.append(matmul_peak(device, probe_size, PROBE_REPS)["best"])
            med = median(ms)
            out["methods"][sel] = {
                "interval_ms_per_update": ms,
                "ms_median": med,
                "spread": block_spread(ms),
                "probe_flops_per_s": probes,
                "flops_per_update": flops,
                "flops_per_s": flops / (med / 1e3),
            }
        peaks.append(matmul_peak(device, peak_size, peak_reps)["best"])
    out["peak"] = max(peaks)
    out["peaks"] = peaks
    for v in out["methods"].values():
        v["peak_fraction"] = v["flops_per_s"] / out["peak"]
    return out


def _probes(v: dict[str, Any]) -> str:
    """The probes' range ('-' in runs written before the probe)."""
    p = v.get("probe_flops_per_s")
    return f"{min(p) / 1e9:.0f}-{max(p) / 1e9:.0f}" if p else "-"


def _steady_md(st: dict[str, Any]) -> list[str]:
    load = "with" if st["load"] else "without"
    rows = [
        "## Steady updates (issue 16 targets)",
        "",
        f"One seed, {st['updates']} updates per method in intervals of {st['interval']}, "
        f"{load} a single-threaded matmul job on another core; matmul peak measured under "
        f"the same conditions before and after: {st['peak'] / 1e9:.1f} GFLOP/s "
        f"({', '.join(f'{p / 1e9:.1f}' for p in st['peaks'])}). Freed memory kept in the "
        f"heap (mcbench.run.steady): {st['keep_freed_memory']}. Spread: the largest "
        "distance of an interval from the median, over the median. Host probe: the "
        f"range of a {PROBE_SIZE}-wide matmul's GFLOP/s timed after each interval, how "
        "much the machine itself moved over the same intervals.",
        "",
        "| method | ms per update (median) | intervals min-max | spread | target | "
        "fraction of peak | target | host probe, GFLOP/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, v in st["methods"].items():
        ms = v["interval_ms_per_update"]
        frac_t = STEADY_TARGETS.get(k.removesuffix(COMPILE))  # the method's, either way
        rows.append(
            f"| {k} | {_fmt(v['ms_median'])} | {_fmt(min(ms))}-{_fmt(max(ms))} | "
            f"{v['spread'] * 100:.1f}% | <= {STEADY_SPREAD_TARGET * 100:.0f}% | "
            f"{v['peak_fraction']:.3f} | {f'>= {frac_t}' if frac_t else '-'} | "
            f"{_probes(v)} |"
        )
    return [*rows, ""]


# -- 4b. replicas: R seeds in one update -------------------------------------------------------


def replica_capable(selector: str) -> bool:
    """Whether the method's class may train several seeds together (`vectorized`)."""
    return bool(getattr(resolve(selector)[0].cls, "vectorized", False))


NOT_REPLICA = "its class has no `vectorized = True`: its seeds train one after another"


def timed_updates(seed_updates: int, min_updates: int, replicas: int) -> int:
    """Timed group updates at R replicas: about `seed_updates` seed-updates a side, at
    least `min_updates` (so a large R costs few updates, a small R is timed often)."""
    return max(min_updates, math.ceil(seed_updates / replicas))


def _updater(method: Any) -> Callable[[], Any]:
    """One update of `method` on a fresh real batch from its own data stream(s)."""
    n = method.problem.batch_size
    return lambda: method.step(method.problem.sample_real(n))


def time_alternating(
    a: Callable[[], Any], b: Callable[[], Any], reps: int, device: torch.device
) -> tuple[list[float], list[float]]:
    """Seconds of each call of `a` and of `b`, `reps` of each, in the order A B, B A, ...
    (so a drift of the machine's speed falls on both)."""
    t = time_blocks({"a": a, "b": b}, 1, reps, device)
    return t["a"], t["b"]


def replica_stats(
    replicas: int,
    group_s: list[float],
    sequential_s: list[float],
    group_flops: int,
    single_flops: int,
) -> dict[str, Any]:
    """Numbers of one (method, R): `group_s` are seconds of one R-replica update,
    `sequential_s` seconds of R single-seed updates, paired by repetition. The speed-up
    is the median of the per-repetition ratios sequential / group."""
    ratios = [s / g for g, s in zip(group_s, sequential_s, strict=True)]
    g = median(group_s)
    return {
        "R": replicas,
        "updates": len(group_s),
        "group_s": group_s,
        "sequential_s": sequential_s,
        "ratios": ratios,
        "ms_per_group_update": 1000 * g,
        "ms_per_seed_update_replicas": 1000 * g / replicas,
        "ms_per_seed_update_sequential": 1000 * median(sequential_s) / replicas,
        "speedup": median(ratios),
        "flops_per_group_update": group_flops,
        "flops_per_seed_update": single_flops,
        # every replica does its own run's matmuls, batched: bmm/baddbmm are counted
        "flops_match": group_flops == replicas * single_flops,
        "flops_per_s": group_flops / g,
    }


def measure_replicas(
    selectors: list[str],
    dataset: str,
    device: torch.device,
    replicas: list[int],
    warmup: int,
    seed_updates: int,
    min_updates: int,
) -> dict[str, Any]:
    """For each replica-capable method and each R: one update of the R-replica group
    (seeds 0..R-1) against R consecutive updates of the single-seed run of seed 0 (what
    training the seeds one after another pays per update), alternating, after `warmup`
    updates of each; FLOPs of one group update and of one single update."""
    out: dict[str, Any] = {"device": str(device), "dataset": dataset, "warmup": warmup}
    out["target"] = REPLICA_TARGET
    out["methods"], out["skipped"] = {}, {}
    for sel in selectors:
        if not replica_capable(sel):
            out["skipped"][sel] = NOT_REPLICA
            _log(f"replicas: {sel} skipped ({NOT_REPLICA})")
            continue
        single, _, _ = build(RunSpec(sel, dataset, 0, 1, 1, 1), device)
        one = _updater(single)
        for _ in range(warmup):
            one()
        single_flops = count_flops(one)
        rows = []
        for r in replicas:
            specs = [RunSpec(sel, dataset, seed, 1, 1, 1) for seed in range(r)]
            group, _, _ = build_group(specs, device)
            step = _updater(group)

            def sequential(k: int = r, one: Callable[[], Any] = one) -> None:
                for _ in range(k):
                    one()

            for _ in range(warmup):
                step()
            n = timed_updates(seed_updates, min_updates, r)
            _log(f"replicas: {sel} R={r}, {n} timed update(s) a side")
            group_s, seq_s = time_alternating(step, sequential, n, device)
            rows.append(replica_stats(r, group_s, seq_s, count_flops(step), single_flops))
            del group, step
        out["methods"][sel] = rows
    return out


def add_replica_fractions(section: dict[str, Any], peak: float) -> None:
    """Fraction of `peak` FLOP/s of each group update, and each method's best across R
    against the target."""
    section["peak"] = peak
    section["best"] = {}
    for sel, rows in section["methods"].items():
        for row in rows:
            row["peak_fraction"] = row["flops_per_s"] / peak
        top = max(rows, key=lambda row: row["peak_fraction"])
        section["best"][sel] = {
            "R": top["R"],
            "peak_fraction": top["peak_fraction"],
            "met": top["peak_fraction"] >= section["target"],
        }


# -- 4c. CUDA graphs against eager ---------------------------------------------------------------


def load_capture_step() -> tuple[Callable[..., Any] | None, str]:
    """`mcbench.run.graphs.capture_step`, or None and why not (the module may not exist)."""
    try:
        from mcbench.run.graphs import capture_step
    except ImportError as exc:
        return None, f"mcbench.run.graphs.capture_step is not available ({exc})"
    return capture_step, ""


def build_for(
    selector: str, dataset: str, replicas: int, device: torch.device, capturable: bool = False
) -> Any:
    """The method of one seed (R = 1: the plain run) or of an R-replica group;
    `capturable`: with the optimisers CUDA-graph capture needs (Problem.capturable)."""
    if replicas == 1:
        return build(RunSpec(selector, dataset, 0, 1, 1, 1), device, capturable=capturable)[0]
    specs = [RunSpec(selector, dataset, seed, 1, 1, 1) for seed in range(replicas)]
    return build_group(specs, device, capturable=capturable)[0]


def time_blocks(
    fns: dict[str, Callable[[], Any]], steps: int, reps: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each function: `reps` blocks of `steps` calls, the order of
    the functions reversed every other block."""
    names = list(fns)
    out: dict[str, list[float]] = {k: [] for k in names}
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = now(device)
            for _ in range(steps):
                fns[name]()
            out[name].append((now(device) - t0) / steps)
    return out


def measure_graphs(
    selectors: list[str],
    dataset: str,
    device: torch.device,
    replicas: list[int],
    warmup: int,
    steps: int,
    reps: int,
    capture: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Per update: the eager step (the method as built without graphs) against the
    replay of its captured graph (built with capturable optimisers, `warmup` eager
    updates, captured, `warmup` replays), blocks alternating. Nothing is measured on a
    CPU, nor where `mcbench.run.graphs` is missing; an entry whose capture is impossible
    says so. `capture` stands in for capture_step (tests)."""
    out: dict[str, Any] = {"device": str(device), "dataset": dataset, "measured": False}
    out["target_ms"] = LBT_GRAPH_TARGET_MS
    if capture is None:
        if device.type != "cuda":
            out["reason"] = NO_CUDA
            return out
        capture, why = load_capture_step()
        if capture is None:
            out["reason"] = why
            return out
    out.update(measured=True, warmup=warmup, steps=steps, reps=reps, entries=[], skipped=[])
    for sel in selectors:
        for r in replicas:
            if r > 1 and not replica_capable(sel):
                out["skipped"].append({"method": sel, "R": r, "reason": NOT_REPLICA})
                continue
            eager_m = build_for(sel, dataset, r, device)
            graph_m = build_for(sel, dataset, r, device, capturable=device.type == "cuda")
            eager, before = _updater(eager_m), _updater(graph_m)
            if device.type == "cuda":  # the recipe: warm up on a side stream
                from mcbench.run.graphs import side_stream_step

                warm, gn = side_stream_step(graph_m), graph_m.problem.batch_size

                def before(w=warm, m=graph_m, k=gn) -> None:
                    w(m.problem.sample_real(k))

            for _ in range(max(1, warmup)):  # capture needs optimiser states to exist
                eager()
                before()
            n = graph_m.problem.batch_size
            try:
                replay = capture(graph_m, graph_m.problem.sample_real(n))
            except Exception as exc:  # report it; the other entries go on
                replay, why = None, f"capture failed: {type(exc).__name__}: {exc}"
            else:
                why = "capture_step returned None (capture impossible)"
            if replay is None:
                out["skipped"].append({"method": sel, "R": r, "reason": why})
                continue

            def graph(g: Callable[..., Any] = replay, m: Any = graph_m, n: int = n) -> None:
                g(m.problem.sample_real(n))

            for _ in range(max(1, warmup)):  # the first replay performs the captured update
                graph()
            t = time_blocks({"eager": eager, "graph": graph}, steps, reps, device)
            e, g = median(t["eager"]), median(t["graph"])
            ratios = [a / b for a, b in zip(t["eager"], t["graph"], strict=True)]
            out["entries"].append(
                {
                    "method": sel,
                    "R": r,
                    "eager_s": t["eager"],
                    "graph_s": t["graph"],
                    "ms_eager": 1000 * e,
                    "ms_graph": 1000 * g,
                    "ms_graph_per_seed": 1000 * g / r,
                    "ratios": ratios,
                    "speedup": median(ratios),
                }
            )
    lbt = [x for x in out["entries"] if x["method"] == LBT_GRAPH_METHOD]
    out["lbt_target_met_at_R"] = [
        x["R"] for x in lbt if x["ms_graph_per_seed"] <= LBT_GRAPH_TARGET_MS
    ]
    return out


# -- 5. projection of a suite ------------------------------------------------------------------


def evaluations(steps: int, eval_every: int) -> int:
    """How many evaluations the runner makes: every eval_every steps and at the end."""
    return steps // eval_every + (1 if steps % eval_every else 0)


def project_suite(
    suite: str,
    step_s: dict[str, float],
    generate_s: dict[str, float],
    generate_samples: int,
    diagnostics_s: dict[str, float],
    metric_s: dict[str, float],
    metric_samples: int,
    replica_step_s: dict[str, dict[int, float]] | None = None,
) -> dict[str, Any]:
    """Serial wall time of every run of `suite`: updates x measured step cost, plus each
    evaluation (generation and metrics scaled linearly to the suite's sample count, and
    the method's diagnostics). Step costs come from one dataset's measurement.

    `replica_step_s` (method -> R -> seconds per seed-update with R replicas) adds a
    second projection under "replicas", see `project_replicas`."""
    from mcbench.run.suite import load_suite

    s = load_suite(suite)
    runs = []
    for spec in s.specs:
        if spec.method not in step_s:
            raise McbenchError(f"no measured step cost for {spec.method!r}")
        if spec.dataset not in metric_s:
            raise McbenchError(f"no measured metric cost for {spec.dataset!r}")
        n_eval = evaluations(spec.steps, spec.eval_every)
        scale = spec.eval_samples
        eval_one = (
            generate_s[spec.method] * scale / generate_samples
            + metric_s[spec.dataset] * scale / metric_samples
            + diagnostics_s[spec.method]
        )
        train_s = spec.steps * step_s[spec.method]
        runs.append(
            {
                "method": spec.method,
                "dataset": spec.dataset,
                "seed": spec.seed,
                "steps": spec.steps,
                "evaluations": n_eval,
                "train_s": train_s,
                "eval_s": n_eval * eval_one,
                "total_s": train_s + n_eval * eval_one,
            }
        )
    per_method: dict[str, dict[str, float]] = {}
    for r in runs:
        row = per_method.setdefault(r["method"], {"runs": 0, "train_s": 0.0, "eval_s": 0.0})
        row["runs"] += 1
        row["train_s"] += r["train_s"]
        row["eval_s"] += r["eval_s"]
        row[f"{r['dataset']}_s"] = row.get(f"{r['dataset']}_s", 0.0) + r["total_s"]
    total = sum(r["total_s"] for r in runs)
    for row in per_method.values():
        row["total_s"] = row["train_s"] + row["eval_s"]
        row["share"] = row["total_s"] / total if total else math.nan
    out = {
        "suite": suite,
        "runs": runs,
        "per_method": per_method,
        "total_s": total,
        "total_h": total / 3600,
    }
    if replica_step_s is not None:
        out["replicas"] = project_replicas(s.specs, runs, replica_step_s)
    return out


def nearest_replicas(wanted: int, measured: list[int]) -> int:
    """The measured R closest to `wanted`; on a tie the smaller (the dearer per seed)."""
    return min(measured, key=lambda r: (abs(r - wanted), r))


def project_replicas(
    specs: list[RunSpec], runs: list[dict[str, Any]], replica_step_s: dict[str, dict[int, float]]
) -> dict[str, Any]:
    """The projection with seeds trained together: the suite's units of work
    (mcbench.run.suite.group_runs, the runner's grouping) give each run its R; a method
    measured by the replicas section trains at its per seed-update cost at that R (or
    the nearest measured R); any other method, or a unit of one run, at its sequential
    cost. Evaluations keep their sequential cost (not measured with replicas)."""
    from mcbench.run.suite import group_runs

    unit_size = {s.run_name(): len(u) for u in group_runs(specs) for s in u}
    per_method: dict[str, dict[str, Any]] = {}
    total = 0.0
    for spec, run in zip(specs, runs, strict=True):
        r = unit_size[spec.run_name()]
        row = per_method.setdefault(
            run["method"], {"runs": 0, "R": r, "train_s": 0.0, "eval_s": 0.0}
        )
        row["R"] = max(row["R"], r)
        measured = replica_step_s.get(run["method"])
        if measured and r > 1:
            used = nearest_replicas(r, sorted(measured))
            row["R_measured"] = used
            row["ms_per_seed_update"] = 1000 * measured[used]
            row["ms_per_update_sequential"] = 1000 * run["train_s"] / spec.steps
            row["source"] = "replicas"
            train_s = spec.steps * measured[used]
        else:
            row.setdefault("source", "sequential")
            train_s = run["train_s"]
        row["runs"] += 1
        row["train_s"] += train_s
        row["eval_s"] += run["eval_s"]
        row["sequential_s"] = row.get("sequential_s", 0.0) + run["total_s"]
        total += train_s + run["eval_s"]
    for row in per_method.values():
        row["total_s"] = row["train_s"] + row["eval_s"]
    return {
        "per_method": per_method,
        "total_s": total,
        "total_h": total / 3600,
        "sequential": sorted(k for k, v in per_method.items() if v["source"] == "sequential"),
    }


# -- 6. processes against threads ----------------------------------------------------------


def _worker(args: argparse.Namespace) -> None:
    """One throughput process: build the GAN on `dataset`, warm up, say ready, wait for
    'go', run updates for `seconds`, print {steps, seconds}."""
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    device = torch.device("cpu")
    m, ds, data_rng = build(RunSpec("gan", args.dataset, 0, 1, 1, 1), device)
    n = m.problem.batch_size
    for _ in range(args.method_warmup):
        m.step(ds.sample(n, data_rng, device))
    print("ready", flush=True)
    sys.stdin.readline()
    steps, t0 = 0, time.perf_counter()
    while True:
        m.step(ds.sample(n, data_rng, device))
        steps += 1
        dt = time.perf_counter() - t0
        if dt >= args.worker_seconds:
            break
    print(json.dumps({"steps": steps, "seconds": dt, "threads": torch.get_num_threads()}))


def run_workers(
    processes: int, threads: int, seconds: float, warmup: int, dataset: str
) -> dict[str, Any]:
    """Start `processes` workers of `threads` threads each; once all are warm they start
    together. Throughput: the sum of each worker's updates per second."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, __file__, "--worker", "--threads", str(threads)]
    cmd += ["--worker-seconds", str(seconds), "--method-warmup", str(warmup)]
    cmd += ["--dataset", dataset]
    procs = [
        subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(processes)
    ]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                p.wait()
                raise McbenchError(f"a throughput worker failed: {p.stderr.read().strip()[-300:]}")
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            line = p.stdout.readline()
            if p.wait() != 0 or not line.strip():
                raise McbenchError(f"a throughput worker failed: {p.stderr.read().strip()[-300:]}")
            results.append(json.loads(line))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return {
        "processes": processes,
        "threads": threads,
        "workers": results,
        "updates_per_s": sum(r["steps"] / r["seconds"] for r in results),
    }


def measure_processes(
    processes: int, seconds: float, warmup: int, reps: int, dataset: str
) -> dict[str, Any]:
    """`processes` x 1 thread against 1 x `processes` threads, alternating."""
    configs = {"procs": (processes, 1), "threads": (1, processes)}
    tput: dict[str, list[float]] = {k: [] for k in configs}
    ratios = []
    for r in range(reps):
        for k in configs if r % 2 == 0 else list(configs)[::-1]:
            p, t = configs[k]
            tput[k].append(run_workers(p, t, seconds, warmup, dataset)["updates_per_s"])
        ratios.append(tput["procs"][-1] / tput["threads"][-1])
    return {
        "processes": processes,
        "seconds": seconds,
        "reps": reps,
        "updates_per_s": tput,
        "ratios": ratios,
        "ratio_median": median(ratios),
    }


# -- output ------------------------------------------------------------------------------------


def _fmt(x: float, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    short = f"{x:.{digits}g}"
    return short if abs(float(short)) < 10**digits else f"{x:,.0f}"


def rows_of(res: dict[str, Any]) -> list[dict[str, Any]]:
    """The CSV: one row per number (section, item, metric, value, unit)."""
    rows: list[dict[str, Any]] = []
    S = res["sections"]

    def add(section: str, item: str, metric: str, value: float, unit: str) -> None:
        rows.append(
            {"section": section, "item": item, "metric": metric, "value": value, "unit": unit}
        )

    if "overhead" in S:
        o = S["overhead"]
        for k, v in o["ms_median"].items():
            add("overhead", k, "ms_per_step", v, "ms")
        add("overhead", "harness/bare", "ratio", o["ratio_median"], "ratio")
    if "peak" in S:
        add("peak", f"mm{S['peak']['size']}", "flops_per_s", S["peak"]["best"], "FLOP/s")
    if "metrics" in S:
        for k, v in S["metrics"].items():
            add("metrics", k, "seconds", v["seconds_median"], "s")
    if "methods" in S:
        for k, v in S["methods"].items():
            add("methods", k, "ms_per_update", 1000 * v["step_s_median"], "ms")
            add("methods", k, "updates_per_s", v["updates_per_s"], "1/s")
            if "spread" in v:
                add("methods", k, "spread", v["spread"], "ratio")
            add("methods", k, "flops_per_update", v["flops_per_update"], "FLOP")
            add("methods", k, "flops_per_s", v["flops_per_s"], "FLOP/s")
            if "peak_fraction" in v:
                add("methods", k, "peak_fraction", v["peak_fraction"], "ratio")
            add("methods", k, "generate_s", v["generate_s"], "s")
    if "replicas" in S:
        for k, rows_r in S["replicas"]["methods"].items():
            for v in rows_r:
                item = f"{k} R={v['R']}"
                add("replicas", item, "ms_per_group_update", v["ms_per_group_update"], "ms")
                for side in ("replicas", "sequential"):
                    ms = v[f"ms_per_seed_update_{side}"]
                    add("replicas", item, f"ms_per_seed_update_{side}", ms, "ms")
                add("replicas", item, "speedup", v["speedup"], "ratio")
                add("replicas", item, "flops_per_s", v["flops_per_s"], "FLOP/s")
                if "peak_fraction" in v:
                    add("replicas", item, "peak_fraction", v["peak_fraction"], "ratio")
        for k, b in S["replicas"].get("best", {}).items():
            add("replicas", k, "best_peak_fraction", b["peak_fraction"], "ratio")
    if "graphs" in S:
        for v in S["graphs"].get("entries", []):
            item = f"{v['method']} R={v['R']}"
            add("graphs", item, "ms_per_update_eager", v["ms_eager"], "ms")
            add("graphs", item, "ms_per_update_graph", v["ms_graph"], "ms")
            add("graphs", item, "speedup", v["speedup"], "ratio")
    if "projection" in S:
        p = S["projection"]
        for k, v in p["per_method"].items():
            add("projection", k, "hours", v["total_s"] / 3600, "h")
        add("projection", "total", "hours", p["total_h"], "h")
        if "replicas" in p:
            for k, v in p["replicas"]["per_method"].items():
                add("projection", k, "hours_replicas", v["total_s"] / 3600, "h")
            add("projection", "total", "hours_replicas", p["replicas"]["total_h"], "h")
    if "steady" in S:
        for k, v in S["steady"]["methods"].items():
            add("steady", k, "ms_per_update", v["ms_median"], "ms")
            add("steady", k, "spread", v["spread"], "ratio")
            add("steady", k, "peak_fraction", v["peak_fraction"], "ratio")
            if "probe_flops_per_s" in v:
                add("steady", k, "probe_min", min(v["probe_flops_per_s"]), "FLOP/s")
                add("steady", k, "probe_max", max(v["probe_flops_per_s"]), "FLOP/s")
        add("steady", "matmul", "peak", S["steady"]["peak"], "FLOP/s")
    if "processes" in S:
        pr = S["processes"]
        for k, v in pr["updates_per_s"].items():
            add("processes", k, "updates_per_s", median(v), "1/s")
        add("processes", "procs/threads", "ratio", pr["ratio_median"], "ratio")
    return rows


def markdown(res: dict[str, Any]) -> str:
    d, a, S = res["device"], res["settings"], res["sections"]
    gpu = f", GPU {d['gpu']}" if "gpu" in d else ""
    out = [
        f"# mcbench performance on {d['cpu']}{gpu}",
        "",
        f"Device {d['device']}, {a['threads']} thread(s) ({d['cpu_count']} CPUs), torch "
        f"{d['torch']}, {d['date_utc']} UTC; load average at start "
        f"{_load(d.get('load_avg'))}, at end {_load(res.get('load_avg_end'))}. "
        f"Sizes: {res['command']}",
        "",
    ]
    if "overhead" in S:
        o = S["overhead"]
        out += [
            "## Harness overhead (GAN on ring, batch 512)",
            "",
            f"Marginal cost per update over {o['steps']} updates after {o['warmup']}, "
            f"{o['reps']} interleaved repetitions (median).",
            "",
            "| loop | ms per update |",
            "|---|---|",
            f"| bare PyTorch loop | {_fmt(o['ms_median']['bare'])} |",
            f"| harness (mcbench.run.runner.train) | {_fmt(o['ms_median']['harness'])} |",
            f"| **ratio harness / bare** | **{o['ratio_median']:.3f}** "
            f"(target <= {o['target']:.2f}; per repetition: "
            f"{', '.join(f'{r:.3f}' for r in o['ratios'])}) |",
            "",
        ]
    if "peak" in S:
        pk = S["peak"]
        out += [
            "## Matmul peak and achieved FLOP/s",
            "",
            f"Peak: fp32 torch.mm {pk['size']}x{pk['size']}, best of {pk['reps']} at the "
            f"start and the end of the run: **{pk['best'] / 1e9:.1f} GFLOP/s**. "
            "Update FLOPs: matmuls counted by FlopCounterMode"
            + (
                f"; the GAN update's count agrees with the analytic count from layer sizes "
                f"({res['gan_flops_analytic'] / 1e6:.1f} MFLOP)."
                if res.get("gan_flops_match")
                else "."
            ),
            "",
        ]
        if "methods" in S:
            out += ["| update | MFLOP | GFLOP/s | fraction of peak |", "|---|---|---|---|"]
            for k in res["peak_methods"]:
                v = S["methods"][k]
                out.append(
                    f"| {k} | {v['flops_per_update'] / 1e6:.1f} | "
                    f"{v['flops_per_s'] / 1e9:.2f} | {v['peak_fraction']:.3f} |"
                )
            out.append("")
    if "metrics" in S:
        out += [
            "## Metric evaluation",
            "",
            "| dataset | modes | samples | seconds (median) |",
            "|---|---|---|---|",
        ]
        for k, v in S["metrics"].items():
            out.append(f"| {k} | {v['modes']} | {v['samples']:,} | {_fmt(v['seconds_median'])} |")
        out.append("")
    if "methods" in S:
        ms = S["methods"]
        first = next(iter(ms.values()))
        out += [
            f"## Every method on {a['dataset']} ({a['threads']} thread(s))",
            "",
            f"Median of {a['method_reps']} blocks of {a['method_steps']} updates, round-robin "
            f"over methods; generation of {first['generate_samples']:,} samples. Spread: the "
            "largest distance of a block from the blocks' median, over that median.",
            "",
            "| method | ms per update | spread | updates/s | MFLOP per update | GFLOP/s | "
            "fraction of peak | generate (s) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for k, v in ms.items():
            frac = _fmt(v.get("peak_fraction", math.nan))
            out.append(
                f"| {k} | {_fmt(1000 * v['step_s_median'])} | {v.get('spread', math.nan):.1%} | "
                f"{_fmt(v['updates_per_s'])} | "
                f"{v['flops_per_update'] / 1e6:.1f} | {v['flops_per_s'] / 1e9:.2f} | {frac} | "
                f"{_fmt(v['generate_s'])} |"
            )
        out.append("")
    if "replicas" in S:
        out += _replicas_md(S["replicas"], a["threads"])
    if "graphs" in S:
        out += _graphs_md(S["graphs"])
    if "projection" in S:
        p = S["projection"]
        datasets = sorted({r["dataset"] for r in p["runs"]})
        out += [
            f"## Projected wall time of the {p['suite']} suite on this device",
            "",
            f"One process at {a['threads']} thread(s), runs one after another: updates x "
            f"measured cost per update (measured on {a['dataset']}; every 2-D dataset uses "
            "the same nets) + evaluations (generation and metrics scaled linearly to the "
            "suite's sample count, diagnostics). Checkpoint writes are not counted.",
            "",
            "| method | runs | "
            + " | ".join(f"{d} (h)" for d in datasets)
            + " | total (h) | share |",
            "|---|---|" + "---|" * len(datasets) + "---|---|",
        ]
        for k, v in sorted(p["per_method"].items(), key=lambda kv: -kv[1]["total_s"]):
            cells = " | ".join(_fmt(v.get(f"{d}_s", 0.0) / 3600) for d in datasets)
            out.append(
                f"| {k} | {v['runs']} | {cells} | {_fmt(v['total_s'] / 3600)} | "
                f"{100 * v['share']:.1f}% |"
            )
        out += [
            f"| **total** | {len(p['runs'])} | "
            + " | ".join(
                _fmt(sum(r["total_s"] for r in p["runs"] if r["dataset"] == d) / 3600)
                for d in datasets
            )
            + f" | **{_fmt(p['total_h'])}** | 100% |",
            "",
        ]
        out += _projection_replicas_md(p, "replicas" in S)
    if "steady" in S:
        out += _steady_md(S["steady"])
    if "processes" in S:
        pr = S["processes"]
        n = pr["processes"]
        out += [
            "## Processes against threads (GAN updates per second)",
            "",
            f"Workers start together once warm and run {pr['seconds']} s; "
            f"{pr['reps']} alternating repetitions (median).",
            "",
            "| configuration | updates/s |",
            "|---|---|",
            f"| {n} processes x 1 thread | {_fmt(median(pr['updates_per_s']['procs']))} |",
            f"| 1 process x {n} threads | {_fmt(median(pr['updates_per_s']['threads']))} |",
            f"| **ratio** | **{pr['ratio_median']:.3f}** |",
            "",
        ]
    out += [f"Section wall times (s): {json.dumps(res['section_seconds'])}", ""]
    return "\n".join(out)


def _replicas_md(rs: dict[str, Any], threads: int) -> list[str]:
    peak = rs.get("peak")
    out = [
        f"## Replicas: R seeds in one update against R sequential updates "
        f"({rs['dataset']}, {rs['device']}, {threads} thread(s))",
        "",
        "One update of an R-replica group (mcbench.run.runner.build_group, seeds 0..R-1) against "
        "R consecutive updates of the single-seed run (mcbench.run.runner.build, seed 0), "
        f"alternating which goes first, after {rs['warmup']} warm-up update(s) of each; "
        "medians over the timed updates (column 'timed': group updates, each paired with R "
        "sequential ones); speed-up = median of the per-update ratios sequential / group. "
        "FLOPs: FlopCounterMode on one group update (batched matmuls included); fraction "
        "of the matmul peak "
        + (f"measured in this run ({peak / 1e9:.1f} GFLOP/s)." if peak else "(not measured)."),
        "",
    ]
    if rs["methods"]:
        out += [
            "| method | R | timed | ms per group update | ms per seed-update, replicas | "
            "ms per seed-update, sequential | speed-up | GFLOP/s | fraction of peak |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for k, rows in rs["methods"].items():
            for v in rows:
                flops = "" if v["flops_match"] else " (FLOPs != R x single)"
                out.append(
                    f"| {k} | {v['R']} | {v['updates']} | {_fmt(v['ms_per_group_update'])} | "
                    f"{_fmt(v['ms_per_seed_update_replicas'])} | "
                    f"{_fmt(v['ms_per_seed_update_sequential'])} | **{v['speedup']:.2f}** | "
                    f"{v['flops_per_s'] / 1e9:.2f}{flops} | "
                    f"{_fmt(v.get('peak_fraction', math.nan))} |"
                )
        out.append("")
    if rs.get("best"):
        out.append(
            f"Best fraction of peak across R (target: at least {rs['target']:.2f} with "
            "replicas, issue 8):"
        )
        out.append("")
        for k, b in rs["best"].items():
            met = "met" if b["met"] else "not met"
            out.append(f"- {k}: **{b['peak_fraction']:.3f}** at R={b['R']} ({met})")
        out.append("")
    for k, why in rs["skipped"].items():
        out += [f"Not measured: {k} ({why}).", ""]
    return out


def _graphs_md(g: dict[str, Any]) -> list[str]:
    out = ["## CUDA graphs against eager", ""]
    if not g["measured"]:
        return [*out, f"Not measured: {g['reason']} (this run: {g['device']}).", ""]
    out += [
        f"On {g['dataset']}, {g['device']}: eager `method.step` (built as without graphs) "
        "against the replay of mcbench.run.graphs.capture_step (built with capturable "
        f"optimisers, captured after {max(1, g['warmup'])} eager updates), a fresh real "
        f"batch per update; {g['reps']} alternating blocks of {g['steps']} updates after "
        "warm-up (median); speed-up = median of per-block ratios eager / graph.",
        "",
        "| method | R | eager ms per update | graph ms per update | graph ms per seed-update "
        "| speed-up |",
        "|---|---|---|---|---|---|",
    ]
    for v in g["entries"]:
        out.append(
            f"| {v['method']} | {v['R']} | {_fmt(v['ms_eager'])} | {_fmt(v['ms_graph'])} | "
            f"{_fmt(v['ms_graph_per_seed'])} | **{v['speedup']:.2f}** |"
        )
    out.append("")
    if any(v["method"] == LBT_GRAPH_METHOD for v in g["entries"]):
        met = g["lbt_target_met_at_R"]
        out += [
            f"LBT target: one {LBT_GRAPH_METHOD} update (per seed) in at most "
            f"{g['target_ms']:g} ms with graphs: "
            + (f"met at R = {', '.join(map(str, met))}." if met else "not met."),
            "",
        ]
    for v in g["skipped"]:
        out += [f"Not measured: {v['method']} at R={v['R']} ({v['reason']}).", ""]
    return out


def _projection_replicas_md(p: dict[str, Any], replicas_ran: bool) -> list[str]:
    if "replicas" not in p:
        why = "no method measured" if replicas_ran else "the replicas section did not run"
        return [f"No projection with replicas ({why}).", ""]
    pr = p["replicas"]
    out = [
        "### With replicas",
        "",
        "The same runs with each unit of seeds (mcbench.run.suite.group_runs) trained together: "
        "updates x the replicas section's cost per seed-update at the unit's R (or the "
        "nearest measured R), next to the methods section's sequential cost per update "
        "(timed apart: the replicas section's paired speed-ups are the closer comparison); "
        "evaluations at their sequential cost.",
        "",
        "| method | R (suite) | R measured | ms per seed-update, replicas | "
        "ms per update, sequential | total (h) | sequential (h) | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for k, v in sorted(pr["per_method"].items(), key=lambda kv: -kv[1]["total_s"]):
        if v["source"] != "replicas":
            continue
        out.append(
            f"| {k} | {v['R']} | {v['R_measured']} | {_fmt(v['ms_per_seed_update'])} | "
            f"{_fmt(v['ms_per_update_sequential'])} | {_fmt(v['total_s'] / 3600)} | "
            f"{_fmt(v['sequential_s'] / 3600)} | "
            f"{v['total_s'] / v['sequential_s']:.3f} |"
        )
    out += [
        f"| **suite total** | | | | | **{_fmt(pr['total_h'])}** | {_fmt(p['total_h'])} | "
        f"{pr['total_s'] / p['total_s']:.3f} |",
        "",
    ]
    if pr["sequential"]:
        out += [
            f"Sequential cost used for {', '.join(pr['sequential'])} (no replica "
            "measurement, or one seed a unit).",
            "",
        ]
    return out


def _load(x: list[float] | None) -> str:
    return "n/a" if not x else "/".join(f"{v:.2f}" for v in x)


def write_outputs(res: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    d = res["device"]  # every row names its device, so CSVs of several machines concatenate
    where = {
        "device": d["device"],
        "cpu": d["cpu"],
        "threads": res["settings"]["threads"],
        "torch": d["torch"],
        "gpu": d.get("gpu", ""),
    }
    with open(out / "perf.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*CSV_COLUMNS, *where])
        w.writeheader()
        w.writerows({**r, **where} for r in rows_of(res))
    (out / "perf.md").write_text(markdown(res))


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/tools/perf.py", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--out", type=Path, default=Path("results/reference/perf"))
    ap.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma list of sections")
    ap.add_argument("--dataset", default="ring", help="dataset of the per-method timings")
    ap.add_argument("--overhead-steps", type=int, default=1000)
    ap.add_argument("--overhead-warmup", type=int, default=100)
    ap.add_argument("--overhead-reps", type=int, default=7)
    ap.add_argument("--peak-size", type=int, default=2048)
    ap.add_argument("--peak-reps", type=int, default=5)
    ap.add_argument("--eval-samples", type=int, default=500_000)
    ap.add_argument("--eval-reps", type=int, default=3, help="repetitions of the metrics")
    ap.add_argument("--generate-reps", type=int, default=1, help="of each method's sampling")
    ap.add_argument("--method-warmup", type=int, default=3)
    ap.add_argument("--method-steps", type=int, default=10, help="updates per timed block")
    ap.add_argument("--method-reps", type=int, default=5, help="timed blocks per method")
    ap.add_argument("--methods", default="all", help='comma list, or "all" registered')
    ap.add_argument(
        "--extra-methods",
        default=f"lbt[preset=paper],gan{COMPILE},lbt{COMPILE}",
        help='comma list; a selector ending in " --compile" is timed compiled',
    )
    ap.add_argument("--replica-methods", default="gan,lbt", help="comma list (replicas)")
    ap.add_argument("--replicas-list", default="1,4,16,64", help="comma list of R (replicas)")
    ap.add_argument("--replica-warmup", type=int, default=1, help="updates of each side")
    ap.add_argument(
        "--replica-seed-updates",
        type=int,
        default=32,
        help="seed-updates to time a side at each R: ceil(this / R) group updates ...",
    )
    ap.add_argument("--replica-min-updates", type=int, default=2, help="... but at least this")
    ap.add_argument(
        "--graph-methods", default=f"gan,unrolled-gan,{LBT_GRAPH_METHOD}", help="comma list"
    )
    ap.add_argument("--graph-replicas", default="1,64", help="comma list of R (graphs)")
    ap.add_argument("--graph-warmup", type=int, default=3, help="updates of each side")
    ap.add_argument("--graph-steps", type=int, default=20, help="updates per timed block")
    ap.add_argument("--graph-reps", type=int, default=5, help="timed blocks of each side")
    ap.add_argument("--suite", default="paper", help="suite to project")
    ap.add_argument(
        "--steady-methods",
        default=f"lbt,gan,lbt{COMPILE},gan{COMPILE}",
        help="comma list (steady section)",
    )
    ap.add_argument("--steady-updates", type=int, default=200)
    ap.add_argument("--steady-interval", type=int, default=20)
    ap.add_argument(
        "--steady-load",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="a single-threaded job on another core during the steady section (CPU)",
    )
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--process-seconds", type=float, default=10.0)
    ap.add_argument("--process-reps", type=int, default=3)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker-seconds", type=float, default=1.0, help=argparse.SUPPRESS)
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    args.argv = argv
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad:
        raise McbenchError(f"unknown section(s) {', '.join(bad)}; choices: {', '.join(SECTIONS)}")
    for k in ("threads", "overhead_steps", "overhead_warmup", "overhead_reps", "peak_size"):
        if getattr(args, k) < 1:
            raise McbenchError(f"--{k.replace('_', '-')} must be >= 1")
    for k in ("eval_samples", "eval_reps", "generate_reps", "method_steps", "method_reps"):
        if getattr(args, k) < 1:
            raise McbenchError(f"--{k.replace('_', '-')} must be >= 1")
    if args.processes < 1 or args.process_reps < 1 or args.process_seconds <= 0:
        raise McbenchError("--processes and --process-reps must be >= 1, --process-seconds > 0")
    if args.method_warmup < 0:
        raise McbenchError("--method-warmup must be >= 0")
    if args.steady_interval < 1 or args.steady_updates < args.steady_interval:
        raise McbenchError("--steady-interval must be >= 1 and <= --steady-updates")
    for k in ("replica_warmup", "graph_warmup"):
        if getattr(args, k) < 0:
            raise McbenchError(f"--{k.replace('_', '-')} must be >= 0")
    for k in ("replica_seed_updates", "replica_min_updates", "graph_steps", "graph_reps"):
        if getattr(args, k) < 1:
            raise McbenchError(f"--{k.replace('_', '-')} must be >= 1")
    if "steady" in args.sections:  # before any section prints its first line
        _selectors(args.steady_methods)
    args.replicas_list = _ints(args.replicas_list, "--replicas-list")
    args.graph_replicas = _ints(args.graph_replicas, "--graph-replicas")
    return args


def _ints(text: str, flag: str) -> list[int]:
    """A comma list of distinct positive integers, in the order given."""
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise McbenchError(f"{flag} takes a comma list of integers, not {text!r}") from None
    if not out or min(out) < 1 or len(set(out)) != len(out):
        raise McbenchError(f"{flag} takes distinct integers >= 1, not {text!r}")
    return out


def _selectors(text: str) -> list[str]:
    """A comma list of method selectors, each resolved (a bad name fails now)."""
    out = [s.strip() for s in text.split(",") if s.strip()]
    for s in out:
        _check_selector(s)
    return out


def _check_selector(selector: str) -> None:
    """Resolve a selector now (a bad name fails before any timing); one ending in
    --compile must name a method with a functional update."""
    entry, _ = resolve(selector.removesuffix(COMPILE))
    if selector.endswith(COMPILE):
        check_compilable(entry.cls, selector.removesuffix(COMPILE))


def _log(msg: str) -> None:
    print(f"perf: {msg}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every requested section, in one process; returns the raw results."""
    torch.set_num_threads(args.threads)
    # every section times updates under the allocator settings `mcbench run` trains with
    keep_freed_memory()
    device = torch.device(args.device) if args.device else default_device()
    secs = set(args.sections)
    if "projection" in secs:  # needs the step, generation and metric costs
        secs |= {"methods", "metrics"}
    if "replicas" in secs:  # fractions of the peak measured in this run
        secs.add("peak")
    rsels = _selectors(args.replica_methods) if "replicas" in secs else []
    gsels = _selectors(args.graph_methods) if "graphs" in secs else []
    res: dict[str, Any] = {
        "device": device_info(device),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "command": " ".join(["python benchmarks/tools/perf.py", *args.argv]),
        "sections": {},
        "section_seconds": {},
    }
    S, T = res["sections"], res["section_seconds"]

    def timed(name: str, fn: Callable[[], Any]) -> None:
        _log(f"{name} ...")
        t0 = time.perf_counter()
        S[name] = fn()
        T[name] = round(time.perf_counter() - t0, 2)
        _log(f"{name} done in {T[name]:.1f} s")

    peaks = []
    if "peak" in secs:
        timed("peak", lambda: matmul_peak(device, args.peak_size, args.peak_reps))
        peaks.append(S["peak"])
    if "overhead" in secs:
        timed(
            "overhead",
            lambda: measure_overhead(
                device, args.overhead_steps, args.overhead_warmup, args.overhead_reps
            ),
        )
    if "metrics" in secs:
        timed(
            "metrics", lambda: measure_metrics(["ring", "grid"], args.eval_samples, args.eval_reps)
        )
    suite_selectors: list[str] = []
    if "projection" in secs:
        from mcbench.run.suite import load_suite

        suite_selectors = sorted({s.method for s in load_suite(args.suite).specs})
    if "methods" in secs:
        extra = [s.strip() for s in args.extra_methods.split(",") if s.strip()]
        sels = method_list(args.methods, extra, suite_selectors)
        timed(
            "methods",
            lambda: measure_methods(
                sels,
                args.dataset,
                device,
                args.method_warmup,
                args.method_steps,
                args.method_reps,
                args.eval_samples,
                args.generate_reps,
            ),
        )
    if "replicas" in secs:
        timed(
            "replicas",
            lambda: measure_replicas(
                rsels,
                args.dataset,
                device,
                args.replicas_list,
                args.replica_warmup,
                args.replica_seed_updates,
                args.replica_min_updates,
            ),
        )
    if "graphs" in secs:
        timed(
            "graphs",
            lambda: measure_graphs(
                gsels,
                args.dataset,
                device,
                args.graph_replicas,
                args.graph_warmup,
                args.graph_steps,
                args.graph_reps,
            ),
        )
        if not S["graphs"]["measured"]:
            _log(f"graphs: not measured: {S['graphs']['reason']}")
    if "projection" in secs:
        M = S["methods"]
        per_seed = None
        if "replicas" in S:
            per_seed = {
                k: {v["R"]: v["ms_per_seed_update_replicas"] / 1000 for v in rows}
                for k, rows in S["replicas"]["methods"].items()
            } or None  # nothing measured: no second projection
        timed(
            "projection",
            lambda: project_suite(
                args.suite,
                {k: v["step_s_median"] for k, v in M.items()},
                {k: v["generate_s"] for k, v in M.items()},
                args.eval_samples,
                {k: v["diagnostics_s"] for k, v in M.items()},
                {k: v["seconds_median"] for k, v in S["metrics"].items()},
                args.eval_samples,
                per_seed,
            ),
        )
    if "steady" in secs:
        timed(
            "steady",
            lambda: measure_steady(
                _selectors(args.steady_methods),
                args.dataset,
                device,
                args.steady_updates,
                args.steady_interval,
                args.method_warmup,
                args.steady_load and device.type == "cpu",
                args.peak_size,
                args.peak_reps,
            ),
        )
    if "processes" in secs:
        if device.type == "cpu":
            timed(
                "processes",
                lambda: measure_processes(
                    args.processes,
                    args.process_seconds,
                    args.method_warmup,
                    args.process_reps,
                    args.dataset,
                ),
            )
        else:
            _log("processes: skipped (CPU only; run with --device cpu)")
    if "peak" in secs:  # again at the end: the machine's state may have changed
        again = matmul_peak(device, args.peak_size, args.peak_reps)
        S["peak"]["flops_per_s_end"] = again["flops_per_s"]
        S["peak"]["best"] = max(S["peak"]["best"], again["best"])
    # FLOP cross-check: the harness's GAN update against the analytic count.
    p = MIXTURE2D
    res["gan_flops_analytic"] = gan_step_flops(p.latent_dim, p.hidden, 2, p.batch_size)
    if "methods" in S and "gan" in S["methods"]:
        res["gan_flops_match"] = (
            S["methods"]["gan"]["flops_per_update"] == res["gan_flops_analytic"]
        )
    if "peak" in S and "methods" in S:
        for v in S["methods"].values():
            v["peak_fraction"] = v["flops_per_s"] / S["peak"]["best"]
        res["peak_methods"] = [
            k
            for k in ("gan", f"gan{COMPILE}", "lbt", f"lbt{COMPILE}", "lbt[preset=paper]")
            if k in S["methods"]
        ]
    if "peak" in S and "replicas" in S:
        add_replica_fractions(S["replicas"], S["peak"]["best"])
    with contextlib.suppress(AttributeError, OSError):
        res["load_avg_end"] = list(os.getloadavg())
    return res


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.worker:
            _worker(args)
            return 0
        res = run(args)
        write_outputs(res, args.out)
    except McbenchError as exc:
        print(f"perf: error: {exc}", file=sys.stderr)
        return 2
    _log(f"wrote {args.out}/perf.md, perf.csv, perf.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
