"""The unroll-depth study: what each unrolled step costs, and what it buys.

For every method whose class declares an unroll depth (`depth_param = "K"`: lbt, lbt-gan,
unrolled-gan) and K in --ks, beside flat references measured once (--reference, default
lbt-implicit: LBT without unrolling):
  cost     time per generator update (wall and CPU ms, after warm-up; CUDA synchronised)
           and the step's peak memory (CPU: growth of the process's peak RSS over the
           built model, measured in a fresh subprocess per (method, K); CUDA:
           torch.cuda.max_memory_allocated over the allocation before the steps);
  fit      least-squares line  cost = a + b K  per method: b is the cost per unrolled step;
  quality  the dataset's metrics (tables and plots: its first two declared quality
           metrics, on ring modes covered and high-quality share) on --dataset after the
           same number of generator updates (--steps) and after the same training time
           (--seconds; by default what K = 5 needs for --steps; a reference gets the
           time of the depth method it derives from), seeds --seeds.
Writes cost.csv, fit.csv, quality.csv, table.md, cost.png, quality.png and machine.json
to --out. Training time on a CPU is the process's CPU time, which a shared machine
disturbs less than wall time; on CUDA it is synchronised wall time.

    python -m mcbench.depth_study --out results/reference/depth_study
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from mcbench.datasets import get_dataset
from mcbench.errors import McbenchError
from mcbench.metrics import metric_spec
from mcbench.plugin.registry import MethodEntry, methods
from mcbench.run.runner import RunSpec, build, cpu_model, default_device, derive_seed, generate

# Flat references: measured once (shown as K = 0 and as a horizontal line). lbt-implicit
# is LBT with an implicit hypergradient instead of K unrolled steps.
REFERENCES = ("lbt-implicit",)
KS = (1, 2, 5, 10, 20)
RUN_COLUMNS = ("method", "K", "seed", "budget", "steps", "train_s")
HEADLINE = 2  # quality metrics shown in table.md (the plots show the first)


def depth_param(entry: MethodEntry) -> str | None:
    """The hyperparameter a method's class declares as its unroll depth, if any."""
    return getattr(entry.cls, "depth_param", None)


def study_methods(requested: list[str] | None, references: list[str]) -> dict[str, str | None]:
    """Method name -> its depth parameter, None for a flat reference (measured once).

    Default: every registered method (not an alias) whose class declares `depth_param`,
    then the references. A reference stays flat even if its class inherits a depth
    parameter (lbt-implicit derives from lbt); so does a requested method without one.
    """
    reg = methods()
    if requested is None:
        deep = [n for n, e in reg.items() if n == e.cls.name and depth_param(e)]
        requested = [n for n in deep if n not in references] + list(references)
    return {n: None if n in references else depth_param(reg[n]) for n in requested if n in reg}


def counterpart(name: str, study: dict[str, str | None]) -> str | None:
    """The depth method a flat reference derives from (lbt for lbt-implicit), if any."""
    reg = methods()
    return next((m for m, d in study.items() if d and issubclass(reg[name].cls, reg[m].cls)), None)


def quality_metrics(dataset: str) -> tuple[list[str], list[str]]:
    """The dataset's metrics (all recorded) and the headline ones shown in table and plots:
    its first declared quality metrics."""
    specs = get_dataset(dataset).metric_specs()
    return [s.name for s in specs], [s.name for s in specs if s.role == "quality"][:HEADLINE]


class Clock:
    """Training time: synchronised wall time on CUDA, process CPU time on a CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def __call__(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return time.perf_counter()
        return time.process_time()


def measure_cost(
    method: str,
    k: int,
    dataset: str,
    device: torch.device,
    warmup: int,
    steps: int,
    depth: str | None = "K",
) -> dict[str, float]:
    """ms per generator update and the update's peak memory, in this process; `depth`
    is the method's depth parameter (None: a flat method, `k` unused)."""
    params = {depth: k} if depth else {}
    m, ds, data_rng = build(RunSpec(method, dataset, 0, steps, steps, 1, params), device)
    batches = [ds.sample(m.problem.batch_size, data_rng, device) for _ in range(warmup + steps)]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    for real in batches[:warmup]:
        m.step(real)
    clock = Clock(device)
    w0, c0 = time.perf_counter(), clock()
    for real in batches[warmup:]:
        m.step(real)
    c1 = clock()
    w1 = time.perf_counter()
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {
        "method": method,
        "K": k,
        "wall_ms": 1000 * (w1 - w0) / steps,
        "cpu_ms": 1000 * (c1 - c0) / steps,
        "peak_mem_mb": peak / 2**20,
    }


def cost_in_subprocess(
    method: str, k: int, depth: str | None, args: argparse.Namespace
) -> dict[str, float]:
    """A fresh process per point, so one point's peak memory never hides another's."""
    cmd = [sys.executable, "-m", "mcbench.depth_study", "--measure", method, str(k)]
    cmd += ["--depth-param", depth or ""]
    cmd += ["--dataset", args.dataset, "--warmup", str(args.warmup)]
    cmd += ["--time-steps", str(args.time_steps), "--threads", str(args.threads)]
    cmd += ["--device", str(args.device)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise McbenchError(f"cost of {method} K={k} failed: {out.stderr.strip()[-500:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def fit_lines(cost: pd.DataFrame) -> pd.DataFrame:
    """cost = a + b K per method, for time and memory."""
    rows = []
    for method, g in cost.groupby("method", sort=False):
        if g["K"].nunique() < 2:
            continue
        row: dict[str, Any] = {"method": method}
        for col in ("wall_ms", "cpu_ms", "peak_mem_mb"):
            b, a = np.polyfit(g["K"], g[col], 1)
            pred = a + b * g["K"]
            ss = float(((g[col] - g[col].mean()) ** 2).sum())
            row[f"{col}_per_step"] = b
            row[f"{col}_base"] = a
            row[f"{col}_r2"] = 1 - float(((g[col] - pred) ** 2).sum()) / ss if ss else 1.0
        rows.append(row)
    return pd.DataFrame(rows)


def train_quality(
    method: str, k: int, depth: str | None, seed: int, args: argparse.Namespace, seconds: float
) -> list[dict[str, Any]]:
    """Train until both budgets are spent; evaluate where each one runs out."""
    device = args.device
    params = {depth: k} if depth else {}
    spec = RunSpec(method, args.dataset, seed, args.steps, args.steps, args.eval_samples, params)
    m, ds, data_rng = build(spec, device)
    clock = Clock(device)
    spent, step, rows = 0.0, 0, []
    todo = {"steps": args.steps, "seconds": seconds}
    while todo:
        real = ds.sample(m.problem.batch_size, data_rng, device)
        t0 = clock()
        m.step(real)
        spent += clock() - t0
        step += 1
        for budget, limit in list(todo.items()):
            if (step if budget == "steps" else spent) >= limit:
                rng = torch.Generator(device).manual_seed(derive_seed(seed, "depth-eval"))
                res = ds.evaluate(generate(m, args.eval_samples, rng))
                rows.append(
                    {
                        "method": method,
                        "K": k,
                        "seed": seed,
                        "budget": budget,
                        "steps": step,
                        "train_s": spent,
                        **res,
                    }
                )
                del todo[budget]
    return rows


def machine(device: torch.device, threads: int) -> dict[str, Any]:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": threads,
        "cpu_count": os.cpu_count(),
        "load_avg_at_start": os.getloadavg(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
    }
    info["cpu"] = cpu_model()
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def plots(
    cost: pd.DataFrame,
    quality: pd.DataFrame,
    out: Path,
    time_col: str,
    flat: set[str],
    metric: str | None,
) -> None:
    """cost.png (time and memory against K) and quality.png (`metric` against K at
    either budget); flat references are horizontal lines."""
    import matplotlib  # here, not at the top: the CLI imports this module for every command

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    deep, ref = cost[~cost["method"].isin(flat)], cost[cost["method"].isin(flat)]
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for i, col in enumerate((time_col, "peak_mem_mb")):
        sns.lineplot(deep, x="K", y=col, hue="method", marker="o", ax=ax[i])
        for r in ref.to_dict("records"):
            ax[i].axhline(r[col], ls="--", c="gray", label=f"{r['method']} (no K)")
        ax[i].legend()
    ax[0].set(ylabel=f"ms per generator update ({time_col.split('_')[0]})", title="time")
    ax[1].set(ylabel="peak memory of a step (MiB)", title="memory")
    fig.tight_layout()
    fig.savefig(out / "cost.png", dpi=120)
    plt.close(fig)

    if quality.empty or metric is None:
        return
    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for i, budget in enumerate(("steps", "seconds")):
        q = quality[quality["budget"] == budget]
        sns.lineplot(
            q[~q["method"].isin(flat)], x="K", y=metric, hue="method", marker="o", ax=ax[i]
        )
        for m, g in q[q["method"].isin(flat)].groupby("method"):
            ax[i].axhline(g[metric].mean(), ls="--", c="gray", label=f"{m} (no K)")
        ax[i].legend()
        ax[i].set(
            title=f"same {'generator updates' if budget == 'steps' else 'training time'}",
            ylabel=metric_spec(metric).label,  # declared: quality_metrics checked it
        )
    fig.tight_layout()
    fig.savefig(out / "quality.png", dpi=120)
    plt.close(fig)


def table(
    cost: pd.DataFrame,
    fit: pd.DataFrame,
    quality: pd.DataFrame,
    info,
    args,
    flat: set[str],
    headline: list[str],
) -> str:
    t = "cpu_ms" if args.device.type == "cpu" else "wall_ms"
    shown = [m for m in headline if m in quality.columns]
    q = quality.groupby(["method", "K", "budget"])[[*shown, "steps"]].mean().unstack("budget")
    labels = [metric_spec(m).label for m in shown]
    at = [f"{lab} @{b}" for b in ("steps", "time") for lab in labels]
    head = ["method", "K", "ms/update (wall)", "ms/update (CPU)", "peak MiB", *at]
    lines = [
        "# Unroll-depth study",
        "",
        f"Machine: {info.get('cpu', '')} {info.get('gpu', '')}, {info['device']}, "
        f"{info['threads']} thread(s), torch {info['torch']}, {info['date_utc']} UTC, "
        f"load average at start {info['load_avg_at_start'][0]:.1f}.",
        f"Dataset {args.dataset}; seeds {args.seeds}; quality after {args.steps} updates and "
        f"after the same training time ({t.split('_')[0]}); {args.eval_samples} samples.",
        "",
        "| " + " | ".join([*head, "updates @time"]) + " |",
        "|" + "---|" * (len(head) + 1),
    ]
    for r in cost.itertuples():
        key = (r.method, r.K)
        qq = q.loc[key] if key in q.index else None

        def g(col, budget, fmt, qq=qq):
            return fmt.format(qq[(col, budget)]) if qq is not None else "-"

        values = [g(m, b, "{:.1f}") for b in ("steps", "seconds") for m in shown]
        row = [r.method, "-" if r.method in flat else str(r.K), f"{r.wall_ms:.1f}"]
        row += [f"{r.cpu_ms:.1f}", f"{r.peak_mem_mb:.1f}", *values, g("steps", "seconds", "{:.0f}")]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "Linear fit cost = a + b K (least squares over the K values above):",
        "",
        "| method | ms per unrolled step (b) | base ms (a) | R^2 | MiB per unrolled step "
        "| base MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in fit.to_dict("records"):
        lines.append(
            f"| {r['method']} | {r[t + '_per_step']:.2f} | {r[t + '_base']:.1f} | "
            f"{r[t + '_r2']:.3f} | {r['peak_mem_mb_per_step']:.2f} | {r['peak_mem_mb_base']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The study's options, shared by `python -m mcbench.depth_study` and a CLI command."""
    p.add_argument(
        "--methods",
        default=None,
        help="comma-separated methods (default: every method whose class declares "
        "depth_param, then the references)",
    )
    p.add_argument(
        "--reference",
        default=",".join(REFERENCES),
        help="comma-separated flat references, measured once (no unroll depth)",
    )
    p.add_argument("--ks", default=",".join(map(str, KS)))
    p.add_argument("--dataset", default="ring")
    p.add_argument("--warmup", type=int, default=1, help="untimed updates per cost point")
    p.add_argument("--time-steps", type=int, default=3, help="timed updates per cost point")
    p.add_argument("--steps", type=int, default=100, help="quality: generator updates")
    p.add_argument(
        "--seconds", type=float, default=None, help="quality: training seconds (default: K=5's)"
    )
    p.add_argument("--seeds", default="0")
    p.add_argument("--eval-samples", type=int, default=20_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    p.add_argument("--out", default="results/reference/depth_study")
    p.add_argument("--skip-quality", action="store_true")
    p.add_argument("--measure", nargs=2, metavar=("METHOD", "K"), help=argparse.SUPPRESS)
    p.add_argument("--depth-param", default="K", help=argparse.SUPPRESS)


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise McbenchError(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values or min(values) < 0:
        raise McbenchError(f"{what} must be non-negative integers, got {text!r}")
    return values


def run(args: argparse.Namespace) -> None:
    """Measure, fit, train, and write the table, CSVs, plots and machine record."""
    args.device = torch.device(args.device) if args.device else default_device()
    torch.set_num_threads(args.threads)
    if args.measure:
        method, k = args.measure
        res = measure_cost(
            method,
            int(k),
            args.dataset,
            args.device,
            args.warmup,
            args.time_steps,
            args.depth_param or None,
        )
        print(json.dumps(res))
        return
    ks, seeds = _ints(args.ks, "--ks"), _ints(args.seeds, "--seeds")
    requested = args.methods.split(",") if args.methods else None
    references = [r for r in args.reference.split(",") if r]
    study = study_methods(requested, references)
    missing = sorted(set(requested or references) - set(study))
    if missing:
        print(f"depth_study: not available, left out: {', '.join(missing)}", file=sys.stderr)
    if not study:
        raise McbenchError(f"none of the methods {args.methods or references!r} is registered")
    names, flat = list(study), {m for m, d in study.items() if d is None}
    recorded, headline = quality_metrics(args.dataset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = machine(args.device, args.threads)
    info["depth_params"] = study
    depths = {m: [0] if m in flat else ks for m in names}
    cost = pd.DataFrame(
        [cost_in_subprocess(m, k, study[m], args) for m in names for k in depths[m]]
    )
    cost.to_csv(out / "cost.csv", index=False)
    fit = fit_lines(cost)
    fit.to_csv(out / "fit.csv", index=False)
    time_col = "cpu_ms" if args.device.type == "cpu" else "wall_ms"
    rows: list[dict[str, Any]] = []
    info["seconds_budget"] = {}
    if not args.skip_quality:
        # depth methods first: a reference takes the time budget of the one it derives from
        for m in sorted(names, key=lambda m: m in flat):
            ref = cost[(cost["method"] == m)].set_index("K")[time_col]
            seconds = args.seconds or args.steps * float(ref.get(5, ref.median())) / 1000
            base = counterpart(m, study) if m in flat else None
            if base in info["seconds_budget"] and not args.seconds:
                seconds = info["seconds_budget"][base]  # the same time as its K = 5
            info["seconds_budget"][m] = seconds
            for k in depths[m]:
                for seed in seeds:
                    rows += train_quality(m, k, study[m], seed, args, seconds)
                    print(f"depth_study: quality {m} K={k} seed={seed} done", file=sys.stderr)
    quality = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *recorded])
    quality.to_csv(out / "quality.csv", index=False)
    (out / "machine.json").write_text(json.dumps(info, indent=2))
    (out / "table.md").write_text(table(cost, fit, quality, info, args, flat, headline))
    plots(cost, quality, out, time_col, flat, headline[0] if headline else None)
    print((out / "table.md").read_text())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m mcbench.depth_study",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_arguments(p)
    try:
        run(p.parse_args(argv))
    except McbenchError as exc:
        print(f"depth_study: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
