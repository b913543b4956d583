"""Replicas against sequential runs: every method's losses over its first 50 updates.

    python benchmarks/tools/replica_check.py [--steps 50] [--replicas 3] [--out DIR]

For each method written for replicas, R seeds train as one replica group and, one after
another, as R sequential runs; every logged loss of every replica at every update is
compared with the sequential run of the same seed. Writes equivalence.csv (one row per
method and loss: the largest absolute and relative difference) and equivalence.md
(equivalence-float64.* with --float64), and exits 1 if any difference exceeds the
tolerance. On a CUDA device with --graphs the
group's updates are replayed from a captured CUDA graph (after a few eager updates).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from mcbench.errors import McbenchError
from mcbench.plugin.registry import methods
from mcbench.run.graphs import capture_step, side_stream_step
from mcbench.run.runner import GRAPH_WARMUP, RunSpec, build, build_group, default_device

RTOL, ATOL = 1e-4, 1e-5


def losses_of(method, steps: int, graphs: bool = False) -> list[dict[str, torch.Tensor]]:
    out, stepper = [], side_stream_step(method) if graphs else method.step
    for t in range(steps):
        real = method.problem.sample_real(method.problem.batch_size)
        if graphs and t == GRAPH_WARMUP:
            stepper = capture_step(method, real) or method.step
        out.append({k: v.detach().clone() for k, v in stepper(real).items()})
    return out


def compare(name: str, dataset: str, seeds: list[int], steps: int, device, graphs: bool):
    specs = [RunSpec(name, dataset, s, steps, steps, 1) for s in seeds]
    t0 = time.perf_counter()
    group, _, _ = build_group(specs, device, capturable=graphs)
    grouped = losses_of(group, steps, graphs)
    t_group = time.perf_counter() - t0
    rows = {}
    t0 = time.perf_counter()
    for r, spec in enumerate(specs):
        single, _, _ = build(spec, device)
        for t, losses in enumerate(losses_of(single, steps)):
            for k, v in losses.items():
                a, b = float(grouped[t][k][r]), float(v)
                diff = abs(a - b)
                row = rows.setdefault(k, {"max_abs": 0.0, "max_rel": 0.0, "ok": True})
                row["max_abs"] = max(row["max_abs"], diff)
                row["max_rel"] = max(row["max_rel"], diff / max(abs(b), 1e-12))
                row["ok"] &= diff <= ATOL + RTOL * abs(b)
    t_seq = time.perf_counter() - t0
    return [
        {"method": name, "loss": k, **v, "group_s": t_group, "sequential_s": t_seq}
        for k, v in rows.items()
    ]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python benchmarks/tools/replica_check.py", description=__doc__
    )
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--dataset", default="ring")
    ap.add_argument("--methods", default="all", help='comma list, or "all" with replicas')
    ap.add_argument("--device", default=None)
    ap.add_argument("--graphs", action="store_true", help="replay the group from CUDA graphs")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument(
        "--float64",
        action="store_true",
        help="train in float64: separates replica bugs (differences stay) from float32 "
        "rounding amplified by a chaotic method (differences vanish)",
    )
    ap.add_argument("--out", type=Path, default=Path("results/reference/replicas"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.float64:
        torch.set_default_dtype(torch.float64)
    try:
        reg = methods()
        names = (
            sorted(n for n, e in reg.items() if e.cls.vectorized and not e.overrides)
            if args.methods == "all"
            else args.methods.split(",")
        )
        for n in names:
            if n not in reg:
                raise McbenchError(f"unknown method {n!r}; choices: {', '.join(sorted(reg))}")
        device = torch.device(args.device) if args.device else default_device()
        graphs = args.graphs and device.type == "cuda"
        rows = []
        for n in names:
            rows += compare(n, args.dataset, list(range(args.replicas)), args.steps, device, graphs)
            print(f"{n}: {'ok' if all(r['ok'] for r in rows if r['method'] == n) else 'DIFFERS'}")
    except McbenchError as exc:
        print(f"mcbench: error: {exc}", file=sys.stderr)
        return 2
    df = pd.DataFrame(rows)
    args.out.mkdir(parents=True, exist_ok=True)
    run = ("captured CUDA graphs" if graphs else "eager") + (", float64" if args.float64 else "")
    lines = [
        "# Replicas against sequential runs",
        "",
        f"{args.replicas} seeds on {args.dataset}, first {args.steps} updates, {run}, device "
        f"{device}, torch {torch.__version__}, {torch.get_num_threads()} thread(s). Tolerance: "
        f"|replica - sequential| <= {ATOL} + {RTOL} |sequential| for every loss, every update.",
        "",
        "| method | loss | max abs diff | max rel diff | within tolerance | group (s) | "
        "sequential (s) |",
        "|---|---|---|---|---|---|---|",
        *(
            f"| {r.method} | {r.loss} | {r.max_abs:.3g} | {r.max_rel:.3g} | "
            f"{'yes' if r.ok else 'NO'} | {r.group_s:.3g} | {r.sequential_s:.3g} |"
            for r in df.itertuples()
        ),
        "",
        "Times include building the nets; the group's and the sequential runs' updates ran "
        "one after the other in this process (see `python benchmarks/tools/perf.py` for timings).",
        "",
    ]
    name = "equivalence-float64" if args.float64 else "equivalence"
    df.to_csv(args.out / f"{name}.csv", index=False)
    (args.out / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if df.ok.all() else 1


if __name__ == "__main__":
    sys.exit(main())
