"""Every GPU check in one command, for a person with a CUDA machine (issue 16).

    python benchmarks/tools/gpu_check.py --out results/gpu_check

Runs, each in its own process with a time limit (so a hung capture ends as a failed
step, never a hung command), and writes everything to --out with a one-page summary.md:

  1. preflight    CUDA is present and one CUDA graph captures and replays (else exit 2
                  at once with a one-line reason: no other step can mean anything)
  2. gpu-tests    `pytest -m gpu`: captured updates equal eager ones (gan, unrolled-gan,
                  lbt), and the other GPU-only tests
  3. replicas     replicas against sequential runs, the group replayed from CUDA graphs
                  (benchmarks/tools/replica_check.py --graphs)
  4. perf         benchmarks/tools/perf.py: matmul peak; an LBT update (K=5, M=15) and a
                  GAN update captured against eager (target: LBT in <= 10 ms); 64
                  replicas against one; the paper suite's projected wall time
The step limits add up to 7.5 minutes; on one data-centre GPU the whole command takes
about 4-6 (not yet measured: no GPU was lent while this was written). Exit status: 0 when
every step passed, 1 when a step failed or ran out of time, 2 when CUDA is missing or
capture fails.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
ROOT = TOOLS.parent.parent

PREFLIGHT = """
import sys, torch
if not torch.cuda.is_available():
    print("CUDA is not available to torch " + torch.__version__ + " (a CPU build, or no driver)")
    sys.exit(3)
x = torch.ones(8, device="cuda")
s = torch.cuda.Stream()
s.wait_stream(torch.cuda.current_stream())
with torch.cuda.stream(s):
    y = x * 2
torch.cuda.current_stream().wait_stream(s)
g = torch.cuda.CUDAGraph()
with torch.cuda.graph(g):
    y = x * 2
x.fill_(3)
g.replay()
torch.cuda.synchronize()
if y.sum().item() != 48:
    print("a captured CUDA graph replayed a wrong result")
    sys.exit(4)
print(torch.cuda.get_device_name(0))
"""


@dataclass
class Step:
    name: str
    argv: list[str]
    limit_s: float
    what: str
    status: str = "not run"
    wall_s: float = 0.0
    detail: str = ""
    extra: dict = field(default_factory=dict)


def steps(out: Path, python: str = sys.executable) -> list[Step]:
    perf_argv = [
        python,
        str(TOOLS / "perf.py"),
        "--out",
        str(out / "perf"),
        "--sections",
        "peak,graphs,replicas,projection",
        "--graph-methods",
        "lbt[preset=paper],gan",
        "--graph-replicas",
        "1",
        "--replica-methods",
        "gan,lbt",
        "--replicas-list",
        "1,64",
        "--suite",
        "paper",
        "--method-reps",
        "3",
    ]
    return [
        Step("preflight", [python, "-c", PREFLIGHT], 60, "CUDA present; one graph captures"),
        Step(
            "gpu-tests",
            [python, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", "tests"],
            120,
            "pytest -m gpu (captured = eager updates, ...)",
        ),
        Step(
            "replicas",
            [
                *(python, str(TOOLS / "replica_check.py"), "--graphs", "--steps", "20"),
                *("--out", str(out / "replicas")),
            ],
            90,
            "replicas = sequential runs, replayed from CUDA graphs",
        ),
        Step("perf", perf_argv, 180, "LBT captured update; 64 replicas vs 1; suite projection"),
    ]


def run_step(step: Step, out: Path) -> Step:
    """Run one step with its limit; its output goes to <out>/<name>.log."""
    log = out / f"{step.name}.log"
    t0 = time.perf_counter()
    try:
        with log.open("w") as fh:
            proc = subprocess.run(
                step.argv, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, timeout=step.limit_s
            )
        step.status = "passed" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        step.status = f"timed out after {step.limit_s:.0f} s"
    except OSError as e:
        step.status = f"failed to start ({e.strerror})"
    step.wall_s = time.perf_counter() - t0
    text = log.read_text(errors="replace").strip() if log.exists() else ""
    step.detail = text.splitlines()[-1] if text else ""
    return step


def perf_numbers(out: Path) -> list[str]:
    """The GPU targets' numbers from perf.json, as summary lines."""
    path = out / "perf" / "perf.json"
    if not path.exists():
        return ["perf.json not written"]
    S = json.loads(path.read_text()).get("sections", {})
    lines = []
    if "peak" in S:
        lines.append(f"matmul peak: {S['peak']['best'] / 1e12:.1f} TFLOP/s")
    for e in S.get("graphs", {}).get("entries", []):
        lines.append(
            f"{e['method']} R={e.get('R', 1)}: captured {e['ms_graph']:.2f} ms, eager "
            f"{e['ms_eager']:.2f} ms per update (speed-up {e['speedup']:.2f}x)"
        )
    if S.get("graphs", {}).get("measured") is False:
        lines.append(f"graphs not measured: {S['graphs'].get('reason', '?')}")
    for k, rows in (S.get("replicas", {}).get("methods") or {}).items():
        for r in rows:
            if r.get("R") == 64:
                lines.append(
                    f"{k}: 64 replicas {r['ms_per_seed_update_replicas']:.3f} ms per "
                    f"seed-update against {r['ms_per_seed_update_sequential']:.3f} one at a "
                    f"time (speed-up {r['speedup']:.1f}x)"
                )
    p = S.get("projection")
    if p:
        lines.append(f"paper suite projected: {p['total_h']:.1f} h one process")
        if "replicas" in p:
            lines.append(f"  with replicas: {p['replicas']['total_h']:.1f} h")
    return lines or ["no numbers found in perf.json"]


def summary(steps_done: list[Step], out: Path, device: str) -> str:
    lines = [
        "# mcbench GPU checks",
        "",
        f"Device: {device}. Command: `python benchmarks/tools/gpu_check.py --out {out}`.",
        "",
        "| step | what | status | seconds | last line of its log |",
        "|---|---|---|---|---|",
    ]
    for s in steps_done:
        detail = s.detail.replace("|", "/")[:120]
        lines.append(f"| {s.name} | {s.what} | {s.status} | {s.wall_s:.0f} | {detail} |")
    total = sum(s.wall_s for s in steps_done)
    lines += ["", f"Total: {total:.0f} s. Logs: <step>.log beside this file.", ""]
    if any(s.name == "perf" and s.status == "passed" for s in steps_done):
        lines += ["## Numbers", "", *[f"- {x}" for x in perf_numbers(out)], ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None, plan: list[Step] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python benchmarks/tools/gpu_check.py", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("results/gpu_check"))
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    plan = plan if plan is not None else steps(args.out.resolve())
    first = run_step(plan[0], args.out)
    if first.status != "passed":
        reason = first.detail or first.status
        (args.out / "summary.md").write_text(summary([first], args.out, "none"))
        print(f"gpu_check: {reason}; no GPU check was run (see {args.out}/summary.md)")
        return 2
    device = first.detail
    done = [first]
    for step in plan[1:]:
        print(f"gpu_check: {step.name} ({step.what}) ...", flush=True)
        done.append(run_step(step, args.out))
        print(f"gpu_check: {step.name} {step.status} in {step.wall_s:.0f} s", flush=True)
    (args.out / "summary.md").write_text(summary(done, args.out, device))
    failed = [s.name for s in done if s.status != "passed"]
    print(
        f"gpu_check: {'failed: ' + ', '.join(failed) if failed else 'all passed'}; "
        f"summary in {args.out}/summary.md"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
